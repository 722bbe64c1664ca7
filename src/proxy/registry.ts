/**
 * The registry of spliced sessions, indexed by id, slot, user and directory entry (DN), so that a
 * failover can close every session on a demoted master and an operator can find or kick sessions.
 * A master login's session (a staff member in another user's mailbox) is indexed under both
 * users, and a kick of either stops it: the target's, whose mailbox it writes to, and the staff
 * member's, who is acting (a staff member off-boarded). Holds handles only; it never touches
 * sockets itself.
 */

import type { ProtocolName } from '../protocol/types.js';
import type { Slot } from '../routing/storemap.js';
import { LiveSet } from '../live-set.js';

/** What the registry knows about one spliced session. */
export interface SessionEntry {
  readonly id: string;
  readonly protocol: ProtocolName;
  readonly user: string;
  /** The user's directory entry (the same for every name the entry answers to). */
  readonly dn: string;
  /**
   * A master login: the staff member who logged in to `user`'s mailbox with their own password
   * (directory.master_user_filter), and the staff member's directory entry.
   */
  readonly master?: { readonly user: string; readonly dn: string };
  /** The registry's kicksSoFar when the session's login began: kicks with a higher number are for it. */
  readonly kicksAtLogin: number;
  readonly store: string;
  readonly slot: string;
  /** The slot as the session dialled it (host and ports): whether the store's master is still that server. */
  readonly server: Slot;
  readonly clientAddress: string;
  readonly startedAt: number;
  /** What the splice has relayed so far (its own counters, read when needed). */
  readonly traffic: { readonly bytesFromClient: number; readonly bytesToClient: number };
  /** Of that, what mailfront_proxied_bytes_total already holds (Metrics.splicedTraffic moves these on). */
  reportedFromClient: number;
  reportedToClient: number;
  /**
   * Closes the session; `reason` is logged by the session itself. `hold`: a kick because the
   * directory holds the user (directory.hold_attribute), the client told the hold's reason.
   */
  close(reason: 'kicked' | 'drained', hold?: string): void;
}

/**
 * A spliced session's entry as the session makes it: its splice (`traffic`) and its close are let
 * go when the session ends (letGo()). The registry's Maps and Sets may keep a reference to an entry
 * past its removal (V8 leaves a rehashed table's entries in the old table, which a young
 * collection takes as roots while that table is in the old generation; see LiveSet), and that
 * reference must not hold the session's sockets and buffers alive with it.
 */
export class SplicedSessionEntry implements SessionEntry {
  readonly id: string;
  readonly protocol: ProtocolName;
  readonly user: string;
  readonly dn: string;
  readonly master?: { readonly user: string; readonly dn: string };
  readonly kicksAtLogin: number;
  readonly store: string;
  readonly slot: string;
  readonly server: Slot;
  readonly clientAddress: string;
  readonly startedAt: number;
  reportedFromClient = 0;
  reportedToClient = 0;
  private splice: SessionEntry['traffic'];
  private closer: ((reason: 'kicked' | 'drained', hold?: string) => void) | undefined;

  constructor(
    fields: Omit<SessionEntry, 'traffic' | 'reportedFromClient' | 'reportedToClient' | 'close'>,
    splice: SessionEntry['traffic'],
    closer: (reason: 'kicked' | 'drained', hold?: string) => void,
  ) {
    this.id = fields.id;
    this.protocol = fields.protocol;
    this.user = fields.user;
    this.dn = fields.dn;
    if (fields.master !== undefined) this.master = fields.master;
    this.kicksAtLogin = fields.kicksAtLogin;
    this.store = fields.store;
    this.slot = fields.slot;
    this.server = fields.server;
    this.clientAddress = fields.clientAddress;
    this.startedAt = fields.startedAt;
    // The splice's counts start with the pipelined and leftover bytes: none reported yet.
    this.splice = splice;
    this.closer = closer;
  }

  get traffic(): SessionEntry['traffic'] {
    return this.splice;
  }

  close(reason: 'kicked' | 'drained', hold?: string): void {
    this.closer?.(reason, hold);
  }

  /** The session ended and its bytes are counted: keep the final counts, let the splice and the session go. */
  letGo(): void {
    this.splice = { bytesFromClient: this.splice.bytesFromClient, bytesToClient: this.splice.bytesToClient };
    this.closer = undefined;
  }
}

/**
 * A backend login under way (connecting or logging in to `slot`, or waiting to try again while
 * the master is down): cut short when its store's master moves off that slot, or when an
 * operator kicks its user.
 */
