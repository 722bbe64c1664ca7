/**
 * Cancelling a login in progress. The directory lookup, the backend connect and the backend
 * login all stop when the session that asked for them ends; they need to know whether it has,
 * and to hear when it does. An AbortSignal does that, and so does a Canceller, which a session
 * makes for each login: node's AbortController and its EventTarget listeners cost about 30 µs
 * per login (`perf` at warm-cache login rates; 11 µs in a tight loop), a Canceller about 1 µs.
 */
import { MailfrontError } from './errors.js';

/** The part of an AbortSignal that cancellable work uses. Every AbortSignal is one. */
export interface Cancellation {
  readonly aborted: boolean;
  /** Calls `listener` once, when the owner gives up; never if it already has (check `aborted` first). */
  addEventListener(type: 'abort', listener: () => void, options?: { readonly once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** A cancellation that never fires: for work that must go on to its end, whoever stops waiting for it. */
export const NEVER_CANCELLED: Cancellation = { aborted: false, addEventListener: () => undefined, removeEventListener: () => undefined };

/** The owner's side: `abort()` tells every listener once. */
export class Canceller implements Cancellation {
  private listeners: Array<() => void> = [];
  private done = false;

  get aborted(): boolean {
    return this.done;
  }

  /** Every listener is told at most once, so `once` changes nothing. */
  addEventListener(_type: 'abort', listener: () => void, _options?: { readonly once?: boolean }): void {
    if (!this.done) this.listeners.push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const at = this.listeners.indexOf(listener);
    if (at >= 0) this.listeners.splice(at, 1);
  }

  abort(): void {
    if (this.done) return;
    this.done = true;
    const listeners = this.listeners;
    this.listeners = [];
    for (const listener of listeners) listener();
  }
}

/**
 * `work`, or a rejection (an `aborted` MailfrontError saying `message`) as soon as `signal`
 * fires: the caller stops waiting, the work goes on for whoever else awaits it.
 */
export function untilCancelled<T>(work: Promise<T>, signal: Cancellation, message: string): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined);
    return Promise.reject(new MailfrontError('ABORTED', 'aborted', message));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new MailfrontError('ABORTED', 'aborted', message));
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

