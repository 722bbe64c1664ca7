/**
 * At most a few password checks of one user at a time in this process. The throttle counts a
 * failure once the directory has answered; every login that passed the throttle before that goes
 * to the directory too, so a burst of parallel wrong passwords for one user would all be checked
 * before the first failure counted (a hundred connections, a hundred guesses). Behind the gate a
 * login waits its turn and asks the throttle only then, when the failures before it are counted:
 * a burst gets at most the throttle's limit plus the gate's width through.
 *
 * A legitimate burst (a webmail or a phone opening several connections at once) waits a password
 * check or two; most of them are answered by the authentication cache. Per process: a fleet's
 * instances each have their own gate. Owns nothing but the counts; a key is kept only while a
 * check of it runs or waits.
 */
import { MailfrontError } from '../errors.js';
import type { Cancellation } from '../cancel.js';

/** Checks of one user at a time: enough for a client's parallel connections to go through together. */
export const LOGIN_GATE_WIDTH = 4;

interface Turns {
  running: number;
  readonly waiting: Array<() => void>;
}

/** Frees the turn taken; calling it again does nothing. */
export type LeaveGate = () => void;

export class LoginGate {
  private readonly turns = new Map<string, Turns>();

  constructor(private readonly width: number = LOGIN_GATE_WIDTH) {}

  /** Keys with a check running or waiting (both drop to 0 when every turn is left). */
  get size(): number {
    return this.turns.size;
  }

  /** A turn for `key` now, or null when `width` checks of it are running. */
  tryEnter(key: string): LeaveGate | null {
    const turns = this.turns.get(key);
    if (turns === undefined) {
      this.turns.set(key, { running: 1, waiting: [] });
      return this.leaver(key);
    }
    if (turns.running >= this.width) return null;
    turns.running++;
    return this.leaver(key);
  }

  /** Waits for a turn for `key`, in arrival order; rejects (ABORTED) when `cancellation` fires first. */
  enter(key: string, cancellation: Cancellation): Promise<LeaveGate> {
    const now = this.tryEnter(key);
    if (now !== null) return Promise.resolve(now);
    if (cancellation.aborted) return Promise.reject(new MailfrontError('ABORTED', 'aborted', 'the login was cancelled while it waited for its turn'));
    const turns = this.turns.get(key)!;
    return new Promise<LeaveGate>((resolve, reject) => {
      const admit = (): void => {
        cancellation.removeEventListener('abort', abandon);
        resolve(this.leaver(key));
      };
      const abandon = (): void => {
        const at = turns.waiting.indexOf(admit);
        if (at >= 0) turns.waiting.splice(at, 1);
        reject(new MailfrontError('ABORTED', 'aborted', 'the login was cancelled while it waited for its turn'));
      };
      turns.waiting.push(admit);
      cancellation.addEventListener('abort', abandon, { once: true });
    });
  }

  private leaver(key: string): LeaveGate {
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const turns = this.turns.get(key)!;
      const next = turns.waiting.shift();
      // The turn passes straight to the next in line: `running` stays.
      if (next !== undefined) return next();
      turns.running--;
      if (turns.running === 0) this.turns.delete(key);
    };
  }
}
