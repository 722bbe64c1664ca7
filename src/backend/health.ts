/**
 * Slot health checks: every slot of the store map is probed periodically (connect and read the
 * greeting, and do STARTTLS where the slot's logins do; with a probe account, log in). Results are kept for status and metrics. It
 * never changes routing: promoting a replica stays the operator's decision. A round's probes are
 * spread over the interval, and only so many are in flight at once. The slots of a store in
 * maintenance are not probed (the operator stopped them): each keeps its last result until then.
 * Probing turned off (an interval of 0) forgets every result: a result no probe will renew would
 * be shown, and alerted on, for ever.
 */
import { Canceller } from '../cancel.js';
import type { Cancellation } from '../cancel.js';
import { MailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Slot, StoreMap } from '../routing/storemap.js';

/** The last probe of one slot. */
export interface SlotHealth {
  readonly up: boolean;
  readonly checkedAt: number;
  readonly latencyMs: number;
  /** Why the last probe failed. */
  readonly error?: string;
  /** Consecutive failed probes. */
  readonly failures: number;
}

/**
 * Probes in flight at once, at most; each holds a connection, so a descriptor. Spread over the
 * interval, a round has few in flight (15,000 slots every 5 s answering within 1 ms: 3); many
 * only when slots answer slowly or not at all, each then held up to health.timeout_ms. Started
 * all at once, 1,500 slots froze the event loop up to 207 ms per round and 15,000 slots 2 s, and
 * at the open-files limit every probe over it failed (EMFILE). 256 keeps the descriptors a round
 * may add small beside a client's two (README: the open-files limit), and still lets a round in
 * which 500 slots hang for the default 3 s end within about 6 s.
 */
export const MAX_PROBES_IN_FLIGHT = 256;

/**
 * A round's probes due within the same 25 ms start together: one timer per batch, not per probe
 * (a timer each took 1.8 times the CPU of a round of 1,500 slots every 5 s: 60 ms a second, not
 * 34), while a batch stays short (15,000 slots every 5 s: 75 probes, a few milliseconds).
 */
const PROBE_BATCH_MS = 25;

/** Probes one slot; resolves when healthy, rejects with the reason otherwise. */
export type SlotProbe = (slot: Slot, signal: Cancellation) => Promise<void>;

/** Probes every slot of the current store map on an interval. */
export class SlotHealthMonitor {
  private readonly results = new Map<string, SlotHealth>();
  private timer: NodeJS.Timeout | undefined;
  /**
   * Told by stop(). A Canceller, as each probe's own: up to MAX_PROBES_IN_FLIGHT probes run at
   * once, each listening to it (an AbortSignal warns past ten listeners).
   */
  private readonly stopped = new Canceller();
  private running = false;
  /** The current probe loop; a loop whose number is no longer this one stops. */
  private loop = 0;
  /** Times the results were forgotten (probing turned off): a probe begun before does not report. */
  private cleared = 0;

  constructor(
    private readonly storeMap: () => StoreMap | null,
    private readonly probe: SlotProbe,
    private intervalMs: number,
    private timeoutMs: number,
    private readonly log: Logger,
    private readonly onResult: (slot: Slot, health: SlotHealth) => void = () => undefined,
    /** Every result was forgotten (probing turned off). */
    private readonly onCleared: () => void = () => undefined,
  ) {}

  /**
   * Starts probing (an interval of 0 disables it): a round every interval, its probes spread over
   * it (the first round's too: at start-up, slot i of n is first probed i/n of an interval in). A
   * round that cannot keep that pace (slots that do not answer, with MAX_PROBES_IN_FLIGHT held)
   * is followed by the next as soon as it ends.
   */
  start(): void {
    if (this.intervalMs === 0 || this.running || this.stopped.aborted) return;
    this.running = true;
    // A round still in flight from an earlier loop (before setTiming) must not schedule another,
    // nor start more of its probes.
    const loop = ++this.loop;
    const current = (): boolean => this.running && loop === this.loop;
    const tick = async (): Promise<void> => {
      const began = performance.now();
      await this.probeAll(this.intervalMs, current);
      if (current()) this.timer = setTimeout(() => void tick(), Math.max(0, began + this.intervalMs - performance.now()));
    };
    void tick();
  }

  /**
   * New timings (a reload): the next round uses them; an interval of 0 stops probing and forgets
   * every result (kept, a slot's last result would stand for good: `mailfront_slot_up` 0 paging
   * long after the slot came back), another starts it.
   */
  setTiming(intervalMs: number, timeoutMs: number): void {
    this.timeoutMs = timeoutMs;
    if (intervalMs === this.intervalMs) return;
    this.intervalMs = intervalMs;
    this.running = false;
    this.loop++;
    clearTimeout(this.timer);
    if (intervalMs === 0) {
      this.cleared++;
      this.results.clear();
      this.onCleared();
    }
    this.start();
  }

  stop(): void {
    this.running = false;
    this.loop++;
    clearTimeout(this.timer);
    this.stopped.abort();
  }

  /** The last result for `slot`, if probed. */
  get(slot: string): SlotHealth | undefined {
    return this.results.get(slot);
  }

