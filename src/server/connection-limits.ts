/**
 * Connection limits: how many client connections the process holds in total and per client
 * address (checked at accept; for an address a trusted webmail server forwards, at its login), and
 * how many sessions one user has at once (checked once the user is known). Each admitted connection gets a lease whose release is idempotent, so a session that
 * ends along several paths at once can never leak or double-free a slot.
 * A full process makes room for a new connection by closing the oldest one not logged in
 * (evictOldest()), as Dovecot's login processes do: idle connections that never log in, renewed
 * within the pre-auth deadline, would otherwise hold every slot and refuse every user. A front
 * mostly of sessions first closes one of the address that holds the most such connections
 * (evictCrowded()): a flood comes from few addresses, a user's connection from its own.
 * Owns the counts, the order of the connections not logged in, and the `connection_limits` config
 * section. Must not: touch sockets, write wire text (the listener picks the answer from the name
 * of the limit admit() refused with, and the closer of an evicted connection what it is told; the
 * session picks the answer to a refused claim at login) or log.
 */
import { CidrSet, addressKey } from '../net/cidr.js';
import { IssueList, int, readNetworks, readSection } from '../config/validate.js';

/** The limits in force. */
export interface ConnectionLimitsConfig {
  /** Client connections of the whole process, TLS handshakes and spliced sessions included. */
  readonly maxConnections: number;
  /** Client connections from one address (addressKey(): an IPv6 /64 is one, an IPv4 client behind a translator prefix is its own); trusted networks are exempt (not counted). */
  readonly maxConnectionsPerAddress: number;
  /** Sessions of one user at once, from anywhere. */
  readonly maxSessionsPerUser: number;
  /**
   * Address blocks not counted per address, as trusted networks are not (a carrier's or campus's
   * NAT, thousands of clients behind one address), without their ID claims being believed. Absent: none.
   */
  readonly exemptNetworks?: readonly string[];
}

/**
 * Defaults for about 100,000 mailboxes over a few instances: every mail client of a busy hour
 * fits (IDLE keeps one connection per client open), one address cannot take more than a large
 * office needs, and a user's phones and desktops (Thunderbird opens up to 5 connections per
 * account) fit in twenty sessions. 10,000 spliced sessions need 20,000 file descriptors.
 */
export const CONNECTION_LIMIT_DEFAULTS: ConnectionLimitsConfig = Object.freeze({
  maxConnections: 10_000,
  maxConnectionsPerAddress: 100,
  maxSessionsPerUser: 20,
});

/**
 * How long a connection not logged in is safe from eviction while such connections are fewer than
 * half of those held, unless its address key holds more of them than others (evictCrowded()):
 * long enough for a client on a slow mobile link to reach its login (TCP, a TLS handshake, the
 * greeting, a CAPABILITY: 3 to 4 round trips, 300 ms each at worst). A front full of spliced
 * sessions then admits no newcomer that would evict, before its login, the client that came a
 * moment earlier (each arrival evicting the last, none would ever log in); it refuses the
 * newcomer, as it did before evictions. With half the connections or more not logged in (a flood
 * of idle ones) the oldest goes whatever its age: a flood renewed faster than this could
 * otherwise keep every connection young and the front refusing.
 */
export const EVICTION_MIN_AGE_MS = 3_000;

