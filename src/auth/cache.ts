/**
 * A cache of successful authentications in front of any Directory, so that webmail servers that
 * log in on every page view do not cost an LDAP search and bind each time. Keys are keyed
 * hashes (HMAC-SHA256, random per-process key) of user and password: the password itself is
 * never stored, and a wrong password never matches. Failures are never cached, nor are the
 * right passwords of users the directory holds (DirectoryUser.hold). Only what the
 * directory said of the entry is cached (its DN, store name and login names), never a slot:
 * routing always reads the store map in force. When the directory's answer depends on the
 * protocol (directory.user_filter holds `{protocol}`), the protocol is keyed too: a login the
 * directory let in over IMAP says nothing of one over POP3. Whether a user may log in as another
 * (masterAllowed) and the other's entry (lookup) are never cached: a master login keeps only the
 * staff member's own login, under the staff member's own password. Logins with the same key
 * that arrive while the directory answers one wait for that answer (one bind, not one each).
 * A password policy's warning stays with the login it came with (DirectoryUser.passwordWarning:
 * an expiry as an absolute time, grace logins as counted then), so that a login the cache answers,
 * which makes no bind and gets no warning of its own, tells its user the same.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { directoryHealth, findForLogin, raceAbort } from './directory.js';
import type { AccountState, CachedUser, Directory, DirectoryHealth, DirectoryUser } from './directory.js';
import { NEVER_CANCELLED } from '../cancel.js';
import type { Cancellation } from '../cancel.js';
import type { Protocol } from '../config/schema.js';
import type { Metrics } from '../metrics.js';

/** How long a held entry's logins, once forgotten, are not looked for again (at most the cache's TTL). */
const HELD_FORGOTTEN_MS = 60_000;

/** Held entries remembered as forgotten at once (beyond them, a held login walks the cache again). */
const HELD_FORGOTTEN_MAX = 10_000;

/** A Directory that remembers successful authentications for `ttlMs`. */
export class CachingDirectory implements Directory {
  /** A raw key: an HMAC from a Buffer key measured as fast as from a KeyObject (about 1.6 µs each in a loop). */
  private readonly key: Buffer = randomBytes(32);
  private readonly successes: LRUCache<string, DirectoryUser>;
  /** Counts forget() calls: a login that began before one does not cache its answer. */
  private forgets = 0;
  /** The inner directory's answers depend on the protocol: keys hold it. */
  readonly byProtocol: boolean;
  /**
   * The DNs whose logins were forgotten because a login found the entry held, for a while: a held
   * user's webmail logging in on every page view would otherwise walk the whole cache each time.
   */
  private readonly heldForgotten: LRUCache<string, true>;
  /**
   * The logins asking the directory now, by key: another login with the same user and password
   * waits for that answer instead of binding again. A client starting (Thunderbird opens up to
   * five connections at once) otherwise made a bind each, and with a password policy used up a
   * grace login each, some told OK and one EXPIRED. Emptied by forget(): a login after a kick
   * asks the directory itself.
   */
  private readonly asking = new Map<string, Promise<DirectoryUser>>();

  constructor(
    private inner: Directory,
    private readonly ttlMs: number,
    maxEntries: number,
    private readonly metrics?: Metrics,
  ) {
    this.successes = new LRUCache({ max: maxEntries, ttl: ttlMs });
    this.heldForgotten = new LRUCache({ max: HELD_FORGOTTEN_MAX, ttl: Math.min(ttlMs, HELD_FORGOTTEN_MS) });
    this.byProtocol = inner.byProtocol === true;
  }

  /**
   * Puts `inner` in place of the directory behind the cache, the successful logins kept: at a
   * reload that changed only how the directory's servers are reached (deadlines, connections, the
   * CA), not what they answer, which is the caller's to judge. Returns the one replaced, for the
   * caller to close once the logins asking it are through.
   */
  replaceInner(inner: Directory): Directory {
    if ((inner.byProtocol === true) !== this.byProtocol) throw new Error('a directory whose answers depend on the protocol in another way cannot take the place of this one');
    const replaced = this.inner;
    this.inner = inner;
    return replaced;
  }

  private fingerprint(user: string, password: string, protocol: Protocol | undefined): string {
    // One update: user names and protocol names never hold NUL (normalizeUser), so the
    // separators are unambiguous. The protocol only where it changes the answer: elsewhere a
    // user's IMAP and POP3 logins share one entry, as before.
    const text = this.byProtocol ? `${user}\0${protocol}\0${password}` : `${user}\0${password}`;
    return createHmac('sha256', this.key).update(text).digest('base64url');
  }

  async authenticate(user: string, password: string, signal: Cancellation, protocol?: Protocol): Promise<DirectoryUser> {
    const key = this.fingerprint(user, password, protocol);
    const cached = this.successes.get(key);
    this.metrics?.directoryCacheLookup('auth', cached !== undefined);
    if (cached !== undefined) return cached;
    const pending = this.asking.get(key);
    if (pending !== undefined) return raceAbort(pending, signal);
    // Asked for every login waiting on it: the first one's end (its client gone) must not end
    // the others' wait, so the directory is asked without it, and each login waits with its own.
    const asked = this.ask(key, user, password, protocol);
    return raceAbort(asked, signal);
  }