  /**
   * Probes every slot once, slot i of n started i/n of `spreadMs` in (0: each as soon as it may;
   * in batches, PROBE_BATCH_MS), at most MAX_PROBES_IN_FLIGHT at once. Starts no more once
   * `current` says the round is no longer wanted (stop(), new timings).
   */
  async probeAll(spreadMs = 0, current: () => boolean = () => !this.stopped.aborted): Promise<void> {
    const map = this.storeMap();
    if (map === null) return;
    // Every slot's name, to prune the results of slots that left the map; those of a store in
    // maintenance stay (its result from before, for the first probe after to compare with).
    const names = new Set([...map.stores.values()].flatMap((s) => [...s.slots.keys()]));
    const slots = [...map.stores.values()].flatMap((s) => (typeof s.maintenance === 'string' ? [] : [...s.slots.values()]));
    for (const name of this.results.keys()) if (!names.has(name)) this.results.delete(name);
    const began = performance.now();
    let inFlight = 0;
    /** Wakes the round waiting for a probe to end (at MAX_PROBES_IN_FLIGHT). */
    let freed: (() => void) | undefined;
    let done: (() => void) | undefined;
    /** The first probe that threw (its report did), thrown once the round is over. */
    let failure: { readonly error: unknown } | undefined;
    for (const [i, planned] of slots.entries()) {
      const due = Math.floor((spreadMs * i) / slots.length / PROBE_BATCH_MS) * PROBE_BATCH_MS;
      const wait = began + due - performance.now();
      if (wait >= 1) await this.pause(wait);
      while (inFlight >= MAX_PROBES_IN_FLIGHT) await new Promise<void>((resolve) => (freed = resolve));
      if (!current()) break;
      // The slot as the map in force has it now: one a reload dropped since the round began is
      // not probed, one it pointed elsewhere is probed there, and one whose store went into
      // maintenance is not probed.
      const store = this.storeMap()?.stores.get(planned.store);
      const slot = typeof store?.maintenance === 'string' ? undefined : store?.slots.get(planned.name);
      if (slot === undefined) continue;
      inFlight++;
      void this.probeOne(slot)
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => {
          inFlight--;
          freed?.();
          freed = undefined;
          if (inFlight === 0) done?.();
        });
    }
    if (inFlight > 0) await new Promise<void>((resolve) => (done = resolve));
    if (failure !== undefined) throw failure.error;
  }

  /** Resolves after `ms`, or at once when stop() is called meanwhile. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopped.aborted) return resolve();
      const wake = (): void => {
        clearTimeout(timer);
        this.stopped.removeEventListener('abort', wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.stopped.addEventListener('abort', wake);
    });
  }

  private async probeOne(slot: Slot): Promise<void> {
    // Latency on the monotonic clock (a step of the wall clock made it negative or an hour); checkedAt is a time of day.
    const started = performance.now();
    // The probe's own canceller, told by stop() and by the deadline. Not AbortSignal.any() over a
    // signal of the monitor's: on Node 20 the long-lived signal keeps a record of every signal
    // combined from it, about 70 bytes per probe for the life of the process.
    const cancel = new Canceller();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      cancel.abort();
    }, this.timeoutMs);
    const onStop = (): void => cancel.abort();
    this.stopped.addEventListener('abort', onStop);
    const before = this.results.get(slot.name);
    const cleared = this.cleared;
    let health: SlotHealth;
    try {
      await this.probe(slot, cancel);
      health = { up: true, checkedAt: Date.now(), latencyMs: Math.round(performance.now() - started), failures: 0 };
    } catch (error) {
      if (this.stopped.aborted) return;
      // mailfront could not open the probe's connection (its open-files limit, no local port):
      // that says nothing of the slot, whose last result stands.
      if (error instanceof MailfrontError && error.kind === 'local-resources') return;
      const why = error instanceof Error ? error.message : String(error);
      health = { up: false, checkedAt: Date.now(), latencyMs: Math.round(performance.now() - started), error: timedOut ? `no answer within ${this.timeoutMs} ms (${why})` : why, failures: (before?.failures ?? 0) + 1 };
    } finally {
      clearTimeout(timer);
      this.stopped.removeEventListener('abort', onStop);
    }
    // A map loaded while the probe ran may have dropped the slot: its result is nobody's now
    // (reported, it would bring back a metric series for a slot that no longer exists). Or put
    // its store in maintenance: a slot stopped on purpose is no news ("slot is down"). Or turned
    // probing off: the results were forgotten, and this one would never be renewed.
    const store = this.storeMap()?.stores.get(slot.store);
    if (store?.slots.has(slot.name) !== true || typeof store.maintenance === 'string' || cleared !== this.cleared) return;
    this.results.set(slot.name, health);
    if (before === undefined || before.up !== health.up) {
      const fields = { event: 'slot.health', store: slot.store, slot: slot.name, up: health.up, err: health.error };
      if (health.up) this.log.info(fields, 'slot is up');
      else this.log.warn(fields, 'slot is down');
    }
    this.onResult(slot, health);
  }
}