/** A held connection slot; `release()` may be called any number of times. */
export interface ConnectionLease {
  /** The counting key of the client address; undefined for a trusted address, which is not counted per address. */
  readonly addressKey: string | undefined;
  /**
   * Counts the connection under `address` from now on (the client address a trusted webmail
   * server forwarded), in place of the key counted before, if any; false, and nothing changed,
   * when that address is at the per-address limit. A released lease counts nothing.
   */
  countAddress(address: string): boolean;
  /** Stops counting the connection against any address (an address of the trusted networks forwarded). Idempotent. */
  uncountAddress(): void;
  /** The user this lease counts a session for, if any. */
  readonly user: string | undefined;
  readonly released: boolean;
  /**
   * Counts a session for `user` (replacing a user claimed before); false, and nothing claimed,
   * when the user is at the limit. A released lease claims nothing.
   */
  claimUser(user: string): boolean;
  /** Stops counting the user (a login that failed after the claim). Idempotent. */
  releaseUser(): void;
  /** Frees the connection slot and the user's session slot. Idempotent. */
  release(): void;
  /**
   * From now on a full process may close this connection to admit a new one (the oldest first,
   * by the time of its admission), until its login begins: `close` tells the client and closes it,
   * its lease released already. Replaces the closer set before. A trusted connection (a webmail
   * server, a balancer's health check: the operator's own, which an attacker cannot use) is never
   * evicted. Nothing for a released lease.
   */
  evictableBy(close: () => void): void;
  /** The connection's login is under way (the directory asked): it is not evicted until loginFailed(). */
  loginStarted(): void;
  /** Its login failed and it is before login again: evictable again, in its place by age. */
  loginFailed(): void;
  /** It is logged in (spliced): never evicted. */
  loggedIn(): void;
}

/** What admit() answers; `evicted`: the connection closed to make room for this one. */
export type Admission = { readonly admitted: true; readonly lease: ConnectionLease; readonly evicted: boolean } | { readonly admitted: false; readonly limit: 'total' | 'address' };

/** Counts connections and sessions against the limits. */
export class ConnectionLimiter {
  private total = 0;
  private readonly byAddress = new Map<string, number>();
  private readonly byUser = new Map<string, number>();
  /** connection_limits.exempt_networks. */
  private exempt: CidrSet;
  /**
   * The leases that may be evicted, oldest first, as a list linked through the leases themselves:
   * linking, unlinking and the oldest are O(1) at any count (a Set's first entry is not: V8 leaves
   * the deleted entries before it in place until the next rehash). A lease whose login began stays
   * linked, marked (its closer taken away), and is unlinked when it reaches the head: each login
   * is unlinked at most once, so an admission costs O(1) amortised, never a scan.
   */
  private oldest: Lease | undefined;
  private newest: Lease | undefined;
  /** Linked leases with a closer: the connections a full process may close now. */
  private evictableCount = 0;
  /** Connections admitted so far: each lease's place in the order of eviction. */
  private admissions = 0;
  /** The address keys with leases that may be evicted now (a closer set), each with those leases oldest first. */
  private readonly crowds = new Map<string, Crowd>();
  /**
   * The keys by how many such leases they hold: the first of a list linked through the Crowds, by
   * count (1 and up), and the highest count. A count moves by one at a time, so the highest is
   * found again in O(1) when its last key drops (as an LFU cache's frequency lists are kept).
   */
  private readonly crowdsOf = new Map<number, Crowd>();
  private mostCrowded = 0;

  constructor(
    private limits: ConnectionLimitsConfig = CONNECTION_LIMIT_DEFAULTS,
    /** The monotonic clock (performance.now()); a test's own. */
    private readonly now: () => number = () => performance.now(),
  ) {
    this.exempt = new CidrSet(limits.exemptNetworks ?? []);
  }

  /** New limits apply to new connections and claims; held leases stay valid. */
  setLimits(limits: ConnectionLimitsConfig): void {
    this.limits = limits;
    this.exempt = new CidrSet(limits.exemptNetworks ?? []);
  }

  /** Connections held now. */
  get connections(): number {
    return this.total;
  }

  /** connection_limits.max_connections in force (setLimits() changes it). */
  get maxConnections(): number {
    return this.limits.maxConnections;
  }

  /** Connections held now from this address's counting key (trusted connections are not among them). */
  connectionsFrom(address: string): number {
    return this.byAddress.get(addressKey(address)) ?? 0;
  }

  /** Sessions counted for this user now. */
  sessionsOf(user: string): number {
    return this.byUser.get(user) ?? 0;
  }

