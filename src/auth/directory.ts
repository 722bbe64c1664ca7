/**
 * What the session needs from a directory, independent of LDAP: check a user's password and
 * name the user's store. Also the one username normalisation every other part uses, so that
 * no two spellings of one user are treated differently.
 */
import { domainToASCII } from 'node:url';
import type { Protocol, UsernameConfig } from '../config/schema.js';
import { untilCancelled } from '../cancel.js';
import type { Cancellation } from '../cancel.js';
import { MailfrontError, TELLABLE_REASON, tellableReason } from '../errors.js';

/** A user the directory has authenticated. */
export interface DirectoryUser {
  /** The normalised user name the login was made with (as typed: a user filter may find an entry by an alias). */
  readonly user: string;
  /**
   * The names the entry gives its user (the values of directory.login_attribute), as read, not
   * normalised; entryLoginName() picks the one a login goes on with. Absent or empty: the entry
   * has none.
   */
  readonly loginNames?: readonly string[];
  /** Where the directory keeps the user (an LDAP DN); for logs. */
  readonly dn: string;
  /** The user's store, or null when the entry names none. */
  readonly store: string | null;
  /**
   * How many values the entry's store attribute has, when more than one (`store` is then null):
   * a lookup()'s answer says so; authenticate() refuses such an entry itself (USER_STORE_AMBIGUOUS).
   */
  readonly storeValues?: number;
  /** When the store was read from the directory (performance.now(): the monotonic clock, which no step of the wall clock moves), if it came from a cache of entries. */
  readonly readAt?: number;
  /**
   * The entry holds its user (directory.hold_attribute: a mailbox being moved): what the client
   * is told. Absent: no hold. The password was right, but the login must be refused; such an
   * answer is never kept as a successful login.
   */
  readonly hold?: string;
  /**
   * The directory has locked or disabled the account (an administrator's ppolicy lock,
   * nsAccountLock): what says so, for the log. Only findForLogin() reads it: a password login's
   * bind is refused for it by the server itself. Absent: not locked, or not read.
   */
  readonly locked?: string;
  /**
   * The directory's password policy let the bind in with a warning (directory.password_policy):
   * the session tells the user (IMAP [ALERT]). A cache of logins keeps it with the login, so that
   * a login it answers, which makes no bind, is told the same. Absent: none.
   */
  readonly passwordWarning?: PasswordWarning;
}

/**
 * A password policy's warning, as a login keeps it: the password expires at `expiresAt`
 * (performance.now(): absolute, so that a login answered later from a cache tells the time left
 * then, and no step of the wall clock moves it), or it has expired and this bind was a grace
 * login, `graceLeft` more allowed.
 */
export type PasswordWarning = { readonly kind: 'expiring'; readonly expiresAt: number } | { readonly kind: 'grace'; readonly graceLeft: number };

/** A lock of an account, as whereis shows it: the attribute that says so and its value. */
export interface AccountLock {
  readonly attribute: 'pwdAccountLockedTime' | 'nsAccountLock' | 'accountUnlockTime';
  readonly value: string;
  /** When failed password binds locked the account out (pwdAccountLockedTime, ISO 8601); null for a lock an administrator set. */
  readonly since: string | null;
  /** An administrator's lock (pwdAccountLockedTime 000001010000Z, nsAccountLock TRUE), lifted only by one; else a lockout by failed binds. */
  readonly byAdministrator: boolean;
  /**
   * When a lockout by failed binds ends (ISO 8601: pwdAccountLockedTime and the policy's
   * pwdLockoutDuration, 389 DS's accountUnlockTime); null: when an administrator lifts it (no
   * pwdLockoutDuration, accountUnlockTime 19700101000000Z); absent: not known (the policy not
   * readable), or an administrator's lock.
   */
  readonly until?: string | null;
}

/**
 * What the entry's password policy says of the account now, for an operator (whereis): its lock
 * (null: none; `unreadable`: the service account reads neither pwdAccountLockedTime nor
 * nsAccountLock, or the directory has neither), and whether an administrator reset the
 * password (pwdReset TRUE; null when unreadable).
 */
