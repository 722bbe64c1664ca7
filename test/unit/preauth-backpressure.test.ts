/**
 * The pre-auth machines under a session that honours `inputFull`: while a login is pending with
 * MAX_PIPELINED_BYTES pipelined behind it the session feeds no more (the rest waits in the
 * kernel), and starts again when the login is answered. Whatever the split of the input, every
 * byte pipelined behind a login that succeeds reaches the backend in order, the machine never
 * holds more than the bound and one read, and a refused login runs what followed it as pre-auth
 * commands, as it did below the bound. A session that feeds on regardless is cut past
 * MAX_PIPELINED_HELD_BYTES.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MAX_PIPELINED_BYTES, MAX_PIPELINED_HELD_BYTES } from '../../src/limits.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import type { PreauthAction, PreauthMachine, PreauthOptions, ProtocolAdapter } from '../../src/protocol/types.js';
import { feedShared } from './feed.js';

const OPTIONS: PreauthOptions = { tlsActive: true, starttlsAvailable: false, plaintextWithoutTls: false, greetingText: 'ready' };

interface Case {
  readonly name: string;
  readonly adapter: ProtocolAdapter;
  /** The login, and what the client pipelined behind it (more than the bound). */
  readonly login: string;
  readonly tail: string;
}

const CASES: readonly Case[] = [
  {
    name: 'IMAP',
    adapter: imapAdapter,
    login: 'a LOGIN alice secret\r\n',
    tail: `${Array.from({ length: 15_000 }, (_, i) => `n${i} NOOP\r\n`).join('')}z LOGOUT\r\n`,
  },
  { name: 'POP3', adapter: pop3Adapter, login: 'USER alice\r\nPASS secret\r\n', tail: `${'NOOP\r\n'.repeat(30_000)}QUIT\r\n` },
  {
    name: 'ManageSieve',
    adapter: managesieveAdapter,
    login: `AUTHENTICATE "PLAIN" "${Buffer.from('\0alice\0secret').toString('base64')}"\r\n`,
    tail: `${'NOOP\r\n'.repeat(30_000)}LOGOUT\r\n`,
  },
];

type Split = { readonly label: string; readonly cuts: (length: number) => number[] };

/**
 * Read sizes: one read of everything; reads of a few sizes, the first cut around the login's end;
 * and one byte at a time through the login and across the bound (byte by byte throughout
 * copies the held input once a byte: minutes).
 */
function splits(loginLength: number): Split[] {
  const fixed = (size: number, first = size): Split => ({
    label: `reads of ${size} bytes (the first ${first})`,
    cuts: (length) => {
      const out = [Math.min(first, length)];
      while (out.reduce((a, b) => a + b, 0) < length) out.push(Math.min(size, length - out.reduce((a, b) => a + b, 0)));
      return out;
    },
  });
  const bytewise: Split = {
    label: 'byte by byte through the login and across the bound',
    cuts: (length) => {
      const before = MAX_PIPELINED_BYTES - 3;
      const out = [...Array<number>(loginLength).fill(1), before, 1, 1, 1, 1, 1];
      return [...out, length - out.reduce((a, b) => a + b, 0)];
    },
  };
  const list: Split[] = [{ label: 'one read', cuts: (length) => [length] }, bytewise];
  for (const size of [1_000, 16 * 1024, 64 * 1024]) {
    for (const first of [1, loginLength - 1, loginLength, loginLength + 1, size]) list.push(fixed(size, first));
  }
  return list;
}

interface Run {
  /** The machine's actions, sends merged, and 'forward' with every byte the backend gets. */
  readonly trace: string[];
  /** The most the machine held behind the login when the session stopped feeding it. */
  readonly heldAtPause: number;
  /** The size of the read that filled it. */
  readonly lastRead: number;
}

/**
 * A session over `input` read in the pieces `cuts` gives: it stops feeding once the machine's
 * input is full, then answers the login (succeed: the rest goes to the backend after what the
 * machine held; fail: feeding starts again).
 */
