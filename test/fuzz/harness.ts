/**
 * Shared driver for the pre-auth fuzz properties: runs a PreauthMachine over generated input cut
 * into chunks, answers its logins like a session would, checks every action it returns against
 * the contract (well-formed wire text, safe credentials, nothing after close, no login without
 * TLS where TLS is required, nothing read between STARTTLS and the handshake), measures the bytes
 * it holds after every chunk, and returns a trace that must not depend on the chunking.
 * Also: the time budget (MAILFRONT_FUZZ_SECONDS) and seed (MAILFRONT_FUZZ_SEED) of a fuzz file.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import fc from 'fast-check';
import type { LoginRefusal, PreauthAction, PreauthMachine, PreauthOptions, ProtocolAdapter } from '../../src/protocol/types.js';
import { mergeSends } from '../unit/machine-trace.js';

/** How the fake session answers the i-th login. */
export type Answer = { readonly ok: true } | { readonly ok: false; readonly refusal: LoginRefusal; readonly text?: string };

/** When logins are answered: right after the chunk that produced them, or after all input. */
export type AnswerTiming = 'immediately' | 'at-end';

export interface Session {
  readonly options: PreauthOptions;
  /** Bytes before a TLS handshake (all of the input when no STARTTLS happens). */
  readonly plain: Uint8Array;
  /** Bytes sent after the TLS handshake, if the machine asked for one; else appended to `plain`. */
  readonly afterTls: Uint8Array;
  readonly answers: readonly Answer[];
}

export interface Bounds {
  /** Bytes the machine holds after a receive() that did not close, whatever its state. */
  readonly maxHeldBytes: number;
}

export interface Protocol {
  readonly adapter: ProtocolAdapter;
  /** Bytes the machine holds now (read through the protocol's public or test-only handles). */
  heldBytes(machine: PreauthMachine): number;
  /** The protocol's own checks of one line the machine sent (without CRLF). */
  checkLine(line: string): void;
  readonly bounds: Bounds;
}

const CLOSE_REASONS = new Set(['logout', 'protocol-error', 'limit', 'timeout', 'shutdown']);
const MECHANISMS = new Set(['LOGIN', 'PLAIN', 'SASL-LOGIN', 'USER-PASS']);
const BACKEND_CAPABILITIES = 'IMAP4rev1 IDLE';

