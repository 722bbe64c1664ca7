/**
 * The floor: the least a Node.js IMAP login proxy can do for the bench's login loop, run as its
 * own process so that its CPU per login can be set beside mailfront's. It accepts, greets, reads
 * one `LOGIN` line, connects to the user's Dovecot (a fixed user → port table), reads the
 * greeting, replays the `LOGIN`, passes the tagged answer on and splices with mailfront's own
 * relay (src/proxy/splice.ts). No directory, cache, throttle, limits, metrics, logs, timers,
 * capability handling or error answers: not a proxy anyone should run, only a measure of what
 * node's sockets and event loop cost for this exchange on this machine.
 *
 * Usage: node dist/bench/floor.js PORT TABLE.json   (TABLE: {"user": backendPort, …})
 */
import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { splice } from '../src/proxy/splice.js';

const port = Number(process.argv[2]);
const table = new Map(Object.entries(JSON.parse(readFileSync(process.argv[3] ?? '', 'utf8')) as Record<string, number>));
const LOGIN = /^(\S+) LOGIN "?([^"\s]+)"? /i;

function serve(client: Socket): void {
  client.on('error', () => client.destroy());
  client.write('* OK floor ready\r\n');
  let line = '';
  const onLine = (chunk: Buffer): void => {
    line += chunk.toString('latin1');
    if (!line.endsWith('\r\n')) return;
    client.off('data', onLine);
    const login = LOGIN.exec(line);
    const backendPort = login ? table.get(login[2]!) : undefined;
    if (!login || backendPort === undefined) return void client.destroy();
    const tag = login[1]!;
    const backend = connect({ host: '127.0.0.1', port: backendPort, noDelay: true });
    backend.on('error', () => client.destroy());
    let answer = '';
    let greeted = false;
    const onBackend = (data: Buffer): void => {
      answer += data.toString('latin1');
      if (!greeted) {
        const end = answer.indexOf('\r\n');
        if (end < 0) return;
        greeted = true;
        answer = answer.slice(end + 2);
        backend.write(line);
      }
      const done = answer.match(new RegExp(`(?:^|\\r\\n)${tag} (OK|NO|BAD)[^\\r]*\\r\\n`));
      if (!done) return;
      backend.off('data', onBackend);
      const cut = (done.index ?? 0) + done[0].length;
      client.write(answer.slice(0, cut));
      splice(client, backend, new Uint8Array(), Buffer.from(answer.slice(cut), 'latin1'), 1_800_000);
    };
    backend.on('data', onBackend);
  };
  client.on('data', onLine);
}

createServer({ noDelay: true }, serve).listen(port, '127.0.0.1');