function run(c: Case, cuts: number[], outcome: 'succeed' | 'fail'): Run {
  const input = Buffer.from(c.login + c.tail, 'latin1');
  const machine: PreauthMachine = c.adapter.createPreauth(OPTIONS);
  const trace: string[] = [];
  let closed = false;
  let loginOut = false;
  const record = (actions: PreauthAction[]): void => {
    for (const action of actions) {
      if (action.type === 'send') {
        const last = trace.at(-1);
        if (last?.startsWith('send ') === true) trace[trace.length - 1] = last + action.data;
        else trace.push(`send ${action.data}`);
      } else if (action.type === 'login') {
        loginOut = true;
        trace.push('login');
      } else if (action.type === 'close') {
        closed = true;
        trace.push(`close ${action.reason}`);
      } else trace.push(action.type);
    }
  };
  record(machine.greeting());
  let offset = 0;
  let piece = 0;
  let fedSinceLogin = 0;
  let heldAtPause = -1;
  let lastRead = 0;
  let answered = false;
  while (!closed) {
    if (machine.inputFull) {
      assert.equal(answered, false, 'full again after the login was answered');
      assert.ok(machine.loginPending, 'full only with a login pending');
      heldAtPause = fedSinceLogin;
      answered = true;
      if (outcome === 'succeed') {
        const success = machine.loginSucceeded(null);
        trace.push(`send ${success.reply}`);
        trace.push(`forward ${Buffer.concat([success.pipelined, input.subarray(offset)]).toString('latin1')}`);
        return { trace, heldAtPause, lastRead };
      }
      record(machine.loginFailed('auth-failed'));
      continue;
    }
    if (offset === input.length) break;
    const size = cuts[piece++] ?? input.length - offset;
    const chunk = input.subarray(offset, offset + size);
    offset += chunk.length;
    lastRead = chunk.length;
    record(feedShared((b) => machine.receive(b), chunk));
    if (loginOut && !answered) fedSinceLogin = offset - Buffer.byteLength(c.login, 'latin1');
  }
  assert.ok(answered, `the machine never stopped taking input (closed: ${closed}): ${JSON.stringify(trace.slice(-3)).slice(0, 300)}`);
  assert.equal(outcome, 'fail', 'a login that succeeds ends the run');
  return { trace, heldAtPause, lastRead };
}

for (const c of CASES) {
  describe(`${c.name} pre-auth: more than MAX_PIPELINED_BYTES pipelined behind a login`, () => {
    const loginLength = Buffer.byteLength(c.login);
    it('takes no more input once the bound is reached, and hands every byte on in order after a login that succeeds, however it was read', () => {
      assert.ok(c.tail.length > MAX_PIPELINED_BYTES + 64 * 1024, 'the tail is more than the bound and a read');
      for (const split of splits(loginLength)) {
        const cuts = split.cuts(loginLength + c.tail.length);
        const { trace, heldAtPause, lastRead } = run(c, cuts, 'succeed');
        assert.equal(trace.filter((e) => e === 'login').length, 1, split.label);
        assert.ok(!trace.some((e) => e.startsWith('close')), `${split.label}: not closed`);
        assert.equal(trace.at(-1), `forward ${c.tail}`, `${split.label}: everything pipelined reaches the backend, in order`);
        assert.ok(heldAtPause >= MAX_PIPELINED_BYTES, `${split.label}: full at ${heldAtPause} bytes`);
        // Stopped at the first read that reached the bound.
        assert.ok(heldAtPause - lastRead < MAX_PIPELINED_BYTES, `${split.label}: ${heldAtPause} held after a read of ${lastRead}`);
      }
    });

    it('after a refused login, reads on and runs what was pipelined as pre-auth commands, however it was read', () => {
      const whole = run(c, [loginLength + c.tail.length], 'fail').trace;
      assert.ok(whole.at(-1)?.startsWith('close '), `closed by the pre-auth limits: ${JSON.stringify(whole.slice(-2)).slice(0, 200)}`);
      for (const split of splits(loginLength)) {
        assert.deepEqual(run(c, split.cuts(loginLength + c.tail.length), 'fail').trace, whole, split.label);
      }
    });

    it('is not full below the bound, and closes past MAX_PIPELINED_HELD_BYTES only when fed on regardless', () => {
      const machine = c.adapter.createPreauth(OPTIONS);
      machine.greeting();
      machine.receive(Buffer.from(c.login + 'x'.repeat(MAX_PIPELINED_BYTES - 1), 'latin1'));
      assert.equal(machine.loginPending, true);
      assert.equal(machine.inputFull, false);
      assert.deepEqual(machine.receive(Buffer.from('x')), []);
      assert.equal(machine.inputFull, true);
      assert.deepEqual(machine.receive(Buffer.from('x'.repeat(MAX_PIPELINED_HELD_BYTES - MAX_PIPELINED_BYTES))), []);
      const actions = machine.receive(Buffer.from('x'));
      assert.deepEqual(actions.at(-1), { type: 'close', reason: 'limit' });
      assert.equal(machine.inputFull, false);
    });
  });
}