export interface AccountState {
  readonly lock: AccountLock | null | 'unreadable';
  /** The lock attributes the service account may not read (lock `unreadable`). */
  readonly hidden?: readonly string[];
  /** A lockout by failed binds whose end has passed, its attribute still set until the next good bind (lock null). */
  readonly lockEnded?: AccountLock & { readonly endedAt: string };
  /**
   * A pwdAccountLockedTime the directory does not enforce (lock null): its policy's pwdLockout is
   * not TRUE (`pwdLockout`), or it is in the future, not yet in effect (`future`).
   */
  readonly lockIgnored?: AccountLock & { readonly why: 'pwdLockout' | 'future' };
  readonly passwordReset: boolean | null;
  /** What says the password was reset (`pwdReset TRUE`, 389 DS's `passwordExpirationTime 19700101000000Z`). */
  readonly passwordResetBy?: string;
}

/**
 * What one of a directory's caches holds of a user now: what a login on this instance is answered
 * from without asking the directory, which may say otherwise since (a hold set, a store changed).
 */
export interface CachedUser {
  /**
   * `auth`: a login kept (directory.auth_cache_ttl_ms), which lets its password in as it is;
   * `entry`: an entry kept (directory.entry_cache_ttl_ms), the password still checked.
   */
  readonly cache: 'auth' | 'entry';
  readonly dn: string;
  readonly store: string | null;
  /** The hold the cache has for the user (a kept login never has one). Absent: no hold. */
  readonly hold?: string;
  /** How long until the cache drops it. */
  readonly expiresInMs: number;
}

/**
 * A directory server's refusal of the directory's own settings, which waiting does not cure: the
 * service bind refused (invalidCredentials, 49, say), or base_dn not there (noSuchObject, 32).
 */
export interface DirectoryRefusal {
  /** The server that answered so. */
  readonly url: string;
  /** The LDAP result code, and its name (`invalidCredentials`). */
  readonly code: number;
  readonly name: string;
  /** The config key at fault (`directory.bind_password`, `directory.base_dn`). */
  readonly key: string;
  /** What readiness says: `service bind refused`, `base_dn not found`. */
  readonly readiness: string;
}

/**
 * What a check of the directory found: a server answered a base search of base_dn under the
 * service account; none answered (an outage, which the whole fleet shares); or one refused the
 * directory's own settings (the config's fault).
 */
export type DirectoryHealth =
  | { readonly state: 'answers' }
  | { readonly state: 'unreachable'; readonly detail: string }
  | { readonly state: 'refused'; readonly refusal: DirectoryRefusal };

/** `directory`'s health(), or what its reachable() says when it has none. */
export async function directoryHealth(directory: Directory, signal: Cancellation): Promise<DirectoryHealth> {
  if (directory.health !== undefined) return directory.health(signal);
  return (await directory.reachable(signal)) ? { state: 'answers' } : { state: 'unreachable', detail: 'no directory server answered' };
}

/**
 * The code of what a call on a closed directory fails with (shut down, or replaced by a reload): a
 * caller whose steps span several calls asks the directory in force for the rest.
 */
export const DIRECTORY_CLOSED = 'LDAP_CLOSED';

