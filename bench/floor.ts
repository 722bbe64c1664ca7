/**
 * The floor: the least a Node.js IMAP login proxy can do for the bench's login loop, run as its
 * own process so that its CPU per login can be set beside mailfront's. It accepts, greets, reads
 * one `LOGIN` line, connects to the user's Dovecot (a fixed user → port table), reads the
 * greeting, replays the `LOGIN`, passes the tagged answer on and splices with mailfront's own
 * relay (src/proxy/splice.ts). No directory, cache, throttle, limits, metrics, logs, timers,
 * capability handling or error answers: not a proxy anyone should run, only a measure of what
 * node's sockets and event loop cost for this exchange on this machine. Its backend connections'
 * options are marked as mailfront's are (src/net/socket-options.ts): any relay on Node 20 can
 * spare itself the maps made per socket, so the floor does too (since e13b199's stop).
 *
 * With POP3_PORT and POP3_TABLE it does the same for POP3 there: greets, answers `USER` itself,
 * reads `PASS`, connects, and replays `USER` and then `PASS` (no XCLIENT), one round trip each.
 *
 * Usage: node dist/bench/floor.js PORT TABLE.json [POP3_PORT POP3_TABLE.json]
 *        (TABLE: {"user": backendPort, …})
 */
import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { markedSocketOptions } from '../src/net/socket-options.js';
import { splice } from '../src/proxy/splice.js';

const port = Number(process.argv[2]);
const readTable = (file: string | undefined): Map<string, number> => new Map(Object.entries(JSON.parse(readFileSync(file ?? '', 'utf8')) as Record<string, number>));
const table = readTable(process.argv[3]);
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
    const backend = connect(markedSocketOptions({ host: '127.0.0.1', port: backendPort, noDelay: true }));
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

/** Takes the first CRLF-ended line off `buffer`: [line with its CRLF, the rest], or null. */
function takeLine(buffer: string): [string, string] | null {
  const end = buffer.indexOf('\r\n');
  return end < 0 ? null : [buffer.slice(0, end + 2), buffer.slice(end + 2)];
}

function servePop3(client: Socket, pop3Table: ReadonlyMap<string, number>): void {
  client.on('error', () => client.destroy());
  client.write('+OK floor ready\r\n');
  let input = '';
  let userLine = '';
  const onLine = (chunk: Buffer): void => {
    input += chunk.toString('latin1');
    const taken = takeLine(input);
    if (taken === null) return;
    input = taken[1];
    if (userLine === '') {
      userLine = taken[0];
      client.write('+OK\r\n');
      return;
    }
    client.off('data', onLine);
    const passLine = taken[0];
    const backendPort = pop3Table.get(/^USER (\S+)/i.exec(userLine)?.[1] ?? '');
    if (backendPort === undefined) return void client.destroy();
    const backend = connect(markedSocketOptions({ host: '127.0.0.1', port: backendPort, noDelay: true }));
    backend.on('error', () => client.destroy());
    let answer = '';
    let step: 'greeting' | 'user' | 'pass' = 'greeting';
    const onBackend = (data: Buffer): void => {
      answer += data.toString('latin1');
      for (let line = takeLine(answer); line !== null; line = takeLine(answer)) {
        answer = line[1];
        if (step === 'greeting') {
          step = 'user';
          backend.write(userLine);
        } else if (step === 'user') {
          step = 'pass';
          backend.write(passLine);
        } else {
          backend.off('data', onBackend);
          client.write(line[0]);
          splice(client, backend, new Uint8Array(), Buffer.from(answer, 'latin1'), 1_800_000);
          return;
        }
      }
    };
    backend.on('data', onBackend);
  };
  client.on('data', onLine);
}

createServer({ noDelay: true }, serve).listen(port, '127.0.0.1');
if (process.argv[4] !== undefined) {
  const pop3Table = readTable(process.argv[5]);
  createServer({ noDelay: true }, (client) => servePop3(client, pop3Table)).listen(Number(process.argv[4]), '127.0.0.1');
}
