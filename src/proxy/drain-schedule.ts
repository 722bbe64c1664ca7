/**
 * DrainSchedule: sessions to close each at its own moment (a failover's or maintenance's drain,
 * the end of a stop), with one timer for the earliest and at most CLOSE_BATCH_SESSIONS closed per
 * turn of the event loop. It decides when, not how: the caller's `close` does the closing (and any
 * check made at that moment). It holds no socket and knows nothing of sessions but their identity.
 */
import { CLOSE_BATCH_SESSIONS } from '../limits.js';

/** One session's moment: `at` on the monotonic clock; `order` keeps those of one moment in the order they came. */
interface Due<T> {
  readonly at: number;
  readonly order: number;
  readonly item: T;
}

/** Sessions (or anything with an identity) closed each at its moment, a bounded batch per turn. */
export class DrainSchedule<T> {
  /** The moment of each session pending: the one entry of the heap that counts for it. */
  private readonly pending = new Map<T, Due<T>>();
  /** A binary min-heap by (at, order). Entries no longer in `pending` (deleted, cleared) are skipped when met. */
  private heap: Array<Due<T>> = [];
  private added = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private immediate: NodeJS.Immediate | undefined;
  /** True while a batch runs: what `close` adds meanwhile is seen by that batch's end, not by a timer of its own. */
  private running = false;
  private idleWaiters: Array<() => void> = [];

  /** `close` is called once per session at its moment, unless it was deleted or cleared before. */
  constructor(
    private readonly close: (item: T) => void,
    private readonly batch = CLOSE_BATCH_SESSIONS,
  ) {}

  /** Sessions pending. */
  get size(): number {
    return this.pending.size;
  }

  /** Whether `item` is pending. */
  has(item: T): boolean {
    return this.pending.has(item);
  }

  /** Closes `item` `delayMs` from now (a session pending already is given the new moment). */
  add(item: T, delayMs: number): void {
    const due: Due<T> = { at: performance.now() + delayMs, order: this.added++, item };
    this.pending.set(item, due);
    this.push(due);
    this.schedule();
  }

  /** Forgets `item`: it will not be closed. Returns whether it was pending. */
  delete(item: T): boolean {
    const had = this.pending.delete(item);
    if (this.pending.size === 0) this.reset();
    return had;
  }

  /** Forgets every session pending. */
  clear(): void {
    this.pending.clear();
    this.reset();
  }

  /** Resolves once no session is pending (closed, deleted or cleared). */
  idle(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private reset(): void {
    this.heap = [];
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
    if (this.immediate !== undefined) clearImmediate(this.immediate);
    this.immediate = undefined;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  /** Sets the timer for the earliest moment, unless a batch runs or is queued (its end does). */
  private schedule(): void {
    if (this.running || this.immediate !== undefined) return;
    const next = this.peek();
    if (next === undefined) return;
    if (this.timer !== undefined && this.timerAt <= next.at) return;
    clearTimeout(this.timer);
    this.timerAt = next.at;
    this.timer = setTimeout(() => this.run(), Math.max(0, next.at - performance.now()));
  }

  /** Closes the sessions due, a batch at most; then a turn of the loop if more are due, else the timer for the next. */
  private run(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    this.immediate = undefined;
    this.running = true;
    // A timer fires on the loop's clock, which can run up to a millisecond behind performance.now()
    // at the time it was set: what is due within that millisecond is due now.
    const now = performance.now() + 1;
    try {
      for (let closed = 0; closed < this.batch; closed++) {
        const next = this.peek();
        if (next === undefined || next.at > now) break;
        this.pop();
        this.pending.delete(next.item);
        this.close(next.item);
      }
    } finally {
      this.running = false;
      const next = this.peek();
      if (next === undefined) this.reset();
      else if (next.at <= performance.now() + 1) this.immediate = setImmediate(() => this.run());
      else this.schedule();
    }
  }

  /** The earliest entry still pending, dropping the stale ones on top. */
  private peek(): Due<T> | undefined {
    for (;;) {
      const top = this.heap[0];
      if (top === undefined || this.pending.get(top.item) === top) return top;
      this.pop();
    }
  }

  private push(due: Due<T>): void {
    const heap = this.heap;
    let i = heap.push(due) - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const above = heap[parent]!;
      if (!before(due, above)) break;
      heap[i] = above;
      i = parent;
    }
    heap[i] = due;
  }

  private pop(): void {
    const heap = this.heap;
    const last = heap.pop();
    if (last === undefined || heap.length === 0) return;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child = right < heap.length && before(heap[right]!, heap[left]!) ? right : left;
      if (!before(heap[child]!, last)) break;
      heap[i] = heap[child]!;
      i = child;
    }
    heap[i] = last;
  }
}

function before<T>(a: Due<T>, b: Due<T>): boolean {
  return a.at < b.at || (a.at === b.at && a.order < b.order);
}
