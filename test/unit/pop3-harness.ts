/**
 * Test drivers for the POP3 machines: run a scripted conversation with the input cut into
 * pieces in many ways, and record everything the machine asked for as plain JSON-able events,
 * so that "every split gives the same result" is one deepEqual.
 */

import assert from 'node:assert/strict';
import type { BackendAction, BackendLoginOptions, LoginRefusal, PreauthAction, PreauthOptions } from '../../src/protocol/types.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { MAX_BACKEND_RESPONSE_BYTES, MAX_LINE_BYTES, MAX_PIPELINED_BYTES } from '../../src/limits.js';
import { feedShared } from './feed.js';

const nearLimits = [MAX_LINE_BYTES, MAX_PIPELINED_BYTES, MAX_BACKEND_RESPONSE_BYTES];

/** A marker in a script: the TLS handshake after a starttls action completes here. */
export const TLS = { tls: true } as const;
export type Segment = string | Uint8Array | typeof TLS;

/** How the fake session answers a 'login' action. */
export type LoginAnswer = { readonly succeed: true } | { readonly refuse: LoginRefusal; readonly text?: string } | 'hold';

export type Event =
  | { send: string }
  | { starttls: true }
  | { login: unknown }
  | { bearerLogin: unknown }
  | { clientId: unknown }
  | { close: string }
  | { reply: string }
  | { spliced: string }
  | { done: { capabilities: string | null } }
  | { relayed: string }
  | { fail: { refusal: string; detail: string } };

export type Splitter = (bytes: Uint8Array) => Uint8Array[];

export const whole: Splitter = (bytes) => [bytes];
export const bytewise: Splitter = (bytes) => Array.from(bytes, (b) => Uint8Array.of(b));
export const splitAt =
  (k: number): Splitter =>
  (bytes) => [bytes.subarray(0, k), bytes.subarray(k)];

function toBytes(segment: string | Uint8Array): Uint8Array {
  return typeof segment === 'string' ? new Uint8Array(Buffer.from(segment, 'utf8')) : segment;
}

function text(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('utf8');
}

function preauthEvent(action: PreauthAction): Event {
  switch (action.type) {
    case 'send':
      return { send: action.data };
    case 'starttls':
      return { starttls: true };
    case 'login':
      return { login: { ...action.credentials } };
    case 'bearer-login':
      return { bearerLogin: { ...action.credentials } };
    case 'client-id':
      return { clientId: [...action.params] };
    case 'close':
      return { close: action.reason };
  }
}

/** Runs a pre-auth script; `answers[i]` answers the i-th login (default: hold). */
export function runPreauth(
  options: PreauthOptions,
  script: readonly Segment[],
  split: Splitter,
  answers: readonly LoginAnswer[] = [],
): Event[] {
  const machine = pop3Adapter.createPreauth(options);
  const events: Event[] = [];
  let logins = 0;
  let spliced = null as string | null;

  const handle = (actions: PreauthAction[]): void => {
    for (const action of actions) {
      events.push(preauthEvent(action));
      if (action.type !== 'login' && action.type !== 'bearer-login') continue;
      const answer = answers[logins++] ?? 'hold';
      if (answer === 'hold') continue;
      if ('succeed' in answer) {
        const success = machine.loginSucceeded(null);
        events.push({ reply: success.reply });
        spliced = text(success.pipelined);
      } else {
        handle(machine.loginFailed(answer.refuse, answer.text));
      }
    }
  };

  handle(machine.greeting());
  for (const segment of script) {
    if (typeof segment === 'object' && 'tls' in segment) {
      handle(machine.tlsStarted());
      continue;
    }
    for (const piece of split(toBytes(segment))) {
      if (spliced !== null) spliced += text(piece);
      else handle(feedShared((c) => machine.receive(c), piece));
    }
  }
  if (spliced !== null) events.push({ spliced });
  return events;
}

function backendEvent(action: BackendAction): Event {
  switch (action.type) {
    case 'send':
      return { send: text(action.data) };
    case 'starttls':
      return { starttls: true };
    case 'done':
      return { done: { capabilities: action.capabilities } };
    case 'fail':
      return { fail: { refusal: action.refusal, detail: action.detail } };
  }
}

/** Runs a backend login script (the backend's bytes, with TLS markers); also returns the final state. */
export function runBackend(options: BackendLoginOptions, script: readonly Segment[], split: Splitter): { events: Event[]; state: string } {
  const machine = pop3Adapter.createBackendLogin(options);
  const events: Event[] = [];
  // After 'done' the session relays the backend's bytes to the client: the leftover first, then
  // whatever arrives later. Only their sum is independent of how the input was cut.
  let relayed = null as string | null;
  const handle = (actions: BackendAction[]): void => {
    for (const action of actions) {
      events.push(backendEvent(action));
      if (action.type === 'done') relayed = text(action.leftover);
    }
  };
  for (const segment of script) {
    if (typeof segment === 'object' && 'tls' in segment) {
      handle(machine.tlsStarted());
      continue;
    }
    for (const piece of split(toBytes(segment))) {
      if (relayed !== null) relayed += text(piece);
      else handle(feedShared((c) => machine.receive(c), piece));
    }
  }
  if (relayed !== null && relayed !== '') events.push({ relayed });
  return { events, state: machine.state };
}

/** Every way of cutting the script's byte segments that the tests use: whole, each cut point, one byte at a time. */
export function splitters(script: readonly Segment[]): Array<[string, Splitter]> {
  const longest = Math.max(0, ...script.map((s) => (typeof s === 'object' && 'tls' in s ? 0 : toBytes(s).length)));
  const result: Array<[string, Splitter]> = [['bytewise', bytewise]];
  // Every cut point for ordinary scripts; for the huge inputs of limit tests, the cut points
  // near each end and near the limits, plus an even sample, keep the run time in seconds.
  const cuts = new Set<number>();
  if (longest <= 2000) {
    for (let k = 1; k < longest; k++) cuts.add(k);
  } else {
    const step = Math.ceil(longest / 100);
    for (let k = 1; k < longest; k += step) cuts.add(k);
    for (const around of [0, longest, ...nearLimits]) {
      for (let k = around - 40; k <= around + 40; k++) if (k > 0 && k < longest) cuts.add(k);
    }
  }
  for (const k of [...cuts].sort((x, y) => x - y)) result.push([`split at ${k}`, splitAt(k)]);
  return result;
}

/** Runs a pre-auth script whole, then cut every way, and asserts identical events; returns the whole run. */
export function preauthEverySplit(options: PreauthOptions, script: readonly Segment[], answers: readonly LoginAnswer[] = []): Event[] {
  const expected = runPreauth(options, script, whole, answers);
  for (const [name, split] of splitters(script)) {
    assert.deepEqual(runPreauth(options, script, split, answers), expected, `input fed ${name}`);
  }
  return expected;
}

/** The same for a backend login script; also checks that the final state does not depend on the split. */
export function backendEverySplit(options: BackendLoginOptions, script: readonly Segment[]): { events: Event[]; state: string } {
  const expected = runBackend(options, script, whole);
  for (const [name, split] of splitters(script)) {
    assert.deepEqual(runBackend(options, script, split), expected, `input fed ${name}`);
  }
  return expected;
}

/** The sends of a run joined, for reading a whole exchange at once. */
export function sent(events: readonly Event[]): string {
  return events.map((e) => ('send' in e ? e.send : '')).join('');
}
