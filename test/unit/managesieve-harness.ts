/**
 * Test drivers for the ManageSieve machines: run a scripted conversation with the input cut in
 * every way the tests use (whole, at each byte position, one byte at a time) and return a
 * normalised trace, so that "every split gives the same result" is one deepStrictEqual.
 */

import assert from 'node:assert/strict';
import { MAX_BACKEND_RESPONSE_BYTES, MAX_LINE_BYTES, MAX_PIPELINED_BYTES, MAX_PREAUTH_LITERAL_BYTES } from '../../src/limits.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import type { BackendLoginOptions, LoginRefusal, PreauthAction, PreauthOptions } from '../../src/protocol/types.js';
import { driveBackend, mergeSends, TLS, type Chunker, type Phase } from './machine-trace.js';
import { feedShared } from './feed.js';

export { TLS, type Chunker, type Phase };


export function bytes(input: string | Uint8Array): Uint8Array {
  return typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
}

function text(data: Uint8Array): string {
  return Buffer.from(data).toString('utf8');
}

const whole: Chunker = (b) => [b];
const byteByByte: Chunker = (b) => Array.from(b, (_, i) => b.subarray(i, i + 1));
const splitAt =
  (at: number): Chunker =>
  (b) =>
    at < b.length ? [b.subarray(0, at), b.subarray(at)] : [b];

/** Every chunking: whole, one byte at a time, and a cut at each position (sampled, densely near the limits, for huge inputs). */
export function chunkers(phases: readonly Phase[]): { label: string; chunk: Chunker }[] {
  const longest = Math.max(0, ...phases.map((p) => (p === TLS ? 0 : bytes(p).length)));
  const cuts = new Set<number>();
  if (longest <= 3000) {
    for (let at = 1; at < longest; at++) cuts.add(at);
  } else {
    const step = Math.ceil(longest / 150);
    for (let at = 1; at < longest; at += step) cuts.add(at);
    for (const around of [0, longest, MAX_LINE_BYTES, MAX_PREAUTH_LITERAL_BYTES, MAX_PIPELINED_BYTES, MAX_BACKEND_RESPONSE_BYTES]) {
      for (let at = around - 40; at <= around + 40; at++) if (at > 0 && at < longest) cuts.add(at);
    }
  }
  return [
    { label: 'whole', chunk: whole },
    { label: 'byte by byte', chunk: byteByByte },
    ...[...cuts].sort((a, b) => a - b).map((at) => ({ label: `split at ${at}`, chunk: splitAt(at) })),
  ];
}

export type LoginReply = { readonly ok: true } | { readonly ok: false; readonly refusal: LoginRefusal; readonly text?: string };

export interface PreauthScript {
  readonly options?: Partial<PreauthOptions>;
  readonly phases: readonly Phase[];
  /** Answers to the successive 'login' actions; missing ones fail with 'auth-failed'. */
  readonly logins?: readonly LoginReply[];
  /** Only answer logins this way (when the answer's timing changes the outcome). */
  readonly respond?: 'immediately' | 'at-end';
}

/** Port 4190 with STARTTLS offered and plaintext refused until TLS: the usual listener. */
export const PLAIN_PORT: PreauthOptions = { tlsActive: false, starttlsAvailable: true, plaintextWithoutTls: false, greetingText: 'mailfront ready' };

/**
 * Runs a pre-auth machine over the script: sends merged, then 'login', 'starttls', 'close',
 * 'tls-started' entries, and 'forward' for the bytes the session relays to the backend after a
 * successful login (pipelined bytes and everything received later). Logins are answered as soon
 * as they appear, or after all input of the phase.
 */
export function runPreauth(script: PreauthScript, chunk: Chunker, respond: 'immediately' | 'at-end'): string[] {
  const machine = managesieveAdapter.createPreauth({ ...PLAIN_PORT, ...script.options });
  const trace: string[] = [];
  let pending = 0;
  let loginIndex = 0;
  let forwarded = null as Uint8Array[] | null;
  let closed = false;
  const record = (actions: PreauthAction[]): void => {
    for (const action of actions) {
      switch (action.type) {
        case 'send':
          trace.push(`send ${action.data}`);
          break;
        case 'login':
          pending++;
          trace.push(`login ${JSON.stringify(action.credentials)}`);
          break;
        case 'bearer-login':
          pending++;
          trace.push(`bearer-login ${JSON.stringify(action.credentials)}`);
          break;
        case 'client-id':
          trace.push('client-id');
          break;
        case 'starttls':
          trace.push('starttls');
          break;
        case 'close':
          closed = true;
          trace.push(`close ${action.reason}`);
          break;
      }
    }
  };
  const answer = (): void => {
    while (pending > 0 && !closed) {
      pending--;
      const reply = script.logins?.[loginIndex++] ?? { ok: false, refusal: 'auth-failed' };
      if (reply.ok) {
        const success = machine.loginSucceeded('"IMPLEMENTATION" "backend"');
        trace.push(`send ${success.reply}`);
        forwarded = [success.pipelined];
      } else {
        record(machine.loginFailed(reply.refusal, reply.text));
      }
    }
  };
  record(machine.greeting());
  for (const phase of script.phases) {
    if (phase === TLS) {
      trace.push('tls-started');
      record(machine.tlsStarted());
      continue;
    }
    for (const piece of chunk(bytes(phase))) {
      if (forwarded !== null) {
        forwarded.push(piece);
        continue;
      }
      record(feedShared((c) => machine.receive(c), piece));
      if (respond === 'immediately') answer();
    }
    answer();
  }
  if (forwarded !== null) trace.push(`forward ${text(Buffer.concat(forwarded))}`);
  return mergeSends(trace);
}

/** Runs the script whole, cut at every position and byte by byte, logins answered early and late; all traces must agree. */
export function preauthTrace(script: PreauthScript): string[] {
  const expected = runPreauth(script, whole, script.respond ?? 'at-end');
  for (const { label, chunk } of chunkers(script.phases)) {
    for (const respond of script.respond === undefined ? (['immediately', 'at-end'] as const) : [script.respond]) {
      assert.deepStrictEqual(runPreauth(script, chunk, respond), expected, `${label}, logins answered ${respond}`);
    }
  }
  return expected;
}

/** What the client sees: every send of a trace joined. */
export function wire(trace: readonly string[]): string {
  return trace.filter((e) => e.startsWith('send ')).map((e) => e.slice(5)).join('');
}

export const BACKEND_DEFAULTS: BackendLoginOptions = { mode: 'replay', user: 'alice', password: 'secret', starttls: false };

/**
 * Runs a backend login machine over the backend's side of a transcript: what mailfront sent
 * (merged), 'starttls', 'done', 'fail', the final state, and 'leftover' with the bytes the session
 * relays to the client after 'done' (the leftover and everything received later).
 */
export function runBackend(options: Partial<BackendLoginOptions>, phases: readonly Phase[], chunk: Chunker): string[] {
  const machine = managesieveAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, ...options });
  const { trace, relayed } = driveBackend(machine, phases, (phase) => chunk(bytes(phase)), text);
  const leftover = relayed === null ? '' : text(relayed);
  if (leftover !== '') trace.push(`leftover ${leftover}`);
  return mergeSends(trace);
}

/** Runs a backend transcript whole, cut at every position and byte by byte; all traces must agree. */
export function backendTrace(options: Partial<BackendLoginOptions>, phases: readonly Phase[]): string[] {
  const expected = runBackend(options, phases, whole);
  for (const { label, chunk } of chunkers(phases)) {
    assert.deepStrictEqual(runBackend(options, phases, chunk), expected, label);
  }
  return expected;
}
