/**
 * Test helpers for the IMAP adapter: every way of chunking an input, and drivers that run the
 * pre-auth and backend machines over a script and return a normalised trace, so that the same
 * input split differently can be compared with one deepStrictEqual.
 */

import assert from 'node:assert/strict';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import type { BackendLoginOptions, LoginRefusal, PreauthAction, PreauthOptions } from '../../src/protocol/types.js';
import { driveBackend, mergeSends, TLS, type Chunker, type Phase } from './machine-trace.js';
import { feedShared } from './feed.js';

export { TLS, type Chunker, type Phase };

export function bytes(input: string | Uint8Array): Uint8Array {
  return typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
}

/** Encodes text as UTF-8 (the default `bytes` keeps one byte per character). */
export function utf8(text: string): Uint8Array {
  return Buffer.from(text, 'utf8');
}

export function latin1(data: Uint8Array): string {
  return Buffer.from(data).toString('latin1');
}

/** Whole, split once at every position up to `maxLength`, and one byte at a time. */
export function chunkers(maxLength: number): { label: string; chunk: Chunker }[] {
  const list: { label: string; chunk: Chunker }[] = [{ label: 'whole', chunk: (b) => [b] }];
  for (let at = 1; at < maxLength; at++) {
    list.push({ label: `split at ${at}`, chunk: (b) => (at < b.length ? [b.subarray(0, at), b.subarray(at)] : [b]) });
  }
  list.push({ label: 'byte by byte', chunk: (b) => Array.from(b, (_, i) => b.subarray(i, i + 1)) });
  return list;
}

function phaseLength(phases: readonly Phase[]): number {
  return Math.max(0, ...phases.map((p) => (p === TLS ? 0 : bytes(p).length)));
}

export type LoginReply =
  | { readonly ok: true; readonly capabilities: string | null }
  | { readonly ok: false; readonly refusal: LoginRefusal; readonly text?: string };

export interface PreauthScript {
  readonly options?: Partial<PreauthOptions>;
  readonly phases: readonly Phase[];
  /** Answers to the successive 'login' actions; missing ones fail with 'auth-failed'. */
  readonly logins?: readonly LoginReply[];
  /** Only answer logins this way (when the answer's timing changes the outcome). */
  readonly respond?: 'immediately' | 'at-end';
}

export const TLS_CLIENT: PreauthOptions = {
  tlsActive: true,
  starttlsAvailable: false,
  plaintextWithoutTls: false,
  greetingText: 'mailfront ready',
};

/**
 * Runs a pre-auth machine over the script and returns the trace: sends merged, then 'login',
 * 'client-id', 'starttls', 'close' entries, and 'forward' for the bytes the session would relay
 * to the backend after a successful login (pipelined bytes and everything received later).
 * `respond` says whether logins are answered as soon as they appear or after all input.
 */
export function runPreauth(script: PreauthScript, chunk: Chunker, respond: 'immediately' | 'at-end'): string[] {
  const machine = imapAdapter.createPreauth({ ...TLS_CLIENT, ...script.options });
  const trace: string[] = [];
  let pendingLogins = 0;
  let loginIndex = 0;
  let forwarded = null as Uint8Array[] | null;
  let closed = false;
  const record = (actions: PreauthAction[]): void => {
    for (const action of actions) {
      if (action.type === 'close') closed = true;
      switch (action.type) {
        case 'send':
          trace.push(`send ${action.data}`);
          break;
        case 'login':
          pendingLogins++;
          trace.push(`login ${JSON.stringify(action.credentials)}`);
          break;
        case 'bearer-login':
          pendingLogins++;
          trace.push(`bearer-login ${JSON.stringify(action.credentials)}`);
          break;
        case 'client-id':
          trace.push(`client-id ${JSON.stringify([...action.params])}`);
          break;
        case 'starttls':
          trace.push('starttls');
          break;
        case 'close':
          trace.push(`close ${action.reason}`);
          break;
      }
    }
  };
  const answer = (): void => {
    // A session does not answer a login once the machine asked to close.
    while (pendingLogins > 0 && !closed) {
      pendingLogins--;
      const reply = script.logins?.[loginIndex++] ?? { ok: false, refusal: 'auth-failed' };
      if (reply.ok) {
        const success = machine.loginSucceeded(reply.capabilities);
        trace.push(`send ${success.reply}`);
        forwarded = [success.pipelined];
      } else {
        record(machine.loginFailed(reply.refusal, reply.text));
      }
    }
  };
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
  }
  answer();
  if (forwarded !== null) trace.push(`forward ${latin1(Buffer.concat(forwarded))}`);
  return mergeSends(trace);
}

/**
 * Runs the script whole, split at every byte position (or at `splitPositions`) and byte by byte,
 * answering logins early and late; all traces must agree.
 */
export function preauthTrace(script: PreauthScript, splitPositions?: readonly number[]): string[] {
  const expected = runPreauth(script, (b) => [b], 'at-end');
  const all = chunkers(phaseLength(script.phases));
  const selected = splitPositions === undefined ? all : all.filter((_, i) => i === 0 || i === all.length - 1 || splitPositions.includes(i));
  for (const { label, chunk } of selected) {
    for (const respond of script.respond === undefined ? (['immediately', 'at-end'] as const) : [script.respond]) {
      assert.deepStrictEqual(runPreauth(script, chunk, respond), expected, `${label}, logins answered ${respond}`);
    }
  }
  return expected;
}

export const BACKEND_DEFAULTS: BackendLoginOptions = {
  mode: 'replay',
  user: 'alice',
  password: 'secret',
  starttls: false,
};

/**
 * Runs a backend login machine over the backend's side of a transcript and returns the trace:
 * what mailfront sent (merged), 'starttls', 'done' with the capabilities, 'fail', and 'leftover'
 * with the bytes the session would relay to the client after 'done'.
 */
export function runBackend(options: Partial<BackendLoginOptions>, phases: readonly Phase[], chunk: Chunker): string[] {
  const machine = imapAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, ...options });
  const { trace, relayed } = driveBackend(machine, phases, (phase) => chunk(bytes(phase)), latin1);
  if (relayed !== null) trace.push(`leftover ${latin1(relayed)}`);
  return mergeSends(trace);
}

/** Runs a backend transcript whole, split at every position and byte by byte; all traces must agree. */
export function backendTrace(options: Partial<BackendLoginOptions>, phases: readonly Phase[]): string[] {
  const expected = runBackend(options, phases, (b) => [b]);
  for (const { label, chunk } of chunkers(phaseLength(phases))) {
    assert.deepStrictEqual(runBackend(options, phases, chunk), expected, label);
  }
  return expected;
}