export interface BackendAttempt {
  readonly store: string;
  readonly slot: string;
  readonly protocol: ProtocolName;
  /** The user the login is for (the entry's own name) and the directory entry, as kickedSince() takes them. */
  readonly user: string;
  readonly dn: string;
  /** A master login: the staff member acting, whose kick stops it too. */
  readonly master?: { readonly user: string; readonly dn: string };
  /** The registry's kicksSoFar when the session's login began. */
  readonly kicksAtLogin: number;
  /** Cuts the attempt short: the master moved off its slot (masterMoved), or its user was kicked. Called once at most. */
  stop(why: 'moved' | 'kicked'): void;
  /** Its place in the registry's set of attempts under way (a LiveSet): -1 until it starts. */
  attemptPlace: number;
}

/**
 * How long a kick is remembered for the logins that were under way when it came: longer than a
 * login can last (the pre-auth deadline and the failover hold are at most 10 minutes each).
 */
const KICK_MEMORY_MS = 60 * 60 * 1000;

/** Spliced sessions by id, slot, user and directory entry. */
export class SessionRegistry {
  private readonly byId = new Map<string, SessionEntry>();
  private readonly bySlot = new Map<string, Set<SessionEntry>>();
  private readonly byUser = new Map<string, Set<SessionEntry>>();
  private readonly byDn = new Map<string, Set<SessionEntry>>();
  /** Kicks so far: a login reads it when it starts, and no step of the clock can fool the count. */
  private kickCount = 0;
  /**
   * The last kick of each user name (`u:` key) and directory entry (`d:` key): its number, when
   * (performance.now(), for pruning), and the hold's reason when the directory held the user.
   */
  private readonly kicks = new Map<string, Kick>();

  /** Backend logins under way (a few per login in flight; see attemptStarted). */
  private readonly attempts = new LiveSet<BackendAttempt>('attemptPlace');

  get size(): number {
    return this.byId.size;
  }

  add(entry: SessionEntry): void {
    this.byId.set(entry.id, entry);
    addTo(this.bySlot, entry.slot, entry);
    addTo(this.byUser, entry.user, entry);
    addTo(this.byDn, entry.dn, entry);
    if (entry.master !== undefined) {
      addTo(this.byUser, entry.master.user, entry);
      addTo(this.byDn, entry.master.dn, entry);
    }
  }

  remove(entry: SessionEntry): void {
    if (this.byId.get(entry.id) !== entry) return;
    this.byId.delete(entry.id);
    removeFrom(this.bySlot, entry.slot, entry);
    removeFrom(this.byUser, entry.user, entry);
    removeFrom(this.byDn, entry.dn, entry);
    if (entry.master !== undefined) {
      removeFrom(this.byUser, entry.master.user, entry);
      removeFrom(this.byDn, entry.master.dn, entry);
    }
  }

  /** Whether `entry` is still registered (its session has not ended). */
  holds(entry: SessionEntry): boolean {
    return this.byId.get(entry.id) === entry;
  }

  /** Sessions spliced to `slot`. */
  onSlot(slot: string): SessionEntry[] {
    return [...(this.bySlot.get(slot) ?? [])];
  }

  /** How many sessions are spliced to `slot` (onSlot's length, without the copy). */
  countOnSlot(slot: string): number {
    return this.bySlot.get(slot)?.size ?? 0;
  }

  /** Sessions of `user` (a master login's under its staff member's name too). */
  ofUser(user: string): SessionEntry[] {
    return [...(this.byUser.get(user) ?? [])];
  }

  /** Sessions of `user` and of every name of the directory entries `dns`, each once (a master login's under its staff member's name and entry too). */
  ofUserAndEntries(user: string, dns: Iterable<string>): SessionEntry[] {
    const found = new Set(this.byUser.get(user) ?? []);
    for (const dn of dns) for (const entry of this.byDn.get(dn) ?? []) found.add(entry);
    return [...found];
  }

  /** Every session. */
  all(): SessionEntry[] {
    return [...this.byId.values()];
  }

  /** The number of kicks so far; a login reads it when it starts (see kickedSince). */
  get kicksSoFar(): number {
    return this.kickCount;
  }

  /**
   * Records a kick of `user` and of the directory entries `dns`. A login of them that began
   * before it and is still under way (not yet in the registry: at the directory, or held while
   * its master is down) must not be spliced when it completes (kickedSince). `count`: a kick
   * recorded already, to which the directory's answer adds `hold` (else a new kick); `hold`: the
   * directory holds the user, and the logins stopped from then on are refused with its reason
   * (kickHold). Returns the kick's number, for entriesKicked().
   */
  userKicked(user: string, dns: Iterable<string> = [], options: { readonly count?: number; readonly hold?: string | undefined } = {}): number {
    const now = performance.now();
    for (const [key, kick] of this.kicks) if (now - kick.at > KICK_MEMORY_MS) this.kicks.delete(key);
    const kick: Kick = { count: options.count ?? ++this.kickCount, at: now, ...(options.hold !== undefined ? { hold: options.hold } : {}) };
    this.record(`u:${user}`, kick);
    for (const dn of dns) this.record(`d:${dn}`, kick);
    this.stopKickedAttempts();
    return kick.count;
  }

