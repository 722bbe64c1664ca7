/**
 * Slot health checks: every slot of the store map is probed periodically (connect and read the
 * greeting, and do STARTTLS where the slot's logins do; with a probe account, log in). Results are kept for status and metrics. It
 * never changes routing: promoting a replica stays the operator's decision.
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

/** Probes one slot; resolves when healthy, rejects with the reason otherwise. */
export type SlotProbe = (slot: Slot, signal: Cancellation) => Promise<void>;

/** Probes every slot of the current store map on an interval. */
export class SlotHealthMonitor {
  private readonly results = new Map<string, SlotHealth>();
  private timer: NodeJS.Timeout | undefined;
  /**
   * Told by stop(). A Canceller, as each probe's own: probes run at once, one per slot, each
   * listening to it (an AbortSignal warns past ten listeners).
   */
  private readonly stopped = new Canceller();
  private running = false;
  /** The current probe loop; a loop whose number is no longer this one stops. */
  private loop = 0;

  constructor(
    private readonly storeMap: () => StoreMap | null,
    private readonly probe: SlotProbe,
    private intervalMs: number,
    private timeoutMs: number,
    private readonly log: Logger,
    private readonly onResult: (slot: Slot, health: SlotHealth) => void = () => undefined,
  ) {}

  /** Starts probing (an interval of 0 disables it). */
  start(): void {
    if (this.intervalMs === 0 || this.running || this.stopped.aborted) return;
    this.running = true;
    // A round still in flight from an earlier loop (before setTiming) must not schedule another.
    const loop = ++this.loop;
    const tick = async (): Promise<void> => {
      await this.probeAll();
      if (this.running && loop === this.loop) this.timer = setTimeout(() => void tick(), this.intervalMs);
    };
    void tick();
  }

  /** New timings (a reload): the next round uses them; an interval of 0 stops probing, another starts it. */
  setTiming(intervalMs: number, timeoutMs: number): void {
    this.timeoutMs = timeoutMs;
    if (intervalMs === this.intervalMs) return;
    this.intervalMs = intervalMs;
    this.running = false;
    this.loop++;
    clearTimeout(this.timer);
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

  /** Probes every slot once, in parallel. */
  async probeAll(): Promise<void> {
    const map = this.storeMap();
    if (map === null) return;
    const slots = [...map.stores.values()].flatMap((s) => [...s.slots.values()]);
    for (const name of this.results.keys()) if (!slots.some((s) => s.name === name)) this.results.delete(name);
    await Promise.all(slots.map((slot) => this.probeOne(slot)));
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
    // (reported, it would bring back a metric series for a slot that no longer exists).
    if (this.storeMap()?.stores.get(slot.store)?.slots.has(slot.name) !== true) return;
    this.results.set(slot.name, health);
    if (before === undefined || before.up !== health.up) {
      const fields = { event: 'slot.health', store: slot.store, slot: slot.name, up: health.up, err: health.error };
      if (health.up) this.log.info(fields, 'slot is up');
      else this.log.warn(fields, 'slot is down');
    }
    this.onResult(slot, health);
  }
}