  /** Connections a full process may close now to admit a new one (none logged in, nor logging in, nor trusted). */
  get evictable(): number {
    return this.evictableCount;
  }

  /** Distinct addresses and users tracked (both drop to 0 when every lease is released). */
  get tracked(): { readonly addresses: number; readonly users: number } {
    return { addresses: this.byAddress.size, users: this.byUser.size };
  }

  /**
   * At accept: a lease, or the limit that refuses the connection. A trusted address (and one of
   * connection_limits.exempt_networks) is counted in the total only: neither limited nor counted per address, so that a webmail server never
   * uses up the count of the untrusted neighbours sharing its key (its IPv6 /64). At
   * max_connections the oldest connection not logged in is closed to make room (evictOldest()),
   * unless the new one is over its own address's limit; refused as `total` when none can be.
   */
  admit(address: string, trusted: boolean): Admission {
    const full = this.total >= this.limits.maxConnections;
    // Nothing to evict: refused as before evictions, at the cost of one comparison.
    if (full && this.evictableCount === 0) return { admitted: false, limit: 'total' };
    // An exempt network (a NAT) is admitted as a trusted one, its ID claims not believed for it.
    const exempt = trusted || this.exempt.contains(address);
    const key = exempt ? undefined : addressKey(address);
    // A client over its own limit takes no one's place.
    if (key !== undefined && (this.byAddress.get(key) ?? 0) >= this.limits.maxConnectionsPerAddress) return { admitted: false, limit: 'address' };
    const evicted = full && this.evictOldest(key);
    if (full && !evicted) return { admitted: false, limit: 'total' };
    this.total++;
    if (key !== undefined) this.byAddress.set(key, (this.byAddress.get(key) ?? 0) + 1);
    return { admitted: true, lease: new Lease(key, this.counts, !trusted, this.now(), this.admissions++), evicted };
  }

  /**
   * Closes the oldest connection that may be evicted, its lease released first: true if one was.
   * While such connections are fewer than half of those held (a front mostly of sessions), one of
   * the most crowded address key first (evictCrowded()), then not one younger than
   * EVICTION_MIN_AGE_MS (the newcomer refused rather than evicting a login about to begin).
   * Leases whose login began are unlinked on the way, once each.
   */
  private evictOldest(newcomerKey: string | undefined): boolean {
    const busy = this.evictableCount * 2 < this.total;
    if (busy && this.evictCrowded(newcomerKey)) return true;
    for (let lease = this.oldest; lease !== undefined; lease = this.oldest) {
      const close = lease.closer;
      if (close === undefined) {
        this.unlink(lease);
        continue;
      }
      if (busy && this.now() - lease.admittedAt < EVICTION_MIN_AGE_MS) return false;
      lease.release();
      close();
      return true;
    }
    return false;
  }

  /**
   * On a front mostly of sessions (fewer than half the connections not logged in), a newcomer first
   * evicts the oldest connection not logged in of the address key that holds the most of them (ties:
   * any of those keys), whatever its age, when that key holds more than one and more than the
   * newcomer's key will once it is admitted (a trusted or exempt newcomer's: none; an exempt
   * network's connections are in no key's count, its NAT's clients being many). A flood from one
   * address (or a few) is then what everyone else's newcomers evict, its own evicting by this rule
   * no one (its key would hold more), and a client whose key holds one connection not logged in (a
   * user) keeps its EVICTION_MIN_AGE_MS. O(1): the most crowded key is at hand (crowdsOf). The
   * comparison, not a fixed threshold, is what ends a chain of evictions: each takes a connection
   * from a key holding m and gives one to a key left holding fewer than m, so the sum of the squares
   * of the keys' counts falls at each, and newcomers of one key (an office behind one NAT address
   * arriving faster than its logins end) are refused rather than evict each other for ever.
   */
  private evictCrowded(newcomerKey: string | undefined): boolean {
    const newcomerWillHold = newcomerKey === undefined ? 0 : (this.crowds.get(newcomerKey)?.count ?? 0) + 1;
    if (this.mostCrowded <= Math.max(1, newcomerWillHold)) return false;
    const lease = this.crowdsOf.get(this.mostCrowded)?.oldest;
    const close = lease?.closer;
    if (lease === undefined || close === undefined) return false;
    lease.release();
    close();
    return true;
  }

