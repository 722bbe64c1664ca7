/**
 * Connection limits: how many client connections the process holds in total and per client
 * address (checked at accept; for an address a trusted webmail server forwards, at its login), and
 * how many sessions one user has at once (checked once the user is known). Each admitted connection gets a lease whose release is idempotent, so a session that
 * ends along several paths at once can never leak or double-free a slot.
 * Owns the counts and the `connection_limits` config section. Must not: touch sockets, write wire
 * text (the listener picks the answer from the name of the limit admit() refused with; the session
 * picks the answer to a refused claim at login) or log.
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
}

/** What admit() answers. */
export type Admission = { readonly admitted: true; readonly lease: ConnectionLease } | { readonly admitted: false; readonly limit: 'total' | 'address' };

/** Counts connections and sessions against the limits. */
export class ConnectionLimiter {
  private total = 0;
  private readonly byAddress = new Map<string, number>();
  private readonly byUser = new Map<string, number>();
  /** connection_limits.exempt_networks. */
  private exempt: CidrSet;

  constructor(private limits: ConnectionLimitsConfig = CONNECTION_LIMIT_DEFAULTS) {
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

  /** Distinct addresses and users tracked (both drop to 0 when every lease is released). */
  get tracked(): { readonly addresses: number; readonly users: number } {
    return { addresses: this.byAddress.size, users: this.byUser.size };
  }

  /**
   * At accept: a lease, or the limit that refuses the connection. A trusted address (and one of
   * connection_limits.exempt_networks) is counted in the total only: neither limited nor counted per address, so that a webmail server never
   * uses up the count of the untrusted neighbours sharing its key (its IPv6 /64).
   */
  admit(address: string, trusted: boolean): Admission {
    if (this.total >= this.limits.maxConnections) return { admitted: false, limit: 'total' };
    // An exempt network (a NAT) is admitted as a trusted one, its ID claims not believed for it.
    if (trusted || this.exempt.contains(address)) {
      this.total++;
      return { admitted: true, lease: new Lease(undefined, this.counts) };
    }
    const key = addressKey(address);
    const fromAddress = this.byAddress.get(key) ?? 0;
    if (fromAddress >= this.limits.maxConnectionsPerAddress) return { admitted: false, limit: 'address' };
    this.total++;
    this.byAddress.set(key, fromAddress + 1);
    return { admitted: true, lease: new Lease(key, this.counts) };
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
  };
}

interface LeaseCounts {
  claimAddress(addressKey: string): boolean;
  releaseAddress(addressKey: string): void;
  claimUser(user: string): boolean;
  releaseUser(user: string): void;
  exempt(address: string): boolean;
  releaseConnection(addressKey: string | undefined): void;
}

/**
 * One connection's lease. A class rather than an object literal with getters and closures: it is
 * made at every accept and held for the whole session (time per login, memory per idle session).
 */
class Lease implements ConnectionLease {
  private heldUser: string | undefined;
  private isReleased = false;

  constructor(
    private key: string | undefined,
    private readonly counts: LeaseCounts,
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
    this.key = next;
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
    this.counts.releaseConnection(this.key);
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