/** Cuts `bytes` at the given positions (taken modulo its length, deduplicated). */
export function cut(bytes: Uint8Array, positions: readonly number[]): Uint8Array[] {
  if (bytes.length === 0) return [];
  const at = [...new Set(positions.map((p) => p % bytes.length).filter((p) => p > 0))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let start = 0;
  for (const p of [...at, bytes.length]) {
    out.push(bytes.subarray(start, p));
    start = p;
  }
  return out;
}

function checkSend(data: string, protocol: Protocol): void {
  assert.ok(data.length > 0, 'an empty send');
  assert.ok(data.endsWith('\r\n'), `a send that does not end in CRLF: ${JSON.stringify(data.slice(-80))}`);
  for (const line of data.slice(0, -2).split('\r\n')) {
    // Framing is what matters on the wire: a bare CR or LF, a NUL or another C0 control in a
    // reply could split it or forge a second line (text from config or a backend included).
    assert.ok(!/[\x00-\x1f\x7f]/.test(line), `a bare CR or LF, a NUL or a control character in: ${JSON.stringify(line.slice(0, 200))}`);
    protocol.checkLine(line);
  }
}

/**
 * Runs one session and returns its trace. `cuts` splits both input phases; the machine must also
 * stay silent for bytes that arrive between STARTTLS and the handshake (they are fed to it here).
 */
export function runSession(protocol: Protocol, session: Session, cuts: readonly number[], timing: AnswerTiming): string[] {
  const machine = protocol.adapter.createPreauth(session.options);
  const trace: string[] = [];
  let tlsActive = session.options.tlsActive;
  let closed = false;
  let pendingLogins = 0;
  let answered = 0;
  let forwarded: Uint8Array[] | null = null;
  let tlsRequested = false;
  const plaintextAllowed = (): boolean => tlsActive || session.options.plaintextWithoutTls;

  const record = (actions: PreauthAction[]): void => {
    for (const action of actions) {
      assert.ok(!closed, `an action after close: ${JSON.stringify(action)}`);
      switch (action.type) {
        case 'send':
          checkSend(action.data, protocol);
          trace.push(`send ${action.data}`);
          break;
        case 'login': {
          const { user, password, mechanism } = action.credentials;
          assert.ok(plaintextAllowed(), 'credentials accepted without TLS where TLS is required');
          assert.ok(user.length > 0 && password.length > 0, 'an empty user name or password handed on');
          assert.ok(!/[\r\n\0]/.test(user + password + (action.credentials.authzid ?? '')), 'CR, LF or NUL in credentials handed on');
          assert.ok(MECHANISMS.has(mechanism), mechanism);
          assert.equal(pendingLogins, 0, 'a second login while one is pending');
          pendingLogins++;
          trace.push(`login ${JSON.stringify(action.credentials)}`);
          break;
        }
        case 'bearer-login': {
          const { user, token, mechanism } = action.credentials;
          assert.ok(session.options.oauth === true, 'a bearer login without oauth2');
          assert.ok(plaintextAllowed(), 'a token accepted without TLS where TLS is required');
          assert.ok(token.length > 0, 'an empty token handed on');
          assert.ok(!/[\r\n\0]/.test(token + (user ?? '')), 'CR, LF or NUL in a token or user handed on');
          assert.ok(mechanism === 'OAUTHBEARER' || mechanism === 'XOAUTH2', mechanism);
          assert.equal(pendingLogins, 0, 'a second login while one is pending');
          pendingLogins++;
          trace.push(`bearer-login ${JSON.stringify(action.credentials)}`);
          break;
        }
        case 'starttls':
          assert.ok(session.options.starttlsAvailable && !tlsActive, 'STARTTLS where it is not offered');
          tlsRequested = true;
          trace.push('starttls');
          break;
        case 'client-id':
          for (const [key, value] of action.params) {
            assert.equal(key, key.toLowerCase());
            assert.ok(!/[\x00-\x1f\x7f]/.test(key + (value ?? '')), 'control characters in ID parameters');
          }
          trace.push(`client-id ${JSON.stringify([...action.params])}`);
          break;
        case 'close':
          assert.ok(CLOSE_REASONS.has(action.reason), action.reason);
          closed = true;
          trace.push(`close ${action.reason}`);
          break;
      }
    }
  };

  const answer = (): void => {
    while (pendingLogins > 0 && !closed && forwarded === null) {
      pendingLogins--;
      const reply = session.answers[answered++] ?? { ok: false, refusal: 'auth-failed' };
      if (reply.ok) {
        const success = machine.loginSucceeded(BACKEND_CAPABILITIES);
        checkSend(success.reply, protocol);
        trace.push(`send ${success.reply}`);
        forwarded = [success.pipelined];
      } else {
        record(machine.loginFailed(reply.refusal, reply.text));
      }
    }
  };

  const feed = (piece: Uint8Array): void => {
    if (forwarded !== null) {
      forwarded.push(piece);
      return;
    }
    if (closed) {
      assert.deepEqual(machine.receive(piece), [], 'a closed machine answered');
      return;
    }
    if (tlsRequested) {
      // Bytes queued behind STARTTLS must never be read as commands (CVE-2011-0411 class).
      assert.deepEqual(machine.receive(piece), [], 'bytes between STARTTLS and the handshake were read');
      return;
    }
    record(machine.receive(piece));
    if (timing === 'immediately') answer();
    if (!closed && forwarded === null) {
      const held = protocol.heldBytes(machine);
      assert.ok(held <= protocol.bounds.maxHeldBytes, `the machine holds ${held} bytes (bound ${protocol.bounds.maxHeldBytes})`);
    }
  };

  record(machine.greeting());
  for (const piece of cut(session.plain, cuts)) feed(piece);
  if (tlsRequested && !closed) {
    trace.push('tls-started');
    tlsActive = true;
    tlsRequested = false;
    record(machine.tlsStarted());
  }
  for (const piece of cut(session.afterTls, cuts)) feed(piece);
  answer();
  // The session ends here: a timeout must close a machine that is still open, cleanly.
  if (!closed && forwarded === null) {
    const last = machine.timedOut();
    if (pendingLogins === 0) assert.ok(last.some((a) => a.type === 'close'), 'timedOut() did not close');
    record(last);
  }
  if (forwarded !== null) trace.push(`forward ${Buffer.concat(forwarded).toString('latin1')}`);
  return mergeSends(trace);
}

/** Turns pieces (text as latin1, or bytes) into one byte array. */
export function join(pieces: readonly (string | Uint8Array)[]): Uint8Array {
  return Buffer.concat(pieces.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));
}

/** Flips, inserts and deletes bytes at generated positions: a valid session, damaged. */
export function mutate(bytes: Uint8Array, edits: readonly { readonly at: number; readonly op: 'flip' | 'insert' | 'delete' | 'dup'; readonly byte: number }[]): Uint8Array {
  let out = Buffer.from(bytes);
  for (const edit of edits) {
    if (out.length === 0 && edit.op !== 'insert') continue;
    const at = out.length === 0 ? 0 : edit.at % out.length;
    switch (edit.op) {
      case 'flip':
        out[at] = (out[at] as number) ^ (1 << (edit.byte & 7));
        break;
      case 'insert':
        out = Buffer.concat([out.subarray(0, at), Buffer.of(edit.byte), out.subarray(at)]);
        break;
      case 'delete':
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1)]);
        break;
      case 'dup':
        out = Buffer.concat([out.subarray(0, at), out.subarray(at, at + 16), out.subarray(at)]);
        break;
    }
  }
  return out;
}

/** An arbitrary edit list for mutate(). */
export const edits = fc.array(fc.record({ at: fc.nat(), op: fc.constantFrom('flip' as const, 'insert' as const, 'delete' as const, 'dup' as const), byte: fc.integer({ min: 0, max: 255 }) }), { maxLength: 8 });