  /**
   * Puts an evictable lease with an address key among its key's, in its place by admission, found
   * from the newest: a newcomer's at once, one whose login failed past its key's newer ones (at
   * most max_connections_per_address).
   */
  private joinCrowd(lease: Lease): void {
    const key = lease.addressKey;
    if (key === undefined || lease.crowd !== undefined || lease.closer === undefined) return;
    let crowd = this.crowds.get(key);
    if (crowd === undefined) {
      crowd = new Crowd(key);
      this.crowds.set(key, crowd);
    }
    let before = crowd.newest;
    while (before !== undefined && before.order > lease.order) before = before.crowdPrev;
    lease.crowdPrev = before;
    lease.crowdNext = before === undefined ? crowd.oldest : before.crowdNext;
    if (before === undefined) crowd.oldest = lease;
    else before.crowdNext = lease;
    if (lease.crowdNext === undefined) crowd.newest = lease;
    else lease.crowdNext.crowdPrev = lease;
    lease.crowd = crowd;
    this.recount(crowd, crowd.count + 1);
  }

  private leaveCrowd(lease: Lease): void {
    const crowd = lease.crowd;
    if (crowd === undefined) return;
    if (lease.crowdPrev === undefined) crowd.oldest = lease.crowdNext;
    else lease.crowdPrev.crowdNext = lease.crowdNext;
    if (lease.crowdNext === undefined) crowd.newest = lease.crowdPrev;
    else lease.crowdNext.crowdPrev = lease.crowdPrev;
    lease.crowdPrev = lease.crowdNext = lease.crowd = undefined;
    this.recount(crowd, crowd.count - 1);
    if (crowd.count === 0) this.crowds.delete(crowd.key);
  }

  /** Moves `crowd` to the list of the keys holding `count` (none at 0), keeping mostCrowded. */
  private recount(crowd: Crowd, count: number): void {
    const was = crowd.count;
    if (was > 0) {
      if (crowd.prevOfCount === undefined) {
        if (crowd.nextOfCount === undefined) this.crowdsOf.delete(was);
        else this.crowdsOf.set(was, crowd.nextOfCount);
      } else crowd.prevOfCount.nextOfCount = crowd.nextOfCount;
      if (crowd.nextOfCount !== undefined) crowd.nextOfCount.prevOfCount = crowd.prevOfCount;
      crowd.prevOfCount = crowd.nextOfCount = undefined;
    }
    crowd.count = count;
    if (count > 0) {
      const first = this.crowdsOf.get(count);
      crowd.nextOfCount = first;
      if (first !== undefined) first.prevOfCount = crowd;
      this.crowdsOf.set(count, crowd);
    }
    if (count > this.mostCrowded) this.mostCrowded = count;
    // Its last key dropped to count (one less): count is the highest now (0: none left).
    else if (was === this.mostCrowded && !this.crowdsOf.has(was)) this.mostCrowded = count;
  }

  /**
   * Links `lease` in its place by age. A lease linked for the first time is the newest (admitted
   * just now). One linked again after a failed login was unlinked as it reached the head (its
   * login under way): it is older than every lease linked then, and only leases linked again the
   * same way can be older still, so it goes in from the head, past those few.
   */
  private link(lease: Lease): void {
    let before: Lease | undefined;
    if (lease.linkedBefore) {
      before = this.oldest;
      while (before !== undefined && before.order < lease.order) before = before.next;
    }
    lease.next = before;
    lease.prev = before === undefined ? this.newest : before.prev;
    if (lease.prev === undefined) this.oldest = lease;
    else lease.prev.next = lease;
    if (lease.next === undefined) this.newest = lease;
    else lease.next.prev = lease;
    lease.linked = true;
    lease.linkedBefore = true;
  }