  /**
   * Adds directory entries to kick number `count` (found after it, by a directory lookup): the
   * logins of them that began before that kick, not the ones since. `hold`: as userKicked's.
   */
  entriesKicked(dns: Iterable<string>, count: number, hold?: string): void {
    const kick: Kick = { count, at: performance.now(), ...(hold !== undefined ? { hold } : {}) };
    for (const dn of dns) this.record(`d:${dn}`, kick);
    this.stopKickedAttempts();
  }

  /** Keeps `kick` for `key` unless a later kick is kept for it already. */
  private record(key: string, kick: Kick): void {
    // The same kick again (its number) may add the hold's reason the directory gave meanwhile.
    if ((this.kicks.get(key)?.count ?? 0) <= kick.count) this.kicks.set(key, kick);
  }

  /** The hold's reason of the last kick of `user` or the entry `dn` since `kicksAtStart`, when the directory held the user then. */
  kickHold(user: string, dn: string, kicksAtStart: number): string | undefined {
    const byUser = this.kicks.get(`u:${user}`);
    const byEntry = this.kicks.get(`d:${dn}`);
    const last = (byEntry?.count ?? 0) > (byUser?.count ?? 0) ? byEntry : byUser;
    return last !== undefined && last.count > kicksAtStart ? last.hold : undefined;
  }

  /**
   * The backend logins of a user just kicked stop at once: one held while its master is down
   * would otherwise wait out failover.hold_ms (or the pre-auth deadline) before the kick is seen.
   */
  private stopKickedAttempts(): void {
    this.stopAttempts((a) => this.kickedSince(a.user, a.dn, a.kicksAtLogin) || (a.master !== undefined && this.kickedSince(a.master.user, a.master.dn, a.kicksAtLogin)), 'kicked');
  }

  /** Stops the attempts `which` picks, each once (it leaves the set before it is told); returns how many. */
  private stopAttempts(which: (attempt: BackendAttempt) => boolean, why: 'moved' | 'kicked'): number {
    const stopped = [...this.attempts].filter(which);
    for (const a of stopped) {
      this.attempts.delete(a);
      a.stop(why);
    }
    return stopped.length;
  }

  /** True when `user` or the entry `dn` was kicked after a login read `kicksAtStart` (kicksSoFar) at its start. */
  kickedSince(user: string, dn: string, kicksAtStart: number): boolean {
    if (this.kickCount === kicksAtStart) return false;
    return (this.kicks.get(`u:${user}`)?.count ?? 0) > kicksAtStart || (this.kicks.get(`d:${dn}`)?.count ?? 0) > kicksAtStart;
  }

  /** A backend login begins: a failover off its slot (masterMoved) or a kick of its user before it ends stops it. */
  attemptStarted(attempt: BackendAttempt): void {
    this.attempts.add(attempt);
  }

  /** The backend login ended, whichever way. */
  attemptEnded(attempt: BackendAttempt): void {
    this.attempts.delete(attempt);
  }

  /**
   * `store`'s master moved off `slot` (for `protocols` only, when given: a port re-pointed): the
   * backend logins under way to it are told, so that they follow the failover at once instead of
   * waiting for a master that may never answer. Returns how many were told.
   */
  masterMoved(store: string, slot: string, protocols?: readonly ProtocolName[]): number {
    return this.stopAttempts((a) => movedOff(a, store, slot, protocols), 'moved');
  }

  /** Sessions spliced to `store`'s master that moved off `slot` (for `protocols` only, when given): the ones a failover drains. */
  splicedToMoved(store: string, slot: string, protocols?: readonly ProtocolName[]): SessionEntry[] {
    return [...(this.bySlot.get(slot) ?? [])].filter((entry) => movedOff(entry, store, slot, protocols));
  }

  /** Every session, without a copy (do not add or remove while iterating). */
  values(): IterableIterator<SessionEntry> {
    return this.byId.values();
  }
}

/** A kick as the registry remembers it for a user name or a directory entry. */
interface Kick {
  readonly count: number;
  readonly at: number;
  readonly hold?: string;
}

/** Whether a session or a backend login was on `store`'s `slot` for one of `protocols` (all, when not given). */
function movedOff(on: { readonly store: string; readonly slot: string; readonly protocol: ProtocolName }, store: string, slot: string, protocols: readonly ProtocolName[] | undefined): boolean {
  return on.store === store && on.slot === slot && (protocols === undefined || protocols.includes(on.protocol));
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
