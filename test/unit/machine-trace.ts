/**
 * What the protocol test kits share for turning a sans-I/O machine's actions into a trace of
 * strings: the TLS marker between input phases, merging consecutive sends, and driving a backend
 * login machine over a transcript. Each kit decides how bytes are read and printed.
 */
import type { BackendAction, BackendLoginMachine } from '../../src/protocol/types.js';
import { feedShared } from './feed.js';

/** Marks the TLS handshake between two input phases. */
export const TLS = Symbol('tls');
export type Phase = string | Uint8Array | typeof TLS;

/** Turns one input phase into chunks. */
export type Chunker = (bytes: Uint8Array) => Uint8Array[];

/** Joins consecutive 'send …' entries into one, so that how output was split does not matter. */
export function mergeSends(trace: readonly string[]): string[] {
  const out: string[] = [];
  for (const entry of trace) {
    const last = out[out.length - 1];
    if (entry.startsWith('send ') && last?.startsWith('send ')) out[out.length - 1] = last + entry.slice(5);
    else out.push(entry);
  }
  return out;
}

/**
 * Runs a backend login machine over the backend's side of a transcript. The trace (not merged)
 * holds what mailfront sent (`decode`d), 'starttls', 'tls-started in <state>', 'done' with the
 * capabilities, 'fail' (then 'alert <text>' for each [ALERT] text it carries), and last 'state <state>'. `relayed` is what the session would pass to
 * the client after 'done' (the leftover and every chunk received later), or null if never done.
 */
export function driveBackend(
  machine: BackendLoginMachine,
  phases: readonly Phase[],
  pieces: (phase: string | Uint8Array) => Uint8Array[],
  decode: (data: Uint8Array) => string,
): { trace: string[]; relayed: Uint8Array | null } {
  const trace: string[] = [];
  let relayed = null as Uint8Array[] | null;
  let failed = false;
  const record = (actions: BackendAction[]): void => {
    for (const action of actions) {
      switch (action.type) {
        case 'send':
          trace.push(`send ${decode(action.data)}`);
          break;
        case 'starttls':
          trace.push('starttls');
          break;
        case 'done':
          trace.push(`done ${action.capabilities}`);
          relayed = [action.leftover];
          break;
        case 'fail':
          failed = true;
          trace.push(`fail ${action.refusal} ${action.detail}`);
          for (const alert of action.alerts ?? []) trace.push(`alert ${alert}`);
          break;
      }
    }
  };
  for (const phase of phases) {
    if (phase === TLS) {
      trace.push(`tls-started in ${machine.state}`);
      record(machine.tlsStarted());
      continue;
    }
    for (const piece of pieces(phase)) {
      if (relayed !== null) relayed.push(piece);
      else if (!failed) record(feedShared((c) => machine.receive(c), piece));
    }
  }
  trace.push(`state ${machine.state}`);
  return { trace, relayed: relayed === null ? null : Buffer.concat(relayed) };
}