  private unlink(lease: Lease): void {
    if (!lease.linked) return;
    if (lease.prev === undefined) this.oldest = lease.next;
    else lease.prev.next = lease.next;
    if (lease.next === undefined) this.newest = lease.prev;
    else lease.next.prev = lease.prev;
    lease.prev = lease.next = undefined;
    lease.linked = false;
  }

  /** What every lease of this limiter changes; one object, shared, not closures per connection. */
  private readonly counts: LeaseCounts = {
    claimAddress: (key) => {
      const held = this.byAddress.get(key) ?? 0;
      if (held >= this.limits.maxConnectionsPerAddress) return false;
      this.byAddress.set(key, held + 1);
      return true;
    },
    releaseAddress: (key) => decrement(this.byAddress, key),
    claimUser: (user) => {
      const held = this.byUser.get(user) ?? 0;
      if (held >= this.limits.maxSessionsPerUser) return false;
      this.byUser.set(user, held + 1);
      return true;
    },
    releaseUser: (user) => decrement(this.byUser, user),
    exempt: (address) => this.exempt.contains(address),
    releaseConnection: (key) => {
      this.total--;
      if (key !== undefined) decrement(this.byAddress, key);
    },
    evictable: (lease, close) => {
      const was = lease.closer;
      lease.closer = close;
      if (was !== undefined) return;
      if (!lease.linked) this.link(lease);
      this.evictableCount++;
      this.joinCrowd(lease);
    },
    notEvictable: (lease, forGood) => {
      if (lease.closer !== undefined) this.evictableCount--;
      this.leaveCrowd(lease);
      lease.closer = undefined;
      // Logged in or gone: out of the list now. A login under way stays in its place (evictOldest()).
      if (forGood) this.unlink(lease);
    },
    leaveCrowd: (lease) => this.leaveCrowd(lease),
    joinCrowd: (lease) => this.joinCrowd(lease),
  };
}

interface LeaseCounts {
  claimAddress(addressKey: string): boolean;
  releaseAddress(addressKey: string): void;
  claimUser(user: string): boolean;
  releaseUser(user: string): void;
  exempt(address: string): boolean;
  releaseConnection(addressKey: string | undefined): void;
  /** Makes `lease` evictable by `close` (linked in its place if it is not). */
  evictable(lease: Lease, close: () => void): void;
  /** Makes `lease` not evictable: for now (its login began) or `forGood` (logged in, released). */
  notEvictable(lease: Lease, forGood: boolean): void;
  /** Around a change of the lease's address key: out of its key's crowd, then into the new key's (if evictable). */
  leaveCrowd(lease: Lease): void;
  joinCrowd(lease: Lease): void;
}

/** One address key's leases that may be evicted now, oldest first (linked through Lease.crowdPrev/crowdNext), and its place among the keys holding as many (ConnectionLimiter.crowdsOf). */
class Crowd {
  count = 0;
  oldest: Lease | undefined;
  newest: Lease | undefined;
  prevOfCount: Crowd | undefined;
  nextOfCount: Crowd | undefined;
  constructor(readonly key: string) {}
}

/**
 * One connection's lease. A class rather than an object literal with getters and closures: it is
 * made at every accept and held for the whole session (time per login, memory per idle session).
 */
class Lease implements ConnectionLease {
  private heldUser: string | undefined;
  private isReleased = false;
  /** The limiter's list of leases that may be evicted (ConnectionLimiter.oldest). */
  prev: Lease | undefined;
  next: Lease | undefined;
  linked = false;
  linkedBefore = false;
  /** Its address key's leases that may be evicted now (set while it is one of them). */
  crowd: Crowd | undefined;
  crowdPrev: Lease | undefined;
  crowdNext: Lease | undefined;
  /** What closes the connection if it is evicted; undefined while it may not be (its login under way, or not evictable at all). */
  closer: (() => void) | undefined;
  /** The closer set last: loginFailed() makes the connection evictable by it again. */
  private lastCloser: (() => void) | undefined;