/** A directory of users. */
export interface Directory {
  /**
   * True when whether a user is found depends on the protocol of the login (directory.user_filter
   * holds `{protocol}`): a cache in front of it keys its answers by protocol too. Absent: false.
   */
  readonly byProtocol?: boolean;
  /**
   * Checks `password` for `user` (already normalised), logging in with `protocol`. Resolves with
   * the user, or rejects with a MailfrontError of kind `auth-failed` (wrong password, unknown
   * user, or a user the directory does not let use `protocol`) or `auth-tempfail` (the directory
   * could not answer), `no-route` (the password is right but the entry names its store
   * ambiguously), `expired` (the password is right, but the directory's password policy says it
   * expired, or must be changed after a reset; never a wrong one), or `aborted` when `signal`
   * fired first. A session always gives `protocol`;
   * without it (tests) a directory whose answer depends on it refuses the login (`internal`).
   */
  authenticate(user: string, password: string, signal: Cancellation, protocol?: Protocol): Promise<DirectoryUser>;
  /**
   * Finds a user without checking a password (operator tooling); null when there is no such user.
   * Without `protocol`, a directory whose answer depends on it finds the user of any protocol.
   */
  lookup(user: string, signal: Cancellation, protocol?: Protocol): Promise<DirectoryUser | null>;
  /**
   * Finds a user for a login whose credentials something else checked (a bearer token): as
   * lookup(), but the entry may come from the cache of entries a password login uses, and goes
   * into it, so that a webmail logging in with a token on every page view is not a search each
   * time; and it says whether the directory has locked the account (`locked`), which no bind
   * tells for such a login. Absent: the session uses lookup().
   */
  findForLogin?(user: string, signal: Cancellation, protocol: Protocol): Promise<DirectoryUser | null>;
  /**
   * Whether `staff`, a user authenticate() let in just now, may log in to another user's mailbox
   * (a master login): the entry matches directory.master_user_filter, `{user}` being
   * `staff.user`, which the session makes the entry's own name (directory.login_attribute; the
   * name typed when the entry has none, or several and not it), not an alias it was found under.
   * Asked of the directory every time, never of a cache, so that a staff member
   * taken out of the filter is refused from the next login on. False without a filter. Rejects
   * as authenticate() does: `auth-tempfail` when the directory cannot answer, `aborted` when
   * `signal` fired first. Absent: nobody may.
   */
  masterAllowed?(staff: DirectoryUser, signal: Cancellation): Promise<boolean>;
  /**
   * What the directory says of `found`'s account now (AccountState: its lock, a password reset),
   * read from the entry by the service account, never from a cache (whereis). Rejects as lookup()
   * does. Absent: the directory has no such attributes.
   */
  accountState?: ((found: DirectoryUser, signal: Cancellation) => Promise<AccountState>) | undefined;
  /** True when the directory answers now (readiness checks). */
  reachable(signal: Cancellation): Promise<boolean>;
  /**
   * Whether the directory answers now, and whether it refuses its own settings (readiness): a
   * directory without it is taken as reachable() says (directoryHealth()).
   */
  health?(signal: Cancellation): Promise<DirectoryHealth>;
  /**
   * What this directory's caches hold of `user` (already normalised) and of the entries `dns`,
   * under any name (whereis: operator tooling, which walks the caches). Absent: no cache.
   */
  cached?(user: string, dns: ReadonlySet<string>): CachedUser[];
  /**
   * Drops what this directory remembers of `user` (already normalised), and of every other name
   * whose cached entry has one of the DNs in `dns` or the DN cached for `user` (one entry found
   * under several names, e.g. with `usernames.lowercase` off): cached logins and entries, so that
   * the next login asks the directory again (after a password change or a lock, with
   * `mailfront kick`). A login already on its way to the directory when this is called does not
   * put its answer in a cache (the admin API also keeps such a login from being spliced). Adds
   * the DNs it finds to `dns`; returns how many cached items went.
   */
  forget(user: string, dns?: Set<string>): number;
  /** Entries each of this directory's caches holds now; a cache that is off is absent. */
  cacheEntries(): Partial<Record<'auth' | 'entry', number>>;
  /**
   * Releases connections. `graceMs`: a directory replaced by a reload lets the logins already
   * asking it finish first, for up to that long (new ones go to its successor).
   */
  close(graceMs?: number): Promise<void>;
}

/**
 * What a held user is told when the entry's hold attribute says TRUE, or something that cannot be
 * told. Says "wait", as the store maintenance's default does (routing/storemap.ts): fetchmail takes
 * a POP3 -ERR to a login as temporary only by its words, and reads any other as a wrong password.
 */
export const DEFAULT_HOLD_REASON = 'Your mailbox is being moved, please wait and try again later.';

/** What a hold's reason must be, as the warning about one that is not says. */
const HOLD_EXPECTED = `TRUE, FALSE, or the reason clients are told: ${TELLABLE_REASON} (write FALSE, or delete the value)`;

/** A user's hold as an entry's values of directory.hold_attribute say it: the reason (null: none), and why the values could not be told as they are. */
export interface Hold {
  readonly reason: string | null;
  /** Set when the values were no reason that can be told: the user is held with DEFAULT_HOLD_REASON all the same. */
  readonly problem?: string;
}