/** Connection facts: every combination of TLS, STARTTLS, plaintext permission and oauth2 (the bearer mechanisms offered or not). */
export const preauthOptions: fc.Arbitrary<PreauthOptions> = fc.oneof(
  // Half of the runs on the common listener: plain with STARTTLS, plaintext refused before it.
  fc.boolean().map((oauth): PreauthOptions => ({ tlsActive: false, starttlsAvailable: true, plaintextWithoutTls: false, greetingText: 'mailfront ready', oauth })),
  fc.record({
    tlsActive: fc.boolean(),
    starttlsAvailable: fc.boolean(),
    plaintextWithoutTls: fc.boolean(),
    greetingText: fc.constantFrom('mailfront ready', 'hi\r\n* BYE injected', ''),
    oauth: fc.boolean(),
  }),
);

/** Login answers, including texts that try to inject lines. */
export const answers: fc.Arbitrary<Answer[]> = fc.array(
  fc.oneof(
    fc.constant<Answer>({ ok: true }),
    fc.constantFrom<LoginRefusal>('auth-failed', 'unavailable', 'limit', 'in-use').map((refusal): Answer => ({ ok: false, refusal })),
    fc.record({ refusal: fc.constantFrom<LoginRefusal>('unavailable', 'limit', 'in-use'), text: fc.constantFrom('Try later.', 'x\r\n* OK [CAPABILITY IMAP4rev1] evil', '\0\u0085\u2028', 'ü'.repeat(300)) }).map((r): Answer => ({ ok: false, ...r })),
  ),
  { maxLength: 4 },
);

/** Cut positions: none (whole), a few, or many. */
export const cuts = fc.oneof(fc.constant<number[]>([]), fc.array(fc.nat(), { maxLength: 6 }), fc.array(fc.nat(), { minLength: 20, maxLength: 200 }));

/** The fuzz budget of one file: MAILFRONT_FUZZ_SECONDS (default 6) shared by its properties. */
export function budgetMs(properties: number): number {
  const seconds = Number(process.env['MAILFRONT_FUZZ_SECONDS'] ?? '6');
  return Math.max(250, Math.round((Number.isFinite(seconds) && seconds > 0 ? seconds * 1_000 : 6_000) / properties));
}

/** Counts which kinds of trace entries a fuzz run reached, so that a generator that stopped reaching logins or STARTTLS shows. */
export class Reach {
  private readonly counts = new Map<string, number>();

  /** Records the entry kinds of one trace. */
  add(trace: readonly string[]): void {
    for (const kind of new Set(trace.map((e) => (e.startsWith('close ') ? e : e.split(' ')[0] ?? '')))) this.counts.set(kind, (this.counts.get(kind) ?? 0) + 1);
  }

  /** One line for t.diagnostic. */
  summary(): string {
    return [...this.counts].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k}: ${n}`).join(', ');
  }

  /** Whether every kind of `kinds` was reached. */
  has(kinds: readonly string[]): boolean {
    return kinds.every((kind) => (this.counts.get(kind) ?? 0) > 0);
  }

  /** Fails when a kind of entry was never reached. */
  expect(kinds: readonly string[]): void {
    for (const kind of kinds) assert.ok((this.counts.get(kind) ?? 0) > 0, `no session reached "${kind}" (${this.summary()})`);
  }
}

/** Fewer runs than this in the time given means the machine or the generator got too slow. */
const MIN_RUNS = 30;

/** At most this many rounds of a property's time while its `reached` does not hold. */
const MAX_ROUNDS = 4;

/**
 * Runs a property for `timeMs` (or until a failure), reports runs and seed, and fails with
 * fast-check's report. `reached` (a Reach's has()): while it does not hold, further rounds of
 * `timeMs` run, with the next seeds, MAX_ROUNDS in all; a loaded machine makes fewer runs in the
 * time, and a kind of session a few in a hundred reach may not come in the first round (once,
 * 178 runs in 1,500 ms with two suites at once on two cores, where 300 to 400 are usual).
 */
export function fuzz<T>(t: TestContext, property: fc.IPropertyWithHooks<T>, timeMs: number, reached: () => boolean = () => true): void {
  const seedText = process.env['MAILFRONT_FUZZ_SEED'];
  const first = seedText !== undefined ? Number(seedText) : Math.floor(Math.random() * 0x7fffffff);
  let runs = 0;
  for (let round = 0; round < MAX_ROUNDS && (round === 0 || !reached()); round++) {
    const seed = (first + round) % 0x7fffffff;
    const details = fc.check(property, { seed, numRuns: Number.MAX_SAFE_INTEGER, plugins: [fc.interruptAfterTimeLimit(timeMs)] });
    t.diagnostic(`${details.numRuns} runs in ${timeMs} ms, seed ${seed} (replay: MAILFRONT_FUZZ_SEED=${seed})`);
    if (details.failed) assert.fail(fc.defaultReportMessage(details) ?? 'property failed');
    runs += details.numRuns;
  }
  assert.ok(runs >= MIN_RUNS, `only ${runs} runs`);
}
