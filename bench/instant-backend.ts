/**
 * An IMAP server that answers at once and does nothing else: the backend of the bench's `cpu`
 * step, which measures what a proxy itself spends on a login when nothing else on the machine
 * competes for the CPU. With Dovecot behind it, a login costs Dovecot 5 to 9 ms of CPU, the two
 * cores are saturated, and every process's CPU per login grows with the contention (the floor
 * relay needs about twice as much as with this backend). This server costs a small fraction of
 * a proxy's work, so the proxies' figures can be set side by side.
 *
 * It speaks just enough IMAP for the login loop and for the proxies in front of it: a greeting
 * with capabilities, ID, CAPABILITY, LOGIN (quoted strings, atoms or synchronizing literals, as
 * nginx sends them), SELECT, NOOP and LOGOUT. Every login succeeds: the proxies check the
 * password against LDAP before they get here. Each batch of input gets one write of output, as
 * Dovecot corks its answers.
 *
 * With POP3_PORT it also speaks POP3 there: a greeting that offers XCLIENT as Dovecot's does to a
 * trusted network, XCLIENT, USER, PASS, STAT, NOOP and QUIT (bench/syscalls.ts logs in over it).
 *
 * With DELAY it sends each greeting and answer late, spending no CPU meanwhile: a backend's timing
 * without its CPU (bench/contention.ts). "8" is 8 ms late; "~8" between 0 and 16 ms, at random.
 *
 * Usage: node dist/bench/instant-backend.js PORT [POP3_PORT] [DELAY]
 */
import { createServer, type Socket } from 'node:net';

const CAPABILITIES = 'IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN';
/** Longest command line or literal accepted: the login loop sends a few dozen bytes. */
const MAX_PENDING = 16 * 1024;
/** "8": every answer 8 ms late; "~8": between 0 and 16 ms late, at random (in order on each connection). */
const DELAY = process.argv[4] ?? '0';
const DELAY_MS = Number(DELAY.replace(/^~/, ''));
const JITTER = DELAY.startsWith('~');
/** Each connection's answers still to leave, in order, the first with its timer set. */
const queues = new WeakMap<Socket, Array<{ at: number; text: string; close: boolean }>>();

/** Writes `text` (and ends the socket if `close`), late as DELAY says; never before an earlier answer. */
function send(socket: Socket, text: string, close = false): void {
  if (DELAY_MS <= 0) return write(socket, text, close);
  const at = performance.now() + (JITTER ? Math.random() * 2 * DELAY_MS : DELAY_MS);
  let queue = queues.get(socket);
  if (queue === undefined) queues.set(socket, (queue = []));
  queue.push({ at, text, close });
  if (queue.length === 1) leaveInTurn(socket, queue);
}

/** The first answer of `queue` at its time (timers of different lengths keep no order between them), then the next. */
function leaveInTurn(socket: Socket, queue: Array<{ at: number; text: string; close: boolean }>): void {
  setTimeout(() => {
    const first = queue.shift()!;
    write(socket, first.text, first.close);
    if (queue.length > 0) leaveInTurn(socket, queue);
  }, Math.max(0, queue[0]!.at - performance.now()));
}

function write(socket: Socket, text: string, close: boolean): void {
  if (socket.destroyed) return;
  if (close) socket.end(text);
  else if (text !== '') socket.write(text);
}

function serve(socket: Socket): void {
  socket.on('error', () => socket.destroy());
  send(socket, `* OK [CAPABILITY ${CAPABILITIES}] instant backend ready\r\n`);
  let pending = '';
  /** Bytes of a synchronizing literal still to skip. */
  let literal = 0;
  /** The command so far, when it continues after a literal. */
  let command = '';
  socket.on('data', (chunk: Buffer) => {
    pending += chunk.toString('latin1');
    if (pending.length > MAX_PENDING) return void socket.destroy();
    let out = '';
    let close = false;
    for (;;) {
      if (literal > 0) {
        if (pending.length < literal) break;
        command += pending.slice(0, literal);
        pending = pending.slice(literal);
        literal = 0;
      }
      const end = pending.indexOf('\r\n');
      if (end < 0) break;
      const line = pending.slice(0, end);
      pending = pending.slice(end + 2);
      const announced = /\{(\d+)(\+?)\}$/.exec(line);
      if (announced !== null) {
        command += line;
        literal = Number(announced[1]);
        if (announced[2] === '') out += '+ go ahead\r\n';
        continue;
      }
      const [tag = '*', verb = ''] = (command + line).split(' ', 2);
      command = '';
      switch (verb.toUpperCase()) {
        case 'LOGIN':
          out += `${tag} OK [CAPABILITY ${CAPABILITIES}] Logged in\r\n`;
          break;
        case 'ID':
          out += `* ID NIL\r\n${tag} OK ID completed\r\n`;
          break;
        case 'CAPABILITY':
          out += `* CAPABILITY ${CAPABILITIES}\r\n${tag} OK Capability completed\r\n`;
          break;
        case 'SELECT':
          out += `* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 0 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT 1] Predicted next UID\r\n${tag} OK [READ-WRITE] Select completed\r\n`;
          break;
        case 'NOOP':
          out += `${tag} OK NOOP completed\r\n`;
          break;
        case 'LOGOUT':
          out += `* BYE Logging out\r\n${tag} OK Logout completed\r\n`;
          close = true;
          break;
        default:
          out += `${tag} BAD Not supported here\r\n`;
      }
      if (close) break;
    }
    send(socket, out, close);
  });
}

function servePop3(socket: Socket): void {
  socket.on('error', () => socket.destroy());
  send(socket, '+OK [XCLIENT] instant backend ready.\r\n');
  let pending = '';
  socket.on('data', (chunk: Buffer) => {
    pending += chunk.toString('latin1');
    if (pending.length > MAX_PENDING) return void socket.destroy();
    let out = '';
    let close = false;
    for (let end = pending.indexOf('\r\n'); end >= 0 && !close; end = pending.indexOf('\r\n')) {
      const [verb = ''] = pending.slice(0, end).split(' ', 1);
      pending = pending.slice(end + 2);
      switch (verb.toUpperCase()) {
        case 'XCLIENT':
        case 'USER':
        case 'NOOP':
          out += '+OK\r\n';
          break;
        case 'PASS':
          out += '+OK Logged in.\r\n';
          break;
        case 'STAT':
          out += '+OK 0 0\r\n';
          break;
        case 'QUIT':
          out += '+OK Logging out.\r\n';
          close = true;
          break;
        default:
          out += '-ERR Not supported here\r\n';
      }
    }
    send(socket, out, close);
  });
}

const port = Number(process.argv[2]);
createServer({ noDelay: true }, serve).listen(port, '127.0.0.1');
if (process.argv[3] !== undefined) createServer({ noDelay: true }, servePop3).listen(Number(process.argv[3]), '127.0.0.1');