/**
 * Reads the values of an entry's hold attribute (text, or null for a value that is not UTF-8), as
 * a store's mailfrontMaintenance is read: none, or FALSE in any case, is no hold; TRUE in any case
 * holds with DEFAULT_HOLD_REASON; another value holds with it as the reason, when clients may be
 * told it (tellableReason, as a store's maintenance reason). A value that cannot be told (not
 * that, or several values, which LDAP gives in no order) still holds the user, with the default
 * reason: a hold set to stop writes during a move is never undone by a typo.
 */
export function holdOf(values: readonly (string | null)[]): Hold {
  if (values.length === 0) return { reason: null };
  if (values.length > 1) return { reason: DEFAULT_HOLD_REASON, problem: `${values.length} values; it must have one, ${HOLD_EXPECTED}` };
  const value = values[0]!;
  if (value !== null) {
    const word = value.toLowerCase();
    if (word === 'false') return { reason: null };
    if (word === 'true') return { reason: DEFAULT_HOLD_REASON };
    if (tellableReason(value)) return { reason: value };
  }
  return { reason: DEFAULT_HOLD_REASON, problem: `a value that is not ${HOLD_EXPECTED}` };
}

/** The longest user name accepted; longer ones are refused before any directory lookup. */
export const MAX_USER_BYTES = 256;

/**
 * Characters that no login name has and that matching rules ignore or fold away: controls (C0,
 * DEL, C1), format characters (soft hyphen, zero-width spaces and joiners, bidi controls, BOM),
 * lone surrogates, line and paragraph separators, the combining grapheme joiner, variation
 * selectors and U+FFFD (what undecodable bytes become). LDAP's caseIgnoreMatch (RFC 4518 §2.2)
 * maps several of them to nothing, so "al\u00ADice" would find alice's entry while throttling,
 * caches and logs saw another user.
 */
export const FORBIDDEN_IN_USER = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}\u034f\u180b-\u180d\ufe00-\ufe0f\ufffd\u{e0100}-\u{e01ef}]/u;

/** Printable ASCII without spaces: what nearly every login name is. */
const PRINTABLE_ASCII_WORD = /^[\x21-\x7e]+$/;

/**
 * WRONG_PASSWORD for an entry the directory found, with the names the entry gives its user (the
 * values of directory.login_attribute, as read): the session logs the user by them, as it does a
 * login that succeeds, and not only by the name typed (an alias the user filter matched).
 * `other`: a refusal told to the client as a wrong password, logged under a code of its own
 * (ACCOUNT_LOCKED: the directory's password policy says the account is locked, whatever the
 * password).
 */
export class WrongPasswordError extends MailfrontError {
  constructor(
    user: string,
    readonly loginNames: readonly string[],
    other?: { readonly code: string; readonly message: string },
  ) {
    super(other?.code ?? 'WRONG_PASSWORD', 'auth-failed', other?.message ?? `wrong password for "${user}"`);
  }
}

/**
 * The name the throttle, the login gate and the sessions-per-user limit count a user by (a
 * normalised name): with usernames.lowercase off the directory still finds "ann" and "ANN" alike
 * (uid matches without regard to case), and each spelling must not get limits of its own. The
 * admin API's whereis and unthrottle key by it too.
 */
export function countedUser(user: string, config: Pick<UsernameConfig, 'lowercase'>): string {
  return config.lowercase ? user : user.toLowerCase();
}

/**
 * Normalises a login name; null when it can never be valid. Every part of mailfront (throttling,
 * caches, the directory, backends, logs) uses the result, so that two spellings of one user are
 * one user: trimmed, Unicode NFKC (full-width and ligature forms fold as LDAP folds them), runs
 * of spaces made one, lower-cased when configured, the domain part always lower-cased, and the
 * domain stripped, added or checked as `usernames.domain` and `usernames.local_domains` say.
 */