  private ask(key: string, user: string, password: string, protocol: Protocol | undefined): Promise<DirectoryUser> {
    const asked = this.askDirectory(key, user, password, protocol);
    this.asking.set(key, asked);
    const done = (): void => {
      if (this.asking.get(key) === asked) this.asking.delete(key);
    };
    asked.then(done, done);
    return asked;
  }

  private async askDirectory(key: string, user: string, password: string, protocol: Protocol | undefined): Promise<DirectoryUser> {
    const forgets = this.forgets;
    // The directory's own wait, which no session's end cuts short (each login waits with its own: raceAbort()).
    const found = await this.inner.authenticate(user, password, NEVER_CANCELLED, protocol);
    // The store may come from the inner directory's own cache of entries: the route is kept no
    // longer than ttlMs after it was read from the directory, not ttlMs after this login (a user
    // moved to another store is routed there within ttlMs, not ttlMs plus the entry cache's).
    // On the monotonic clock: a step of the wall clock (NTP) neither stretches the entry's life
    // past the TTL nor ends it early.
    const age = found.readAt === undefined ? 0 : performance.now() - found.readAt;
    // A held user's right password is no login to serve again: the next one asks the directory
    // (its entry cache), so that the hold is seen, and its end too, within entry_cache_ttl_ms.
    if (found.hold === undefined) {
      if (age < this.ttlMs && forgets === this.forgets) this.successes.set(key, found, { ttl: this.ttlMs - age });
      return found;
    }
    // Held: the logins cached before the hold, under this name or another (an alias, the other
    // protocol's key), let no client of the user back in; once a while per entry (forget walks
    // the cache), as no login is cached for it meanwhile unless the hold was lifted.
    if (!this.heldForgotten.has(found.dn)) {
      this.heldForgotten.set(found.dn, true);
      this.forget(found.user, new Set([found.dn]));
    }
    return found;
  }

  lookup(user: string, signal: Cancellation, protocol?: Protocol): Promise<DirectoryUser | null> {
    return this.inner.lookup(user, signal, protocol);
  }

  findForLogin(user: string, signal: Cancellation, protocol: Protocol): Promise<DirectoryUser | null> {
    return findForLogin(this.inner, user, signal, protocol);
  }

  /** Never from this cache: a login kept here says the password was right, not that its user may still act as another. */
  async masterAllowed(staff: DirectoryUser, signal: Cancellation): Promise<boolean> {
    return (await this.inner.masterAllowed?.(staff, signal)) ?? false;
  }

  /** Never from this cache: whereis asks what the directory says now (absent when the inner directory has no such attributes). */
  get accountState(): ((found: DirectoryUser, signal: Cancellation) => Promise<AccountState>) | undefined {
    const inner = this.inner;
    return inner.accountState === undefined ? undefined : (found, signal) => inner.accountState!(found, signal);
  }

  reachable(signal: Cancellation): Promise<boolean> {
    return this.inner.reachable(signal);
  }

  health(signal: Cancellation): Promise<DirectoryHealth> {
    return directoryHealth(this.inner, signal);
  }

  cached(user: string, dns: ReadonlySet<string>): CachedUser[] {
    // Operator tooling: a walk of the cache, as forget() walks it (keys are keyed hashes).
    const found: CachedUser[] = [];
    this.successes.forEach((login, key) => {
      if (login.user !== user && !dns.has(login.dn)) return;
      found.push({ cache: 'auth', dn: login.dn, store: login.store, expiresInMs: this.successes.getRemainingTTL(key) });
    });
    return [...found, ...(this.inner.cached?.(user, dns) ?? [])];
  }

  forget(user: string, dns: Set<string> = new Set()): number {
    this.asking.clear();
    this.forgets++;
    // Keys are keyed hashes: the user's are found by the entries they hold. Walks of the whole
    // cache (a few milliseconds at 100,000 entries) on an operator's request, instead of an index
    // by user kept up on every login: first the DNs of the user's logins, then (with the DNs the
    // inner directory knows) every login of those entries, whatever name it used.
    this.successes.forEach((found) => {
      if (found.user === user) dns.add(found.dn);
    });
    const forgottenInside = this.inner.forget(user, dns);
    const keys: string[] = [];
    this.successes.forEach((found, key) => {
      if (found.user === user || dns.has(found.dn)) keys.push(key);
    });
    for (const key of keys) this.successes.delete(key);
    return keys.length + forgottenInside;
  }

  cacheEntries(): Partial<Record<'auth' | 'entry', number>> {
    return { ...this.inner.cacheEntries(), auth: this.successes.size };
  }

  async close(graceMs?: number): Promise<void> {
    this.successes.clear();
    await this.inner.close(graceMs);
  }
}
