/**
 * The registry of spliced sessions, indexed by store, slot and user, so that a failover can
 * close every session on a demoted master and an operator can find or kick sessions.
 * Holds handles only; it never touches sockets itself.
 */

import type { ProtocolName } from '../protocol/types.js';

/** What the registry knows about one spliced session. */
export interface SessionEntry {
  readonly id: string;
  readonly protocol: ProtocolName;
  readonly user: string;
  readonly store: string;
  readonly slot: string;
  readonly clientAddress: string;
  readonly startedAt: number;
  /** What the splice has relayed so far (its own counters, read when needed). */
  readonly traffic: { readonly bytesFromClient: number; readonly bytesToClient: number };
  /** Of that, what mailfront_proxied_bytes_total already holds (Metrics.splicedTraffic moves these on). */
  reportedFromClient: number;
  reportedToClient: number;
  /** Closes the session; `reason` is logged by the session itself. */
  close(reason: 'kicked' | 'drained' | 'shutdown'): void;
}

/**
 * How long a kick is remembered for the logins that were under way when it came: longer than a
 * login can last (the pre-auth deadline and the failover hold are at most 10 minutes each).
 */
const KICK_MEMORY_MS = 60 * 60 * 1000;

/** Spliced sessions by id, slot and user. */
export class SessionRegistry {
  private readonly byId = new Map<string, SessionEntry>();
  private readonly bySlot = new Map<string, Set<SessionEntry>>();
  private readonly byUser = new Map<string, Set<SessionEntry>>();
  /** When each user was last kicked (ms since the epoch); only kicked users are here. */
  private readonly kicks = new Map<string, number>();

  get size(): number {
    return this.byId.size;
  }

  add(entry: SessionEntry): void {
    this.byId.set(entry.id, entry);
    addTo(this.bySlot, entry.slot, entry);
    addTo(this.byUser, entry.user, entry);
  }

  remove(entry: SessionEntry): void {
    if (this.byId.get(entry.id) !== entry) return;
    this.byId.delete(entry.id);
    removeFrom(this.bySlot, entry.slot, entry);
    removeFrom(this.byUser, entry.user, entry);
  }

  /** Sessions spliced to `slot`. */
  onSlot(slot: string): SessionEntry[] {
    return [...(this.bySlot.get(slot) ?? [])];
  }

  /** Sessions of `user`. */
  ofUser(user: string): SessionEntry[] {
    return [...(this.byUser.get(user) ?? [])];
  }

  /** Every session. */
  all(): SessionEntry[] {
    return [...this.byId.values()];
  }

  /**
   * Records a kick of `user`. A login of the user that began before it and is still under way
   * (not yet in the registry: at the directory, or held while its master is down) must not be
   * spliced when it completes (kickedSince).
   */
  userKicked(user: string, at = Date.now()): void {
    for (const [name, when] of this.kicks) if (at - when > KICK_MEMORY_MS) this.kicks.delete(name);
    this.kicks.set(user, at);
  }

  /** True when `user` was kicked at or after `since` (ms since the epoch). */
  kickedSince(user: string, since: number): boolean {
    const at = this.kicks.get(user);
    return at !== undefined && at >= since;
  }

  /** Every session, without a copy (do not add or remove while iterating). */
  values(): IterableIterator<SessionEntry> {
    return this.byId.values();
  }
}

function addTo(index: Map<string, Set<SessionEntry>>, key: string, entry: SessionEntry): void {
  let set = index.get(key);
  if (set === undefined) index.set(key, (set = new Set()));
  set.add(entry);
}

function removeFrom(index: Map<string, Set<SessionEntry>>, key: string, entry: SessionEntry): void {
  const set = index.get(key);
  if (set === undefined) return;
  set.delete(entry);
  if (set.size === 0) index.delete(key);
}
