// A source address (backend.source_addresses) whose ports are all taken is mailfront's own want,
// not the slot's failure: kind local-resources, code LOCAL_RESOURCES_EXHAUSTED. libuv binds with
// SO_REUSEADDR, so the kernel may hand out a port in use instead of failing the bind, and the
// failure comes at the connect: that one was taken as the slot's (kind connect), holding logins
// for failover.hold_ms and marking a healthy slot down.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { test } from 'node:test';
import { LOCAL_RESOURCES_EXHAUSTED, SOURCE_ADDRESS_NOT_LOCAL, sourceAddressFailure } from '../../src/backend/connect.js';

const CONNECT = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), '../../src/backend/connect.js')).href;

/** An errno error as node's net module makes one. */
function errno(code: string, syscall: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${syscall} ${code}`), { code, syscall });
}

test('a source address without a free port is mailfront\'s want, at the bind or at the connect; other failures are the slot\'s', () => {
  for (const syscall of ['bind', 'connect']) {
    const failure = sourceAddressFailure(errno('EADDRINUSE', syscall), '127.0.0.2');
    assert.equal(failure?.code, LOCAL_RESOURCES_EXHAUSTED, syscall);
    assert.match(failure.message, /no local port is free on the source address 127\.0\.0\.2/);
  }
  assert.equal(sourceAddressFailure(errno('EADDRNOTAVAIL', 'bind'), '192.0.2.1')?.code, SOURCE_ADDRESS_NOT_LOCAL);
  assert.equal(sourceAddressFailure(errno('ECONNREFUSED', 'connect'), '127.0.0.2'), undefined);
  assert.equal(sourceAddressFailure(errno('ETIMEDOUT', 'connect'), '127.0.0.2'), undefined);
});

// Dials a listener from 127.0.0.2 until the four ports of the namespace's range are taken.
const DIALS = `
import net from 'node:net';
import { dialSlot } from '${CONNECT}';
const server = net.createServer((c) => c.on('error', () => {}));
await new Promise((resolve) => server.listen(30000, '127.0.0.1', resolve));
const config = { loginMode: 'replay', tls: 'none', forwardClientAddress: false, connectTimeoutMs: 2000, loginTimeoutMs: 2000, proxyProtocol: 'none', masterUserSeparator: '*', sourceAddresses: ['127.0.0.2'] };
const held = [];
const results = [];
for (let i = 0; i < 6; i++) {
  try {
    held.push(await dialSlot({ name: 's', store: 'x', host: '127.0.0.1', imapPort: 30000 }, 'imap', config, new AbortController().signal));
    results.push('OK');
  } catch (error) {
    results.push(error.code + '/' + error.kind);
  }
}
for (const socket of held) socket.destroy();
server.close();
console.log(JSON.stringify(results));
`;

test('with every port of its source address taken, a dial fails as local-resources (a network namespace of four ports)', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('a network namespace needs root (unshare -n)');
  const dir = await mkdtemp(join(tmpdir(), 'mf-source-exhaust-'));
  try {
    const script = join(dir, 'dials.mjs');
    await writeFile(script, DIALS);
    const shell = `ip link set lo up && echo "40000 40003" > /proc/sys/net/ipv4/ip_local_port_range && exec "${process.execPath}" "${script}"`;
    const run = await new Promise<{ error: Error | null; stdout: string; stderr: string }>((resolve) => execFile('unshare', ['-n', 'sh', '-c', shell], { timeout: 30_000 }, (error, stdout, stderr) => resolve({ error, stdout, stderr })));
    if (run.error !== null && /unshare|Operation not permitted|ip: not found/.test(run.stderr)) return t.skip(`no network namespace here: ${run.stderr.trim()}`);
    assert.equal(run.error, null, run.stderr);
    const results = JSON.parse(run.stdout) as string[];
    assert.deepEqual(results.slice(0, 4), ['OK', 'OK', 'OK', 'OK'], run.stdout);
    assert.deepEqual(results.slice(4), [`${LOCAL_RESOURCES_EXHAUSTED}/local-resources`, `${LOCAL_RESOURCES_EXHAUSTED}/local-resources`], run.stdout);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
