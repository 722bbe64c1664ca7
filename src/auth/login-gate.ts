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
 *
 * Per client address the same holds for a burst as many users (password spraying, which
 * failures_per_address bounds): an address gets as many checks at a time as it has failures left
 * before its limit, at least one (see checkAddress).
 */
import { MailfrontError } from '../errors.js';
import type { Cancellation } from '../cancel.js';
import { addressKey } from '../net/cidr.js';

/** Checks of one user at a time: enough for a client's parallel connections to go through together. */
export const LOGIN_GATE_WIDTH = 4;

interface Turns {
  running: number;
  readonly waiting: Array<() => void>;
}

/** Frees the turn taken; calling it again does nothing. */
export type LeaveGate = () => void;

/**
 * Frees an address's turn; `failureCounted` false says the login counted no failure for the
 * address (a success), so that checks under way need not ask the throttle again for it.
 * Calling it again does nothing.
 */
export type LeaveAddressGate = (failureCounted?: boolean) => void;

/** What an address's turns need of the throttle's answer to a check. */
export interface AddressBudget {
  readonly refused: boolean;
  /**
   * Failures the address may still have counted before its logins are refused (0 or less once
   * its limit is reached); absent when its failures are not counted (a trusted network, the
   * throttle off).
   */
  readonly addressLeft?: number;
}

interface AddressTurns {
  readonly key: string;
  running: number;
  /** Checks of the address under way (asking the throttle or waiting): the entry outlives none of them. */
  checking: number;
  /** Turns of the address left so far by a login that may have counted a failure: a check that began before one was left may not have seen it. */
  failures: number;
  /** Checks waiting for a turn to be left, woken one at a time in order. */
  readonly waiting: Array<() => void>;
}

/** A check of an address's budget under way (beginAddressCheck): `failures` is the mark to pass to tryAddressTurn. */
export interface AddressCheck {
  readonly failures: number;
}

/** What take() found when it found no turn: no room ('wait' for a turn to be left), or 'ask' the throttle again. */
type NoTurn = 'wait' | 'ask';

const cancelledWhileWaiting = (): MailfrontError => new MailfrontError('ABORTED', 'aborted', 'the login was cancelled while it waited for its turn');

export class LoginGate {
  private readonly turns = new Map<string, Turns>();
  private readonly addressTurns = new Map<string, AddressTurns>();

  constructor(private readonly width: number = LOGIN_GATE_WIDTH) {}

  /** Users and addresses with a check running or waiting (both drop to 0 when every turn is left). */
  get size(): number {
    return this.turns.size + this.addressTurns.size;
  }

  /**
   * Begins a check of the budget of `address` (the throttle's answer to come): its turns left
   * meanwhile are counted until tryAddressTurn(), which must follow (the throttle's check never
   * rejects). Read `failures` now, as the mark to pass to it.
   */
  beginAddressCheck(address: string): AddressCheck {
    const turns = this.addressEntry(addressKey(address));
    turns.checking++;
    return turns;
  }

  /**
   * Ends the check begun with beginAddressCheck(), given the throttle's answer (`addressLeft`):
   * one of the address's turns now, or what to do instead: 'wait' for a turn to be left (no room
   * now), or 'ask' the throttle again (a turn left since the mark may have counted a failure the
   * answer did not see). Then checkAddress() does. A login's usual way, without another promise.
   */
  tryAddressTurn(check: AddressCheck, addressLeft: number, mark: number): LeaveAddressGate | NoTurn {
    const turns = check as AddressTurns;
    turns.checking--;
    const taken = this.take(turns, addressLeft, mark, false);
    if (typeof taken !== 'function') this.dropIfIdle(turns);
    return taken;
  }

  /** Ends a check begun with beginAddressCheck() that takes no turn (the throttle refused, or does not count the address). */
  endAddressCheck(check: AddressCheck): undefined {
    const turns = check as AddressTurns;
    turns.checking--;
    this.dropIfIdle(turns);
    return undefined;
  }