  constructor(
    private key: string | undefined,
    private readonly counts: LeaseCounts,
    /** False for a trusted connection, which is never evicted. */
    private readonly mayEvict: boolean,
    /** When it was admitted, on the limiter's clock (its age), and the how-manieth (the order of eviction, ties of the clock included). */
    readonly admittedAt: number,
    readonly order: number,
  ) {}

  get addressKey(): string | undefined {
    return this.key;
  }

  get user(): string | undefined {
    return this.heldUser;
  }

  get released(): boolean {
    return this.isReleased;
  }

  uncountAddress(): void {
    if (this.isReleased || this.key === undefined) return;
    this.counts.releaseAddress(this.key);
    this.counts.leaveCrowd(this);
    this.key = undefined;
  }

  countAddress(address: string): boolean {
    if (this.isReleased) return false;
    // A forwarded address of an exempt network is not counted, as when it connects itself.
    if (this.counts.exempt(address)) {
      this.uncountAddress();
      return true;
    }
    const next = addressKey(address);
    if (next === this.key) return true;
    // The new key is counted first: at the limit, the key counted before stays counted.
    if (!this.counts.claimAddress(next)) return false;
    if (this.key !== undefined) this.counts.releaseAddress(this.key);
    this.counts.leaveCrowd(this);
    this.key = next;
    this.counts.joinCrowd(this);
    return true;
  }

  claimUser(next: string): boolean {
    if (this.isReleased) return false;
    if (next === this.heldUser) return true;
    // The new user is counted first: at the limit, the user claimed before stays claimed.
    if (!this.counts.claimUser(next)) return false;
    this.releaseUser();
    this.heldUser = next;
    return true;
  }

  releaseUser(): void {
    if (this.heldUser === undefined) return;
    this.counts.releaseUser(this.heldUser);
    this.heldUser = undefined;
  }

  release(): void {
    if (this.isReleased) return;
    this.isReleased = true;
    this.releaseUser();
    this.counts.notEvictable(this, true);
    this.lastCloser = undefined;
    this.counts.releaseConnection(this.key);
  }

  evictableBy(close: () => void): void {
    if (this.isReleased || !this.mayEvict) return;
    this.lastCloser = close;
    this.counts.evictable(this, close);
  }

  loginStarted(): void {
    this.counts.notEvictable(this, false);
  }

  loginFailed(): void {
    if (this.isReleased || this.lastCloser === undefined) return;
    this.counts.evictable(this, this.lastCloser);
  }

  loggedIn(): void {
    this.counts.notEvictable(this, true);
    this.lastCloser = undefined;
  }
}

function decrement(map: Map<string, number>, key: string): void {
  const n = (map.get(key) ?? 0) - 1;
  // Deleting at zero keeps the maps as small as the live connections, whatever the churn.
  if (n <= 0) map.delete(key);
  else map.set(key, n);
}

/** Reads the `connection_limits` section (absent: defaults). */
export function readConnectionLimitsConfig(v: unknown, path: string, issues: IssueList): ConnectionLimitsConfig {
  const o = v === undefined ? {} : readSection(v, path, ['max_connections', 'max_connections_per_address', 'max_sessions_per_user', 'exempt_networks'], issues) ?? {};
  const d = CONNECTION_LIMIT_DEFAULTS;
  return {
    maxConnections: int(o, 'max_connections', path, issues, 1, 1_000_000, d.maxConnections),
    maxConnectionsPerAddress: int(o, 'max_connections_per_address', path, issues, 1, 1_000_000, d.maxConnectionsPerAddress),
    maxSessionsPerUser: int(o, 'max_sessions_per_user', path, issues, 1, 100_000, d.maxSessionsPerUser),
    exemptNetworks: readNetworks(o, 'exempt_networks', path, issues),
  };
}