export function normalizeUser(raw: string, config: UsernameConfig): string | null {
  const trimmed = raw.trim();
  if (trimmed.length === 0 || Buffer.byteLength(trimmed) > MAX_USER_BYTES) return null;
  let name: string;
  if (PRINTABLE_ASCII_WORD.test(trimmed)) {
    // The usual name: NFKC leaves it as it is, it has no space to fold and nothing forbidden.
    name = config.lowercase ? trimmed.toLowerCase() : trimmed;
  } else {
    // Control characters have no place in a login name and could forge log lines or protocol lines.
    if (FORBIDDEN_IN_USER.test(trimmed)) return null;
    name = trimmed.normalize('NFKC').replace(/\s+/gu, ' ');
    // Lower-casing can leave a sequence that is no longer NFKC (U+0130 → i + U+0307).
    if (config.lowercase) name = name.toLowerCase().normalize('NFKC');
  }
  const at = name.lastIndexOf('@');
  const localDomains = config.localDomains ?? [];
  const mode = config.domain ?? 'keep';
  let local = at < 0 ? name : name.slice(0, at);
  let domain = at < 0 ? null : name.slice(at + 1).trim().toLowerCase();
  if (local.trim() === '' || domain === '') return null;
  if (localDomains.length > 0 || mode !== 'keep') {
    // A second "@" would make "which part is the domain" a matter of opinion between us and the directory.
    if (local.includes('@')) return null;
    if (domain !== null) {
      // Compared as ASCII, so that a user typing müller.example matches xn--mller-kva.example.
      const ascii = domainToASCII(domain);
      const matched = localDomains.find((d) => d === ascii);
      if (matched === undefined) return null;
      domain = matched;
    }
  }
  if (mode === 'strip') domain = null;
  else if (mode === 'qualify' && domain === null) domain = localDomains[0] ?? null;
  local = local.trim();
  const user = domain === null ? local : `${local}@${domain}`;
  if (Buffer.byteLength(user) > MAX_USER_BYTES) return null;
  return user;
}

/** The name an entry gives its user, as entryLoginName() chose it for one login. */
export type EntryLoginName =
  | { readonly kind: 'name'; readonly name: string }
  /** No value, or none that is a valid name under `usernames` (`unusable` of them). */
  | { readonly kind: 'none'; readonly unusable: number }
  /** Several names, none of them the one typed. */
  | { readonly kind: 'ambiguous'; readonly names: readonly string[] };

/**
 * The name a login of `typed` (normalised) goes on with, from the entry's `values` of
 * directory.login_attribute: the backend login, the session registry, the per-user session
 * limit and the reserved-name check use it, not the name typed. A user filter that also matches
 * an alias (`(|(uid={user})(mail={user}))`) finds alice's entry for "info@example.com"; asserted
 * as typed, that name is another user's mailbox to a backend (Cyrus with virtdomains and
 * defaultdomain example.com reads it as `info`). The values are normalised as a typed name is;
 * of several, the one that is the typed name, else none: LDAP values have no order, so taking
 * the first would log the user in as whichever the server happened to send first.
 */
export function entryLoginName(values: readonly string[], typed: string, config: UsernameConfig): EntryLoginName {
  const names: string[] = [];
  let unusable = 0;
  for (const value of values) {
    const name = normalizeUser(value, config);
    if (name === null) unusable++;
    else if (!names.includes(name)) names.push(name);
  }
  if (names.includes(typed)) return { kind: 'name', name: typed };
  if (names.length === 1) return { kind: 'name', name: names[0]! };
  if (names.length === 0) return { kind: 'none', unusable };
  return { kind: 'ambiguous', names };
}

/** `directory`'s findForLogin(), or its lookup() where it has none (a Directory without a cache of entries). */
export function findForLogin(directory: Directory, user: string, signal: Cancellation, protocol: Protocol): Promise<DirectoryUser | null> {
  return directory.findForLogin !== undefined ? directory.findForLogin(user, signal, protocol) : directory.lookup(user, signal, protocol);
}

/** Rejects with an `aborted` error when `signal` fires, so callers never wait past their owner. */
export function raceAbort<T>(promise: Promise<T>, signal: Cancellation): Promise<T> {
  return untilCancelled(promise, signal, 'the session ended during a directory lookup');
}