  /**
   * Asks the throttle (`check`) about a login from `address` and, unless it refuses or does not
   * count the address, takes one of the address's turns, to be left once the login's outcome is
   * counted. At most as many checks of the address run at a time as it has failures left before
   * its limit (at least one): a login over that waits for a turn to be left (in arrival order;
   * rejects ABORTED when `cancellation` fires first) and asks the throttle again, which has
   * counted that turn's failure. A check during which turns of the address that may have counted
   * a failure were left is asked again too when, counting each as a failure it did not see, the
   * address would have no room: one of them may have started a refusal. So a burst from one
   * address, each login as another user, gets at most the limit's wrong passwords to the
   * directory before the address is refused, and one at a time once a refusal has run out while
   * its failures are remembered; an address without failures (a NAT's users) has as many checks
   * at a time as its limit. `waitFirst`: tryAddressTurn() found no room; wait before asking.
   */
  async checkAddress<V extends AddressBudget>(address: string, check: () => Promise<V>, cancellation: Cancellation, waitFirst = false): Promise<{ readonly verdict: V; readonly leave?: LeaveAddressGate }> {
    const turns = this.addressEntry(addressKey(address));
    turns.checking++;
    // Woken by a turn left: unless this check takes a turn, the next waiter is woken in its place.
    let woken = false;
    let wait = waitFirst;
    try {
      for (;;) {
        if (wait) {
          // A waiter woken in turn that still finds no room waits first in line again.
          const first = woken;
          woken = false;
          await waitForTurn(turns.waiting, cancellation, first);
          woken = true;
        }
        if (cancellation.aborted) throw cancelledWhileWaiting();
        const mark = turns.failures;
        const verdict = await check();
        if (verdict.refused || verdict.addressLeft === undefined) return { verdict };
        const taken = this.take(turns, verdict.addressLeft, mark, woken);
        if (typeof taken === 'function') {
          woken = false;
          return { verdict, leave: taken };
        }
        // Asked again only for this address's own failures, each of which brings it nearer its limit.
        wait = taken === 'wait';
      }
    } finally {
      turns.checking--;
      if (woken) turns.waiting.shift()?.();
      this.dropIfIdle(turns);
    }
  }

  /** The entry of the address `key`, made when there is none. */
  private addressEntry(key: string): AddressTurns {
    let turns = this.addressTurns.get(key);
    if (turns === undefined) this.addressTurns.set(key, (turns = { key, running: 0, checking: 0, failures: 0, waiting: [] }));
    return turns;
  }

  /** Forgets the entry once no turn of it runs and no check of it is under way. */
  private dropIfIdle(turns: AddressTurns): void {
    if (turns.running === 0 && turns.checking === 0 && turns.waiting.length === 0 && this.addressTurns.get(turns.key) === turns) this.addressTurns.delete(turns.key);
  }

  /**
   * A turn of the address if it has room: as many turns at a time as it has failures left (at
   * least one), those of its turns left since `mark` by logins that may have counted a failure
   * taken as failures the throttle did not see. Behind the ones waiting already, unless `woken`.
   */
  private take(turns: AddressTurns, addressLeft: number, mark: number, woken: boolean): LeaveAddressGate | NoTurn {
    const unseen = turns.failures - mark;
    const budget = addressLeft - unseen;
    // The real count may leave room where the guess leaves none, or may have started a refusal.
    if (unseen > 0 && (budget <= 0 || turns.running >= budget)) return 'ask';
    const width = Math.max(1, budget);
    if (turns.running >= width || (turns.waiting.length > 0 && !woken)) return 'wait';
    turns.running++;
    if (turns.running < width) turns.waiting.shift()?.();
    return this.addressLeaver(turns);
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
    if (cancellation.aborted) return Promise.reject(cancelledWhileWaiting());
    const turns = this.turns.get(key)!;
    return new Promise<LeaveGate>((resolve, reject) => {
      const admit = (): void => {
        cancellation.removeEventListener('abort', abandon);
        resolve(this.leaver(key));
      };
      const abandon = (): void => {
        const at = turns.waiting.indexOf(admit);
        if (at >= 0) turns.waiting.splice(at, 1);
        reject(cancelledWhileWaiting());
      };
      turns.waiting.push(admit);
      cancellation.addEventListener('abort', abandon, { once: true });
    });
  }

  private addressLeaver(turns: AddressTurns): LeaveAddressGate {
    let left = false;
    return (failureCounted = true) => {
      if (left) return;
      left = true;
      turns.running--;
      if (failureCounted) turns.failures++;
      turns.waiting.shift()?.();
      this.dropIfIdle(turns);
    };
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

/** Resolves when woken through `waiting`; rejects (ABORTED) when `cancellation` fires first. */
function waitForTurn(waiting: Array<() => void>, cancellation: Cancellation, first: boolean): Promise<void> {
  if (cancellation.aborted) return Promise.reject(cancelledWhileWaiting());
  return new Promise<void>((resolve, reject) => {
    const wake = (): void => {
      cancellation.removeEventListener('abort', abandon);
      resolve();
    };
    const abandon = (): void => {
      const at = waiting.indexOf(wake);
      if (at >= 0) waiting.splice(at, 1);
      reject(cancelledWhileWaiting());
    };
    if (first) waiting.unshift(wake);
    else waiting.push(wake);
    cancellation.addEventListener('abort', abandon, { once: true });
  });
}
