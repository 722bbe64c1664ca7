// Node 20: node's Socket() copies its options and adds four to the copy; V8 11.3's copy gave the
// copy a hidden class of no transition tree, so every socket made three or four new maps (in the
// old generation; src/net/socket-options.ts). The marked options of mailfront's backend
// connections send every copy of the process the general way. Counted with V8's own map log, in
// a process of its own: connections as mailfront has them (accepted by a server, and dialled).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const CONNECTIONS = 60;
const module = fileURLToPath(new URL('../../src/net/socket-options.js', import.meta.url));

/** The script: CONNECTIONS connections, one after the other, each accepted and dialled, then closed. */
const script = (marked: boolean): string => `
import { createServer, connect } from 'node:net';
import { markedSocketOptions } from ${JSON.stringify(module)};
const server = createServer((s) => s.destroy());
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const { port } = server.address();
for (let i = 0; i < ${CONNECTIONS}; i++) {
  const options = { host: '127.0.0.1', port, noDelay: true, keepAlive: true };
  const socket = connect(${marked ? 'markedSocketOptions(options)' : 'options'});
  await new Promise((r) => { socket.once('close', r); socket.on('error', () => {}); });
}
server.close();
`;

/** Maps made by adding `emitClose` to an object whose map is in no transition tree (V8 logs those as "prototype"). */
async function detachedEmitCloseMaps(marked: boolean): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'mailfront-maps-'));
  try {
    const log = join(dir, 'v8.log');
    await promisify(execFile)(process.execPath, ['--log-maps', `--logfile=${log}`, '--no-logfile-per-isolate', '--input-type=module', '-e', script(marked)], { timeout: 60_000 });
    const lines = (await readFile(log, 'utf8')).split('\n');
    return lines.filter((l) => l.startsWith('map,Transition,') && l.endsWith(',prototype,emitClose')).length;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('on Node 20, sockets made with marked options make no maps of their own', { skip: Number(process.versions.node.split('.')[0]) !== 20 && 'V8 11.3 (Node 20) only' }, async () => {
  const [unmarked, marked] = [await detachedEmitCloseMaps(false), await detachedEmitCloseMaps(true)];
  // Without the mark, two maps of their own per connection (its two sockets): what the mark is for.
  assert.ok(unmarked >= CONNECTIONS, `without the mark: ${unmarked} maps for ${CONNECTIONS} connections`);
  // With it, at most the first connection's, before its dialled socket's options turn the copy megamorphic.
  assert.ok(marked <= 2, `with the mark: ${marked} maps for ${CONNECTIONS} connections`);
});
