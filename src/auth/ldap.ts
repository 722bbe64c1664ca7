/**
 * The LDAP directory (ldapts): search the user with a service account, then bind as the found
 * DN to check the password. Several servers are tried in order; every call has a deadline.
 * Owns its LDAP connections; knows nothing of sessions or the store map, and protocols only as
 * names: opaque values for `{protocol}` in the user filter, and part of the cache key then.
 * Its LDAP client plumbing is shared with the LDAP store map's source (routing/sources.ts).
 */
import { berLength } from '../ber.js';
import { readCaCertificates } from '../ca-file.js';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { debuglog } from 'node:util';
import { AbandonRequest, Client, FilterParser, InvalidCredentialsError, ResultCodeError, SearchResponse, UnbindRequest } from 'ldapts';
import type { Entry, SearchOptions } from 'ldapts';
import { PROTOCOLS, filterUsesProtocol, loginAttributeOf } from '../config/schema.js';
import type { DirectoryConfig, Protocol } from '../config/schema.js';
import { MailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import { DIRECTORY_CLOSED, WrongPasswordError, holdOf, raceAbort } from './directory.js';
import type { AccountLock, AccountState, CachedUser, Directory, DirectoryHealth, DirectoryRefusal, DirectoryUser, Hold, PasswordWarning } from './directory.js';
import { performance } from 'node:perf_hooks';
import { LRUCache } from 'lru-cache';
import type { LdapOperation, LdapResult, Metrics } from '../metrics.js';
import type { Cancellation } from '../cancel.js';
import { MAX_LDAP_ANSWER_BYTES } from '../limits.js';
import { PasswordPolicyRequest } from './password-policy.js';
import type { PasswordPolicyAnswer } from './password-policy.js';

/** The characters RFC 4515 §3 has escaped in a filter's value: whether a value has one (no /g: test() keeps no state). */
const FILTER_SPECIAL = /[*()\\\0]/;
/** The same characters, each of them (replace()). */
const FILTER_SPECIALS = new RegExp(FILTER_SPECIAL.source, 'g');

/** Escapes a value for use inside an LDAP search filter (RFC 4515 §3). */
export function escapeFilterValue(value: string): string {
  // Nearly every value has none of them: a test, cheaper than a replace() with a callback even when nothing matches.
  if (!FILTER_SPECIAL.test(value)) return value;
  return value.replace(FILTER_SPECIALS, (c) => `\\${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** A filter template cut at each `{user}`, once: userFilterOf() puts the escaped name between the parts. */
export function userFilterParts(template: string): readonly string[] {
  return template.split('{user}');
}

/** The user search filter from a template's parts (userFilterParts()). */
export function userFilterOf(parts: readonly string[], user: string): string {
  return parts.join(escapeFilterValue(user));
}

/** Builds the user search filter from the configured template. */
export function userFilter(template: string, user: string): string {
  return userFilterOf(userFilterParts(template), user);
}

/**
 * The user filter template for logins over `protocol`: `{protocol}` replaced by its name, escaped
 * as a value is. The names are letters and digits, so they may also stand in an attribute's name
 * (`(enable{protocol}=TRUE)` → `(enableimap=TRUE)`).
 */
export function protocolFilter(template: string, protocol: Protocol): string {
  return template.split('{protocol}').join(escapeFilterValue(protocol));
}

/**
 * noSuchObject (32) to a search whose base is base_dn: the server has no base_dn (a replica
 * without the subtree, an ACL that hides it from the service account). It says nothing of the
 * user, and the server will answer every login so: it is taken as that server's failure.
 */
const NO_SUCH_OBJECT = 32;

/** True for a search error that may be the server's (not the request's) doing: the search is tried on the next one. */
function isServerFailure(error: unknown): boolean {
  if (!(error instanceof ResultCodeError)) return true;
  // noSuchObject for base_dn (32), busy (51), unavailable (52), unwillingToPerform (53), other (80)
  return [NO_SUCH_OBJECT, 51, 52, 53, 80].includes(error.code);
}

/**
 * True for a failure in which the server gave no answer (none within the deadline, a lost
 * connection, an answer past the byte bound) or answered busy (51) or unavailable (52): the
 * server is down, and it is held down. Any other result code is an answer about the entry or
 * the request: 389 DS refuses the bind of an inactivated account with unwillingToPerform (53),
 * and holding the server down for it would move every login off it for one user.
 */
function isServerDown(error: unknown): boolean {
  if (!(error instanceof ResultCodeError)) return true;
  return error.code === 51 || error.code === 52;
}

/** True for a user search's noSuchObject: base_dn is missing on that server (NO_SUCH_OBJECT), not only for a bind's. */
function isBaseMissing(error: unknown): boolean {
  return error instanceof ResultCodeError && error.code === NO_SUCH_OBJECT;
}

/**
 * LDAP results by which a server refuses the directory's own settings, the service bind's or the
 * base search of base_dn's: waiting does not cure them, and every login would fail on them. The
 * key at fault for each, and what readiness says. Other results (busy, unavailable, an ACL that
 * refuses the base entry) are no verdict on the settings.
 */
const SETTINGS_REFUSALS: Readonly<Record<'bind' | 'search', ReadonlyMap<number, Omit<DirectoryRefusal, 'url' | 'code'>>>> = {
  bind: new Map([
    [8, { name: 'strongerAuthRequired', key: 'directory.starttls', readiness: 'service bind refused' }],
    [13, { name: 'confidentialityRequired', key: 'directory.starttls', readiness: 'service bind refused' }],
    [48, { name: 'inappropriateAuthentication', key: 'directory.bind_dn', readiness: 'service bind refused' }],
    [49, { name: 'invalidCredentials', key: 'directory.bind_password', readiness: 'service bind refused' }],
  ]),
  search: new Map([[32, { name: 'noSuchObject', key: 'directory.base_dn', readiness: 'base_dn not found' }]]),
};

/** The refusal of the directory's settings `error` is, from `url` at `step`; undefined for any other failure. */
function settingsRefusal(error: unknown, step: 'bind' | 'search', url: string): DirectoryRefusal | undefined {
  if (!(error instanceof ResultCodeError)) return undefined;
  const known = SETTINGS_REFUSALS[step].get(error.code);
  return known === undefined ? undefined : { url, code: error.code, ...known };
}

/** How a refusal is told in logs and errors: the key, the server and what it answered (never a password). */
export function refusalText(refusal: DirectoryRefusal): string {
  return `${refusal.key}: ${refusal.url} answered ${refusal.name} (${refusal.code}) to the ${refusal.key === 'directory.base_dn' ? 'base search of base_dn' : 'service bind'}${refusal.code === 49 ? INVALID_CREDENTIALS_HINT : ''}`;
}

/**
 * What invalidCredentials may mean: a server answers it for a bind DN it does not have as for a
 * wrong password (slapd, 389 DS: no telling which names exist), so the key it is reported under
 * (bind_password) may not be the one at fault.
 */
export const INVALID_CREDENTIALS_HINT = ' (a wrong bind_password, or a bind_dn the server does not have: it answers both alike)';

/** The refusal that made a service connection fail everywhere (LDAP_SERVICE_BIND_REFUSED), for health(). */
const refusalOfFailure = new WeakMap<MailfrontError, DirectoryRefusal>();

/** What a check found when no server answered. */
function unreachable(detail: string): DirectoryHealth {
  return { state: 'unreachable', detail };
}

/**
 * The store an entry's store attribute names: its one value (null when absent or empty), and how
 * many values it has. More than one names no store: LDAP values are unordered (RFC 4511 §4.1.7),
 * so taking the first would route the user by whichever the server happened to send first.
 */
function storeValue(value: unknown): { readonly store: string | null; readonly values: number } {
  const values: unknown[] = value === undefined ? [] : Array.isArray(value) ? value : [value];
  if (values.length !== 1) return { store: null, values: values.length };
  const only = values[0];
  if (typeof only === 'string') return { store: only.length > 0 ? only : null, values: 1 };
  if (Buffer.isBuffer(only)) return { store: only.length > 0 ? only.toString('utf8') : null, values: 1 };
  return { store: null, values: 1 };
}

/** A value's bytes as UTF-8 text (RFC 4511 §4.1.5: LDAP strings are UTF-8), or null when they are not. */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The values of an entry's login attribute as text. A value that is not UTF-8 is left out: it
 * could only be passed on altered (entryLoginName() then sees the entry without it).
 */
function loginValues(value: unknown): string[] {
  const values: unknown[] = value === undefined ? [] : Array.isArray(value) ? value : [value];
  const texts: string[] = [];
  for (const one of values) {
    if (typeof one === 'string') texts.push(one);
    else if (Buffer.isBuffer(one)) {
      try {
        texts.push(strictUtf8.decode(one));
      } catch {
        // Not a name.
      }
    }
  }
  return texts;
}

/**
 * The values of an entry's hold attribute as text, a value that is not UTF-8 as null (holdOf()
 * holds the user for it all the same: it is no reason that can be told).
 */
function holdValues(value: unknown): (string | null)[] {
  const values: unknown[] = value === undefined ? [] : Array.isArray(value) ? value : [value];
  return values.map((one) => {
    if (typeof one === 'string') return one;
    if (Buffer.isBuffer(one)) {
      try {
        return strictUtf8.decode(one);
      } catch {
        return null;
      }
    }
    return null;
  });
}

/**
 * How often a hold value that cannot be told is logged for one entry at most (or once per
 * entry_cache_ttl_ms, when longer): each login of a held user reads it, and each is refused.
 */
const HOLD_WARNING_INTERVAL_MS = 60_000;

/** The value of the attribute `name` of `entry`: names are case-insensitive (RFC 4512 §2.5), the server answers in its schema's spelling. */
function attributeOf(entry: Record<string, unknown>, name: string): unknown {
  const wanted = name.toLowerCase();
  const key = Object.keys(entry).find((k) => k.toLowerCase() === wanted);
  return key === undefined ? undefined : entry[key];
}

/**
 * The attributes that say a directory has locked or disabled an account, which a bearer login's
 * search reads (it makes no bind, whose refusal would say so): OpenLDAP ppolicy's
 * pwdAccountLockedTime and 389 DS / FreeIPA's nsAccountLock (ipa user-disable), both operational
 * (a search returns them only when asked by name). A server without them ignores the names
 * (RFC 4511 §4.5.1.8).
 */
const LOCK_ATTRIBUTES = ['pwdAccountLockedTime', 'nsAccountLock'] as const;

/** draft-behera-ldap-password-policy-10 §5.3.3: an administrator's lock, until an administrator lifts it ("000001010000Z"). */
const PERMANENT_LOCK = /^000001010000(?:00)?(?:[.,]0+)?Z$/;

/**
 * What an entry's lock attributes say (for the log): an administrator's permanent ppolicy lock,
 * or nsAccountLock TRUE; null when neither. Any other pwdAccountLockedTime is a lock that failed
 * password binds set: a guard for the password against guessing, which a token was not, and
 * which anyone sending wrong passwords could otherwise turn against the user's token logins.
 */
function accountLockOf(entry: Record<string, unknown>): string | null {
  if (holdValues(attributeOf(entry, 'pwdAccountLockedTime')).some((value) => value !== null && PERMANENT_LOCK.test(value))) return 'pwdAccountLockedTime 000001010000Z, an administrator\'s lock';
  if (holdValues(attributeOf(entry, 'nsAccountLock')).some((value) => value?.toLowerCase() === 'true')) return 'nsAccountLock TRUE';
  return null;
}

/** The attributes whereis reads of an entry's lock: ppolicy's, nsAccountLock (389 DS, FreeIPA), and 389 DS's lockout by failed binds (passwordLockout). */
const WHEREIS_LOCK_ATTRIBUTES = ['pwdAccountLockedTime', 'nsAccountLock', 'accountUnlockTime'] as const;

/** ...and of a password an administrator reset: ppolicy's pwdReset, 389 DS's passwordExpirationTime 19700101000000Z (passwordMustChange). */
const PASSWORD_RESET_ATTRIBUTES = ['pwdReset', 'passwordExpirationTime'] as const;

/** What 389 DS's schema holds of them (its cn=schema answers no filter on attributeTypes, so it is not asked). */
const DS389_ACCOUNT_ATTRIBUTES: ReadonlySet<string> = new Set(['nsAccountLock', 'accountUnlockTime', 'passwordExpirationTime']);

/**
 * A base search's filter that matches an entry when the service account may search every one of
 * `names`, set or not (slapd evaluates a filter on an attribute it may not search, or that its
 * schema lacks, as Undefined, and 389 DS one it may not search as false: the entry is not
 * returned): whether "not set" can be said of them.
 */
function readableFilter(names: readonly string[]): string {
  return names.length === 0 ? '(objectClass=*)' : `(&${names.map((name) => `(|(${name}=*)(!(${name}=*)))`).join('')})`;
}

/** An LDAP GeneralizedTime (RFC 4517 §3.3.13: YYYYMMDDHH[MM[SS]], a fraction of the last of them, Z or an offset) in ms since the epoch; null when it is not one. */
function generalizedTimeMs(value: string): number | null {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:[.,](\d+))?(Z|[+-]\d{2}(?:\d{2})?)$/.exec(value);
  if (m === null) return null;
  const [, year, month, day, hour, minute, second, fraction = '', zone = 'Z'] = m;
  const offset = zone === 'Z' ? 'Z' : `${zone.slice(0, 3)}:${zone.slice(3) || '00'}`;
  const time = Date.parse(`${year}-${month}-${day}T${hour}:${minute ?? '00'}:${second ?? '00'}${offset}`);
  if (Number.isNaN(time)) return null;
  // The fraction is of the last unit given: of an hour in "2026120611.5Z", of a second in "...38.5Z".
  const unitMs = second !== undefined ? 1_000 : minute !== undefined ? 60_000 : 3_600_000;
  return time + Math.floor(Number(`0.${fraction || '0'}`) * unitMs);
}

/** A lockout by failed binds that has ended (its end passed), the attribute still set. */
type EndedLock = AccountLock & { readonly endedAt: string };

/** A pwdAccountLockedTime slapd does not enforce: its policy's pwdLockout is not TRUE, or it is in the future. */
type IgnoredLock = AccountLock & { readonly why: 'pwdLockout' | 'future' };

/**
 * What the entry's ppolicy policy (pwdPolicySubentry) says of its lockouts: whether it enforces
 * pwdAccountLockedTime (pwdLockout TRUE; slapd's default when absent is FALSE) and for how long a
 * lockout lasts (pwdLockoutDuration in ms, 0 when absent: until an administrator deletes it).
 */
interface LockoutPolicy {
  readonly lockout: boolean;
  readonly durationMs: number;
}

/**
 * An entry's lock as whereis shows it at `now`: an administrator's (pwdAccountLockedTime
 * 000001010000Z, nsAccountLock TRUE) before a lockout by failed binds (any other
 * pwdAccountLockedTime, since then, until the policy's pwdLockoutDuration after, when known, and
 * 0: until an administrator deletes it; 389 DS's accountUnlockTime, until then, or
 * 19700101000000Z: until an administrator unlocks it); null when none. A lockout whose end has
 * passed is `ended` instead: slapd keeps pwdAccountLockedTime, 389 DS accountUnlockTime, until
 * the next good bind. slapd's ppolicy (account_locked()) enforces no pwdAccountLockedTime when
 * the policy's pwdLockout is not TRUE, the administrator's included, and none in the future (not
 * yet in effect): such a value is `ignored` instead. `policy` undefined: not readable (or no
 * pwdPolicySubentry; ppolicy_default is not read), the value is taken as enforced.
 */
function accountLockView(entry: Record<string, unknown>, policy: LockoutPolicy | undefined, now: number): { lock: AccountLock | null; ended: EndedLock | null; ignored: IgnoredLock | null } {
  const locked = holdValues(attributeOf(entry, 'pwdAccountLockedTime')).filter((value): value is string => value !== null);
  const permanent = locked.find((value) => PERMANENT_LOCK.test(value));
  let ignored: IgnoredLock | null = null;
  if (permanent !== undefined) {
    const lock: AccountLock = { attribute: 'pwdAccountLockedTime', value: permanent, since: null, byAdministrator: true };
    if (policy === undefined || policy.lockout) return { lock, ended: null, ignored: null };
    ignored = { ...lock, why: 'pwdLockout' };
  }
  const disabled = holdValues(attributeOf(entry, 'nsAccountLock')).find((value) => value?.toLowerCase() === 'true');
  if (typeof disabled === 'string') return { lock: { attribute: 'nsAccountLock', value: disabled, since: null, byAdministrator: true }, ended: null, ignored };
  let ended: EndedLock | null = null;
  const lockout = permanent === undefined ? locked[0] : undefined;
  if (lockout !== undefined) {
    const since = generalizedTimeMs(lockout);
    const lock: AccountLock = { attribute: 'pwdAccountLockedTime', value: lockout, since: since === null ? null : new Date(since).toISOString(), byAdministrator: false };
    if (policy !== undefined && !policy.lockout) ignored = { ...lock, why: 'pwdLockout' };
    else if (since !== null && since > now) ignored = { ...lock, why: 'future' };
    else if (policy === undefined || since === null) return { lock, ended: null, ignored: null };
    else if (policy.durationMs === 0) return { lock: { ...lock, until: null }, ended: null, ignored: null };
    else {
      const until = new Date(since + policy.durationMs).toISOString();
      if (since + policy.durationMs > now) return { lock: { ...lock, until }, ended: null, ignored: null };
      ended = { ...lock, until, endedAt: until };
    }
  }
  const unlock = holdValues(attributeOf(entry, 'accountUnlockTime')).find((value): value is string => value !== null);
  const unlockMs = unlock === undefined ? null : generalizedTimeMs(unlock);
  if (unlock !== undefined && unlockMs !== null) {
    const lock: AccountLock = { attribute: 'accountUnlockTime', value: unlock, since: null, byAdministrator: false };
    // 389 DS's lockout without passwordUnlock: the epoch, until an administrator resets it.
    if (unlockMs === 0) return { lock: { ...lock, until: null }, ended: null, ignored };
    const until = new Date(unlockMs).toISOString();
    if (unlockMs > now) return { lock: { ...lock, until }, ended: null, ignored };
    ended ??= { ...lock, until, endedAt: until };
  }
  return { lock: null, ended, ignored };
}

/** A password an administrator reset, as the entry says it (ppolicy's pwdReset TRUE, 389 DS's passwordExpirationTime at the epoch); null: none. */
function passwordResetOf(entry: Record<string, unknown>): string | null {
  if (holdValues(attributeOf(entry, 'pwdReset')).some((value) => value?.toLowerCase() === 'true')) return 'pwdReset TRUE';
  const expiry = holdValues(attributeOf(entry, 'passwordExpirationTime')).find((value): value is string => value !== null && generalizedTimeMs(value) === 0);
  return expiry === undefined ? null : `passwordExpirationTime ${expiry}`;
}

/** What a user's bind answered: the password taken or not, on which server, and the password policy control's answer (undefined: none came, or none was asked). */
interface BindAnswer {
  readonly ok: boolean;
  readonly url: string;
  readonly policy: PasswordPolicyAnswer | 'unreadable' | undefined;
  /** A bind refused with one of USER_BIND_REFUSALS (not ok): the server's result, which no password changes. */
  readonly refused?: ResultCodeError;
}

/**
 * Result codes by which a server refuses a user's bind for that user, whatever the password
 * (verified with 389 DS 2.3): an answer about the entry, not the server's trouble. Each is told
 * to the client as a wrong password, and counted as one: told as a temporary failure (as any
 * other code is), one login per name, without the password, would show a guesser which accounts
 * are disabled, and a few wrong guesses which exist. Busy (51), unavailable (52) and the server's
 * own failures (operationsError 1, timeLimitExceeded 3, adminLimitExceeded 11, other 80) stay
 * temporary; so does noSuchObject (32, the entry renamed or deleted since it was found: the next
 * login finds it again), which no guesser can bring about.
 */
const USER_BIND_REFUSALS: ReadonlyMap<number, string> = new Map([
  // 389 DS: locked out by its password policy (passwordLockout: "Exceed password retry limit"),
  // or inactive too long (the Account Policy plugin).
  [19, 'constraintViolation'],
  // The entry may not bind with a password (a server's rule for the entry, not for the request).
  [48, 'inappropriateAuthentication'],
  // An ACL that denies the entry's password to binds: a way to disable accounts.
  [50, 'insufficientAccessRights'],
  // 389 DS: an inactivated account (nsAccountLock: true; FreeIPA's ipa user-disable).
  [53, 'unwillingToPerform'],
]);

/** The server's own text of a ResultCodeError, without the " Code: 0x.." ldapts adds (ldapts's default text when the server sent none). */
function serverText(error: ResultCodeError): string {
  return error.message.replace(/ ?Code: 0x[0-9a-f]+$/, '');
}

/**
 * What a client is told of a password that expired, or that an administrator reset and that must
 * be changed (the password was right). No "wait": fetchmail reads a POP3 -ERR with it as temporary,
 * and this one is not.
 */
const PASSWORD_EXPIRED_TEXT = 'Your password has expired, please change it and log in again.';
const PASSWORD_MUST_CHANGE_TEXT = 'Your password was reset and must be changed, please change it and log in again.';

/** Idle user-bind connections kept per server; a bind simply replaces the previous identity. */
const MAX_IDLE_BIND_CONNECTIONS = 16;

/**
 * How long a server that failed a login's search or bind, or could not be reached, is passed
 * over while another of directory.urls is not: a first server that fails in part (binds that
 * hang, searches past the deadline) would otherwise cost every login its deadline before the
 * retry on the next one.
 */
export const SERVER_HOLD_DOWN_MS = 30_000;

/** A server a login is not to use (its search or bind failed there), and the failure to give when no other can be had. */
interface AvoidedServer {
  readonly url: string;
  readonly failure: MailfrontError;
}

/** How a failed LDAP call is reported in metrics: a user bind refused for its user (USER_BIND_REFUSALS) as a wrong password, no error of the server. */
function ldapResult(error: unknown, operation?: LdapOperation): LdapResult {
  if (error instanceof InvalidCredentialsError) return 'invalid-credentials';
  if (operation === 'user-bind' && error instanceof ResultCodeError && USER_BIND_REFUSALS.has(error.code)) return 'invalid-credentials';
  const message = error instanceof Error ? error.message : String(error);
  return /timeout|timed out/i.test(message) ? 'timeout' : 'error';
}

/** How to reach one LDAP server. */
export interface LdapClientOptions {
  /** Base TLS options (CA, minimum version); SNI is added per URL. */
  readonly tls: ConnectionOptions;
  readonly starttls: boolean;
  readonly operationTimeoutMs: number;
  readonly connectTimeoutMs: number;
  /**
   * Replay the last bind after ldapts reconnects on its own: without it a service search would
   * run anonymously and could answer "no such user" for a directory glitch. Never for user
   * binds, whose identity must not be replayed. (ldapts does not apply it after StartTLS, so
   * users of a service connection also check that it is usable() before each use.)
   */
  readonly autoRebind: boolean;
  /** Bytes the server may send in answer to one operation (default MAX_LDAP_ANSWER_BYTES); see boundAnswers(). */
  readonly maxAnswerBytes?: number;
}

/** A server's answer passed the connection's byte bound, or was not LDAP; the connection was closed. */
export class LdapAnswerRefusedError extends Error {
  override readonly name = 'LdapAnswerRefusedError';
  constructor(
    readonly url: string,
    readonly limitBytes: number,
    what: string,
  ) {
    super(`${url} ${what}; the connection was closed`);
  }
}

/** An operation under way on an ldapts (8.2) Client, by its messageID (messageDetailsByMessageId). */
interface MessageDetails {
  readonly message: LdapRequest;
  resolve(answer?: unknown): void;
  reject(error: Error): void;
  readonly timeoutTimer: NodeJS.Timeout | null;
  readonly socket: unknown;
}

/** A request as ldapts (8.2) sends it: its messageID and its BER. */
interface LdapRequest {
  readonly messageId: number;
  /** A bind's password (absent on other requests): its debug line is redacted. */
  readonly password?: unknown;
  write(): Buffer;
}

/** What boundAnswers() and sendRequest() use of an ldapts (8.2) Client beyond its API. */
interface ClientInternals {
  socketDataHandler: (data: Buffer) => void;
  readonly messageDetailsByMessageId: Map<string, MessageDetails>;
  readonly messageParser?: { buffer?: Buffer };
  readonly connected: boolean;
  readonly socket?: { write(bytes: Buffer, written: () => void): unknown };
  readonly clientOptions: { readonly timeout?: number };
  _destroySocket(socket: unknown): void;
  _send(message: LdapRequest): Promise<unknown>;
}

/** ldapts's debug log (NODE_DEBUG=ldapts): sendRequest() writes its lines as ldapts's _send() did. */
const ldaptsDebug = debuglog('ldapts');

/**
 * Sends `message` on `client`'s connection and resolves with the answer: ldapts's (8.2)
 * Client._send(), which every client openLdapClient() opens uses in its place (boundAnswers()),
 * the same steps in the same order (the request's BER, its deadline, its entry in
 * messageDetailsByMessageId, one write), with two differences. ldapts made the request's debug
 * line, JSON.stringify() of the whole request (of a copy of a bind's, the password redacted),
 * whether its debug log was on or not: 1.7 % of a cold mailfront's CPU in perf, a user search and
 * a bind each login. Here the line is made only when the log is on, which it is or is not for the
 * life of the process (NODE_DEBUG is read at its start). And the deadline's timer is cleared as
 * the answer settles, not in a finally() of one more promise. `failed` is told of a failure
 * first, with the error.
 */
function sendRequest(client: ClientInternals, key: string, message: LdapRequest, failed: (error: Error) => void): Promise<unknown> {
  const socket = client.socket;
  if (!client.connected || socket === undefined) throw new Error('Socket connection not established');
  const bytes = message.write();
  const timeoutMs = client.clientOptions.timeout;
  let timer: NodeJS.Timeout | null = null;
  let settle!: { resolve(answer: unknown): void; reject(error: unknown): void };
  const sent = new Promise<unknown>((resolve, reject) => {
    settle = { resolve, reject };
  });
  const answered = (answer?: unknown): void => {
    if (timer !== null) clearTimeout(timer);
    settle.resolve(answer);
  };
  const refused = (error: Error): void => {
    if (timer !== null) clearTimeout(timer);
    if (typeof error === 'object' && error !== null) failed(error);
    settle.reject(error);
  };
  if (timeoutMs) {
    timer = setTimeout(() => {
      const details = client.messageDetailsByMessageId.get(key);
      if (details !== undefined) {
        client._destroySocket(details.socket);
        refused(new Error(`${message.constructor.name}: Operation timed out`));
      }
    }, timeoutMs);
  }
  client.messageDetailsByMessageId.set(key, { message, resolve: answered, reject: refused, timeoutTimer: timer, socket });
  if (ldaptsDebug.enabled) ldaptsDebug(`Sending message: ${JSON.stringify(message.password ? { ...message, password: '__redacted__' } : message)}`);
  socket.write(bytes, () => {
    if (message instanceof AbandonRequest) {
      ldaptsDebug(`Abandoned message: ${message.messageId}`);
      client.messageDetailsByMessageId.delete(key);
      answered();
    } else if (message instanceof UnbindRequest) {
      ldaptsDebug('Unbind success. Ending socket');
      if (client.socket !== undefined) client._destroySocket(client.socket);
    } else ldaptsDebug('Message sent successfully.');
  });
  return sent;
}

/** Bytes received by each bounded client, all its connections and operations together. */
const receivedBytes = new WeakMap<Client, { total: number }>();

/** Bytes `client` has received since it was opened (0 for a client not opened by openLdapClient). */
export function ldapBytesReceived(client: Client): number {
  return receivedBytes.get(client)?.total ?? 0;
}

/** Bytes announced in answer to the operation whose failure is the key (see ldapAnswerBytes()). */
const answerBytesOfFailure = new WeakMap<object, number>();

/**
 * Bytes the server had announced in answer to the operation that failed with `error` (0 for an
 * error that is not an operation's failure on a client opened by openLdapClient). Unlike the
 * client's count, it is the operation's own: on a connection that carries many operations at
 * once, others' answers say nothing of whether the server was answering this one.
 */
export function ldapAnswerBytes(error: unknown): number {
  return typeof error === 'object' && error !== null ? (answerBytesOfFailure.get(error) ?? 0) : 0;
}

/** No bytes: the start of a message not yet begun (boundAnswers()), shared rather than allocated per message, and never written to. */
const NO_BYTES = Buffer.alloc(0);

/** Longest LDAPMessage header read: SEQUENCE tag, a length of up to 1 + 4 bytes, an INTEGER messageID of up to 4 bytes. */
const MAX_MESSAGE_HEADER_BYTES = 1 + 5 + 2 + 4;

/**
 * The length and messageID of the LDAPMessage `head` begins with (RFC 4511 §4.1.1, BER with
 * definite lengths as §5.1 requires), 'more' when `head` is too short to tell, or 'bad' when it
 * does not begin an LDAPMessage.
 */
function messageHeader(head: Buffer): { readonly length: number; readonly id: number } | 'more' | 'bad' {
  if (head.length < 2) return head.length === 0 || head[0] === 0x30 ? 'more' : 'bad';
  if (head[0] !== 0x30) return 'bad';
  const outer = berLength(head, 0);
  if (outer === 'short') return 'more';
  if (outer === 'bad') return 'bad';
  const { start: at, length: contentLength } = outer;
  if (head.length < at + 2) return 'more';
  const idSize = head[at + 1]!;
  if (head[at] !== 0x02 || idSize < 1 || idSize > 4 || 2 + idSize > contentLength) return 'bad';
  if (head.length < at + 2 + idSize) return 'more';
  let id = 0;
  for (let i = at + 2; i < at + 2 + idSize; i++) id = id * 256 + head[i]!;
  return { length: at + contentLength, id };
}

/**
 * Hands a search's entries (and references) to its answer one at a time. ldapts (8.2) does it
 * with push(...entries) when the answer ends, the entries as call arguments: past about 120,000
 * in one answer (a store-map server that ignores paging sends the whole map as one page) the
 * stack overflows and the search fails with a RangeError. Run before ldapts's own handler, which
 * then finds nothing left to move.
 */
function gatherSearchAnswers(client: Client): void {
  const internals = client as unknown as { readonly messageParser?: { prependListener(event: 'message', listener: (message: unknown) => void): unknown }; readonly messageDetailsByMessageId: Map<string, { searchEntries?: unknown[]; searchReferences?: unknown[] }> };
  if (typeof internals.messageParser?.prependListener !== 'function' || !(internals.messageDetailsByMessageId instanceof Map)) {
    throw new Error("ldapts no longer has the messageParser and messageDetailsByMessageId that gather a search's entries");
  }
  internals.messageParser.prependListener('message', (message) => {
    if (!(message instanceof SearchResponse)) return;
    const details = internals.messageDetailsByMessageId.get(String(message.messageId));
    if (details === undefined) return;
    for (const entry of details.searchEntries ?? []) message.searchEntries.push(entry as (typeof message.searchEntries)[number]);
    for (const reference of details.searchReferences ?? []) message.searchReferences.push(reference as (typeof message.searchReferences)[number]);
    delete details.searchEntries;
    delete details.searchReferences;
  });
}

/**
 * Bounds what the server may send on `client`'s connections: at most `limitBytes` in answer to
 * one operation (the messages with its messageID, counted as each message's header announces
 * its length), only LDAP messages, and only answers to operations under way (or at most as much
 * of unsolicited notifications per connection). ldapts (8.2) keeps a message until it is whole, and every
 * entry of a search until the search's end, so a server that ignores sizeLimit and streams
 * entries, or announces one huge message, would otherwise grow the heap (by about six times what
 * it sent) until the operation deadline; bytes that are not an LDAP message would be kept for
 * ever. Past the bound the connection is closed before the bytes reach ldapts: the operation
 * whose answer passed it fails with an LdapAnswerRefusedError, the others on the connection as on
 * a lost connection (see refuse()). Exported for its tests.
 */
export function boundAnswers(client: Client, url: string, limitBytes: number): void {
  const internals = client as unknown as ClientInternals;
  const deliver = internals.socketDataHandler;
  if (typeof deliver !== 'function' || !(internals.messageDetailsByMessageId instanceof Map) || typeof internals._destroySocket !== 'function' || typeof internals._send !== 'function' || typeof internals.clientOptions?.timeout !== 'number') {
    // clientOptions.timeout: the operation deadline sendRequest() sets, as ldapts's _send() did (0: none).
    throw new Error('ldapts no longer has the socketDataHandler, messageDetailsByMessageId, _destroySocket, _send and clientOptions.timeout that bound LDAP answers');
  }
  const counter = { total: 0 };
  receivedBytes.set(client, counter);
  /** The connection whose stream is being read (ldapts replaces it on StartTLS and on reconnection). */
  let socket: unknown = null;
  /** The start of a message whose header is not whole yet. */
  let head = NO_BYTES;
  /** Bytes of the current message still to come. */
  let left = 0;
  /** Bytes announced so far in answer to each operation under way, by messageID. */
  const perOperation = new Map<string, { bytes: number }>();
  /** Bytes of unsolicited notifications (messageID 0) announced on this connection. */
  let unsolicited = 0;
  // Each operation's count begins when it is sent, and a failure carries it (ldapAnswerBytes()).
  // sendRequest() in place of ldapts's own _send(): `this` is the client, as for ldapts's method.
  internals._send = function (this: ClientInternals, message: LdapRequest): Promise<unknown> {
    const key = String(message.messageId);
    const answer = { bytes: 0 };
    perOperation.set(key, answer);
    try {
      return sendRequest(this, key, message, (error) => answerBytesOfFailure.set(error, answer.bytes));
    } catch (error) {
      if (perOperation.get(key) === answer) perOperation.delete(key);
      throw error;
    }
  };
  /**
   * Closes the connection `from`, which sent `what`. The operation `culprit` names (the one whose
   * answer passed the bound) fails with an LdapAnswerRefusedError; the others pending on the
   * connection asked for nothing wrong and fail as on any lost connection, so that their callers'
   * usual retry on a new connection runs (a search connection carries many users' searches at
   * once). Without a culprit (bytes that are not LDAP: nothing on that stream can be trusted any
   * more) every operation fails with the LdapAnswerRefusedError.
   */
  const refuse = (from: unknown, what: string, culprit?: string): void => {
    const refused = new LdapAnswerRefusedError(url, limitBytes, what);
    const lost = new Error(`the connection was closed before the answer came: ${url} ${what}`);
    for (const [key, details] of internals.messageDetailsByMessageId) {
      if (details.socket !== from) continue;
      internals.messageDetailsByMessageId.delete(key);
      details.reject(culprit === undefined || key === culprit ? refused : lost);
    }
    // The part of a message ldapts holds would be read as the start of the next connection's stream.
    if (internals.messageParser !== undefined) delete internals.messageParser.buffer;
    internals._destroySocket(from);
    socket = null;
  };
  // A function, not an arrow: the socket that emitted 'data' is `this`.
  internals.socketDataHandler = function (this: unknown, data: Buffer): void {
    if (this !== socket) {
      socket = this;
      head = NO_BYTES;
      left = 0;
      unsolicited = 0;
    }
    counter.total += data.length;
    let offset = 0;
    while (offset < data.length) {
      if (left === 0) {
        const next = data.subarray(offset, offset + MAX_MESSAGE_HEADER_BYTES - head.length);
        const start = head.length === 0 ? next : Buffer.concat([head, next]);
        const header = messageHeader(start);
        if (header === 'more') {
          // A copy: a view would keep the whole chunk.
          head = Buffer.from(start);
          break;
        }
        if (header === 'bad') {
          refuse(this, `sent bytes that are not an LDAP message (0x${start.subarray(0, 8).toString('hex')})`);
          return;
        }
        const key = String(header.id);
        // Every message answers an operation under way, but for unsolicited notifications
        // (messageID 0, RFC 4511 §4.4), bounded per connection as an answer is. ldapts reads and
        // drops any other one, so a server answering an operation that ended (on an idle kept
        // connection, say) could keep it parsing, a core busy, for as long as it liked.
        if (key !== '0' && !internals.messageDetailsByMessageId.has(key)) {
          refuse(this, `sent a message for messageID ${key}, which no operation under way has`, key);
          return;
        }
        let answer = key === '0' ? undefined : perOperation.get(key);
        if (key !== '0' && answer === undefined) perOperation.set(key, (answer = { bytes: 0 }));
        const announced = (answer === undefined ? unsolicited : answer.bytes) + header.length;
        if (announced > limitBytes) {
          const what = key === '0' ? `sent more than ${limitBytes} bytes of unsolicited notifications (messageID 0)` : `sent more than ${limitBytes} bytes in answer to one operation (messageID ${key}: ${announced} bytes so far)`;
          refuse(this, what, key);
          return;
        }
        if (answer === undefined) unsolicited = announced;
        else answer.bytes = announced;
        // The header's bytes already read from earlier chunks are part of the message.
        left = header.length - head.length;
        head = NO_BYTES;
      }
      const taken = Math.min(left, data.length - offset);
      left -= taken;
      offset += taken;
    }
    // As ldapts's own method, should its arrow function become one: `this` the client, not the socket.
    deliver.call(client, data);
    // Operations that ended are forgotten (a failure keeps its count: ldapAnswerBytes()).
    for (const key of perOperation.keys()) if (!internals.messageDetailsByMessageId.has(key)) perOperation.delete(key);
  };
}

/**
 * An ldapts client for `url`, TLS-secured as configured (StartTLS done), not yet bound. The one
 * place that knows ldapts speaks TLS from the first byte whenever tlsOptions are given (so they
 * are passed for ldaps:// only) and that SNI carries host names only (RFC 6066 §3).
 */
export async function openLdapClient(url: string, options: LdapClientOptions): Promise<Client> {
  // An IPv6 literal's hostname keeps its brackets in a URL ('[::1]'): the address is without them.
  const host = new URL(url).hostname.replace(/^\[(.*)\]$/, '$1');
  const literal = isIP(host) !== 0;
  const tls: ConnectionOptions = literal ? { ...options.tls } : { ...options.tls, servername: host };
  // The identity the server's certificate must show is the URL's host (RFC 4513 §3.1.3), an IP
  // address included. ldaps:// connects to it by name, and node checks that; StartTLS wraps the
  // socket already open, and without a host or servername node checks the certificate against
  // 'localhost': a certificate naming only localhost was taken for ldap://127.0.0.1, and one
  // naming 127.0.0.1 refused.
  const starttlsOptions: ConnectionOptions = literal ? { ...tls, host } : tls;
  const client = new Client({
    url,
    timeout: options.operationTimeoutMs,
    connectTimeout: options.connectTimeoutMs,
    ...(url.startsWith('ldaps:') ? { tlsOptions: tls } : {}),
    strictDN: true,
    autoRebind: options.autoRebind && !options.starttls,
  });
  boundAnswers(client, url, options.maxAnswerBytes ?? MAX_LDAP_ANSWER_BYTES);
  gatherSearchAnswers(client);
  if (options.starttls && url.startsWith('ldap:')) {
    // ldapts bounds the connect and the extended operation, not the TLS handshake after it: a
    // server that goes quiet there would hold the caller (and a cached service connection's
    // every waiter) for ever. The whole upgrade gets the two deadlines together.
    const deadlineMs = options.connectTimeoutMs + options.operationTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        client.startTLS(starttlsOptions),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no StartTLS handshake with ${url} within ${deadlineMs} ms`)), deadlineMs);
        }),
      ]);
    } catch (error) {
      // Not awaited: on a stalled handshake the unbind's write may never complete; it closes the socket regardless.
      void client.unbind().catch(() => undefined);
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }
  return client;
}

/**
 * True when `client` can carry a request now. ldapts's `isConnected` is not enough after
 * StartTLS: ldapts (8.2) goes on watching the plain socket under the TLS one and ignores its
 * close, so a connection the server has closed (a restart, an idle timeout) looks connected for
 * ever, and a request sent on it waits out the operation deadline. The TLS socket is checked too.
 */
function usable(client: Client): boolean {
  if (!client.isConnected) return false;
  const socket = (client as unknown as { socket?: { readonly destroyed: boolean; readonly writable: boolean } }).socket;
  return socket !== undefined && !socket.destroyed && socket.writable;
}

/** The search of base_dn itself that tells whether a server has it, for the service account (a probe of the settings, readiness): no attribute asked for. */
const BASE_ENTRY_CHECK: Readonly<SearchOptions> = { scope: 'base', filter: '(objectClass=*)', attributes: ['1.1'], sizeLimit: 1 };

/** The TLS options of a directory's LDAP connections: `ca` (directory.ca_file's certificates) or the system's, TLS 1.2 at least. */
function directoryTls(ca: Buffer | undefined): ConnectionOptions {
  return ca ? { ca, minVersion: 'TLSv1.2' } : { minVersion: 'TLSv1.2' };
}

/** How a directory opens an LDAP connection under `config` (a probe of its settings too, as the directory would). */
function directoryClientOptions(config: DirectoryConfig, tls: ConnectionOptions, autoRebind: boolean): LdapClientOptions {
  const { starttls, operationTimeoutMs, connectTimeoutMs } = config;
  return { tls, starttls, operationTimeoutMs, connectTimeoutMs, autoRebind };
}

/**
 * Tries `config` as a directory would use it, on a connection of its own: the service bind and a
 * base search of base_dn, on each of directory.urls in turn (each within the connect and
 * operation deadlines) until one takes both. 'refused' when none did and a server answered with
 * a refusal of the settings (SETTINGS_REFUSALS), the first such; 'unreachable' when no server
 * answered so. A search refused otherwise (an ACL) is an answer: the settings work. For a reload
 * and check-config, before the settings are put in force.
 */
export async function probeDirectory(config: DirectoryConfig, ca: Buffer | undefined): Promise<DirectoryHealth> {
  const options = directoryClientOptions(config, directoryTls(ca), false);
  const { operationTimeoutMs } = config;
  const failures: string[] = [];
  let refusal: DirectoryRefusal | undefined;
  for (const url of config.urls) {
    let client: Client | undefined;
    let step: 'bind' | 'search' = 'bind';
    try {
      client = await openLdapClient(url, options);
      await client.bind(config.bindDn, config.bindPassword);
      step = 'search';
      await client.search(config.baseDn, { ...BASE_ENTRY_CHECK, timeLimit: Math.ceil(operationTimeoutMs / 1000) });
      return { state: 'answers' };
    } catch (error) {
      const refused = settingsRefusal(error, step, url);
      if (refused !== undefined) refusal ??= refused;
      else if (step === 'search' && error instanceof ResultCodeError) return { state: 'answers' };
      else failures.push(`${url}: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      client?.unbind().catch(() => undefined);
    }
  }
  return refusal !== undefined ? { state: 'refused', refusal } : unreachable(failures.join('; '));
}

/** What a call on a closed directory (shut down, or replaced by a reload) fails with. */
function closedError(): MailfrontError {
  return new MailfrontError(DIRECTORY_CLOSED, 'auth-tempfail', 'the directory is shutting down');
}

/** A user's entry as a search found it: on which server, its DN and store, and when it was read. */
interface FoundEntry {
  readonly url: string;
  readonly dn: string;
  readonly store: string | null;
  /** Values of the store attribute: more than one is an entry that names no store (see storeValue()). */
  readonly storeValues: number;
  /** The values of the login attribute (directory.login_attribute), as read: the names the entry gives its user. */
  readonly loginNames: readonly string[];
  /** What directory.hold_attribute says of the user (no hold when it is not set). */
  readonly hold: Hold;
  /**
   * What locks the account (accountLockOf()), null: nothing. Absent: not read (a password login's
   * search: its bind is refused for a lock by the server itself); a bearer login reads it.
   */
  readonly locked?: string | null;
  readonly readAt: number;
}

interface ServiceConnection {
  readonly url: string;
  readonly client: Client;
}

/** A search's answer on a service connection: the server that gave it, and its entries. */
interface ServiceAnswer {
  readonly url: string;
  readonly entries: readonly Entry[];
}

/** One of the service connections: the connection being opened or open, and the one it resolved to. */
interface ServiceSlot {
  opening: Promise<ServiceConnection> | null;
  /** What `opening` resolved to, so that a dead connection can be dropped synchronously. */
  open: ServiceConnection | null;
}

/** An LDAP directory over one or more servers. */
/** What lookup() and findForLogin() answer of an entry found for `user`. */
function foundUser(user: string, found: FoundEntry): DirectoryUser {
  return { user, loginNames: found.loginNames, dn: found.dn, store: found.store, ...(found.storeValues > 1 ? { storeValues: found.storeValues } : {}), ...(found.hold.reason !== null ? { hold: found.hold.reason } : {}), ...(typeof found.locked === 'string' ? { locked: found.locked } : {}) };
}

export class LdapDirectory implements Directory {
  /**
   * The service-bound connections for searches, `config.searchConnections` of them, each opened
   * when a search first needs it; searches take them in turn. LDAP multiplexes operations on a
   * connection, so each carries many searches at once; several spread them over the server's
   * connection handling, and one that breaks holds up only its share until it is reopened.
   */
  private readonly serviceSlots: ServiceSlot[];
  private nextServiceSlot = 0;
  private readonly tlsOptions: ConnectionOptions;
  private closed = false;
  /** close() was called: no new login is taken (the ones under way may finish within its grace). */
  private closing = false;
  /** What accountAttributes() found (a promise while it asks; null: not asked yet, or it failed). */
  private accountSchema: Promise<ReadonlySet<string>> | null = null;
  /** Logins under way, and who waits for them all to end (close() with a grace). */
  private inFlight = 0;
  private onIdle: (() => void) | null = null;
  /** Idle connections for user binds, per URL (opening one per login costs a TCP and maybe a TLS handshake). */
  private readonly bindIdle = new Map<string, Client[]>();
  /** user (with byProtocol, user NUL protocol: see entryKey()) → entry found by the last search, for `config.entryCacheTtlMs`. */
  private entries: LRUCache<string, FoundEntry> | null;
  /** directory.user_filter holds {protocol}: whether a user is found depends on the login's protocol. */
  readonly byProtocol: boolean;
  /** The user filter template cut at each {user} (userFilterParts()), once here rather than at every login; null with byProtocol. */
  private readonly userFilterParts: readonly string[] | null;
  /** With byProtocol, the user filter template of each protocol, {protocol} replaced and cut at each {user} once here rather than at every login. */
  private readonly protocolTemplates: Readonly<Record<Protocol, readonly string[]>> | null;
  /** Counts forget() calls: a search that began before one does not cache its answer. */
  private forgets = 0;
  /** loginAttributeOf(): read with the store attribute in each user search; undefined: none (the name typed). */
  private readonly loginAttribute: string | undefined;
  /** What a user search asks for: the store attribute, and the login and hold attributes if any. */
  private readonly searchAttributes: string[];
  /** Entries (DNs) whose hold value that cannot be told was logged lately (see HOLD_WARNING_INTERVAL_MS). */
  private readonly holdWarned: LRUCache<string, true>;
  /** url → until when (performance.now(), which no step of the wall clock moves) it is passed over: it failed a login or could not be reached (see SERVER_HOLD_DOWN_MS). */
  private readonly heldDown = new Map<string, number>();
  /** A password policy control that could not be read was logged (once per directory). */
  private policyUnreadableWarned = false;
  /** Service connections taken out of their slot, each closed by its timer once the searches on it are past their deadline. */
  private readonly retiring = new Map<Client, NodeJS.Timeout>();

  constructor(
    private readonly config: DirectoryConfig,
    private readonly log: Logger,
    private readonly metrics?: Metrics,
    /** directory.ca_file's content as the caller read it (a reload hands over the bytes it hashed); read here when not given. */
    ca: Buffer | undefined = config.caFile ? readCaCertificates(config.caFile, 'directory.ca_file') : undefined,
    /**
     * No cache of entries until takeEntries() (a reload's directory, which may take over the one
     * in force): allocating one of cache_max_entries only to drop it blocked the process for about
     * 0.35 s at 2,000,000.
     */
    entriesFromTakeover = false,
  ) {
    this.tlsOptions = directoryTls(ca);
    this.loginAttribute = loginAttributeOf(config);
    this.searchAttributes = [config.storeAttribute, ...(this.loginAttribute === undefined ? [] : [this.loginAttribute]), ...(config.holdAttribute === undefined ? [] : [config.holdAttribute])];
    this.holdWarned = new LRUCache({ max: 1000, ttl: Math.max(HOLD_WARNING_INTERVAL_MS, config.entryCacheTtlMs) });
    this.entries = entriesFromTakeover ? null : newEntryCache(config);
    this.byProtocol = filterUsesProtocol(config.userFilter);
    this.userFilterParts = this.byProtocol ? null : userFilterParts(config.userFilter);
    this.protocolTemplates = this.byProtocol ? (Object.fromEntries(PROTOCOLS.map((p) => [p, userFilterParts(protocolFilter(config.userFilter, p))])) as Record<Protocol, readonly string[]>) : null;
    this.serviceSlots = Array.from({ length: Math.max(1, config.searchConnections) }, () => ({ opening: null, open: null }));
  }

  /** Times an LDAP call for metrics. */
  private async timed<T>(operation: LdapOperation, work: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      const result = await work();
      this.metrics?.ldapRequest(operation, 'success', (performance.now() - started) / 1000);
      return result;
    } catch (error) {
      this.metrics?.ldapRequest(operation, ldapResult(error, operation), (performance.now() - started) / 1000);
      throw error;
    }
  }

  private clientOptions(autoRebind: boolean): LdapClientOptions {
    return directoryClientOptions(this.config, this.tlsOptions, autoRebind);
  }

  private async openBound(url: string, dn: string, password: string): Promise<Client> {
    const client = await openLdapClient(url, this.clientOptions(true));
    try {
      await client.bind(dn, password);
      return client;
    } catch (error) {
      await client.unbind().catch(() => undefined);
      throw error;
    }
  }

  /** The next service slot in turn. */
  private takeServiceSlot(): ServiceSlot {
    const slot = this.serviceSlots[this.nextServiceSlot]!;
    this.nextServiceSlot = (this.nextServiceSlot + 1) % this.serviceSlots.length;
    return slot;
  }

  /**
   * Passes `url` over for SERVER_HOLD_DOWN_MS: it failed a login as a server (no answer, an
   * answer past the deadline or the byte bound, busy or unavailable), or could not be reached,
   * and there are others.
   */
  private holdDown(url: string, reason: string): void {
    if (this.closed || !this.hasOtherThan(url)) return;
    if (!this.isHeldDown(url)) this.log.warn({ event: 'directory.server_held_down', url, forMs: SERVER_HOLD_DOWN_MS, reason }, 'a directory server failed; the others are tried first for a while');
    this.heldDown.set(url, performance.now() + SERVER_HOLD_DOWN_MS);
  }

  /** Whether directory.urls names a server other than `url`. */
  private hasOtherThan(url: string): boolean {
    return this.config.urls.some((other) => other !== url);
  }

  private isHeldDown(url: string): boolean {
    const until = this.heldDown.get(url);
    if (until === undefined) return false;
    if (until > performance.now()) return true;
    this.heldDown.delete(url);
    return false;
  }

  /** True when `url` is held down and another server is not: a login is not to use it. */
  private keptOff(url: string): boolean {
    return this.isHeldDown(url) && this.config.urls.some((other) => other !== url && !this.isHeldDown(other));
  }

  /** directory.urls in the order they are tried: in their order, those held down last (still tried when all others fail). */
  private urlsInTurn(): string[] {
    const up = this.config.urls.filter((url) => !this.isHeldDown(url));
    return [...up, ...this.config.urls.filter((url) => !up.includes(url))];
  }

  /**
   * Takes `connection` out of its slot, so that the next search opens one on another server,
   * without cutting short the other searches under way on it (they would fail as if the
   * server had): it is closed once their deadline has passed, unless the slot's reopening finds
   * no other server and takes it back (see serviceConnection()).
   */
  private retire(slot: ServiceSlot, connection: ServiceConnection): void {
    if (slot.open !== connection) return;
    slot.open = null;
    slot.opening = null;
    const { client } = connection;
    const timer = setTimeout(() => {
      this.retiring.delete(client);
      client.unbind().catch(() => undefined);
    }, this.config.operationTimeoutMs + this.config.connectTimeoutMs);
    timer.unref();
    this.retiring.set(client, timer);
  }

  /**
   * The slot's bound service connection, opened on the first server that answers (other than
   * `avoid`; held-down ones last). A server that cannot be reached (connect, StartTLS or the
   * service bind fails or passes its deadline) is held down too: else a server held down for a
   * failed search would be passed over for it, and each login would wait out its deadline before
   * coming back. `retired`: the connection the slot is moving off (see retire()); reached in
   * turn, its server is not opened again, the connection is taken back.
   */
  private serviceConnection(slot: ServiceSlot, avoid?: string, retired?: ServiceConnection): Promise<ServiceConnection> {
    // A directory replaced by a reload is closed while its last logins still run: they get no
    // new connection (one opened now would never be closed).
    if (this.closed) return Promise.reject(closedError());
    if (slot.opening === null) {
      const self: { opening?: Promise<ServiceConnection> } = {};
      const opening = (async () => {
        const failures: string[] = [];
        let refusal: { readonly refusal: DirectoryRefusal; readonly error: unknown } | undefined;
        for (const url of this.urlsInTurn()) {
          if (this.closed) throw closedError();
          if (url === avoid) continue;
          // Every server before it in turn failed: the connection on it is kept, not replaced
          // by a new one to the same server (one per login while the others are down).
          const taken = retired !== undefined && retired.url === url ? this.takeBack(retired) : null;
          if (taken !== null) {
            // Taken back before this function's first await (its server first in turn), the
            // opening is not the slot's yet (self.opening is set once it returns): the slot
            // must hold the connection all the same, or it could never retire or drop it.
            if (self.opening === undefined || slot.opening === self.opening) slot.open = taken;
            return taken;
          }
          let client: Client;
          try {
            client = await this.timed('service-bind', () => this.openBound(url, this.config.bindDn, this.config.bindPassword));
          } catch (error) {
            const why = `${url}: ${error instanceof Error ? error.message : String(error)}`;
            failures.push(why);
            const refused = settingsRefusal(error, 'bind', url);
            if (refused !== undefined) {
              refusal ??= { refusal: refused, error };
              this.log.error({ event: 'directory.service_bind_refused', url, bindDn: this.config.bindDn, code: refused.code, key: refused.key }, `the directory refused the service account: ${refused.name} (${refused.code})`);
            }
            this.holdDown(url, `no service connection: ${why}`);
            continue;
          }
          // Closed while this connection was being opened: close() did not see it.
          if (this.closed) {
            client.unbind().catch(() => undefined);
            throw closedError();
          }
          const connection = { url, client };
          if (slot.opening === self.opening) slot.open = connection;
          return connection;
        }
        // A server that refused the service account answered: that is no outage, but the config's fault.
        if (refusal !== undefined) {
          const failure = new MailfrontError('LDAP_SERVICE_BIND_REFUSED', 'auth-tempfail', `no directory server took the service bind: ${failures.join('; ')}`, { cause: refusal.error });
          refusalOfFailure.set(failure, refusal.refusal);
          throw failure;
        }
        throw new MailfrontError('LDAP_UNREACHABLE', 'auth-tempfail', `no directory server answered: ${failures.join('; ')}`);
      })();
      self.opening = opening;
      slot.opening = opening;
      opening.catch(() => {
        if (slot.opening === opening) slot.opening = null;
      });
    }
    return slot.opening;
  }

  /** `connection`, retired and not yet closed, back out of `retiring`; null when it was closed or cannot carry a request. */
  private takeBack(connection: ServiceConnection): ServiceConnection | null {
    const timer = this.retiring.get(connection.client);
    if (timer === undefined || !usable(connection.client)) return null;
    clearTimeout(timer);
    this.retiring.delete(connection.client);
    return connection;
  }

  private dropService(slot: ServiceSlot, connection: ServiceConnection): void {
    if (slot.open === connection) {
      slot.open = null;
      slot.opening = null;
    }
    connection.client.unbind().catch(() => undefined);
  }

  /**
   * The key of `user`'s entry in the cache of entries: with byProtocol the protocol too (user
   * names never hold NUL: normalizeUser), as an entry found for IMAP may not be one for POP3.
   */
  private entryKey(user: string, protocol: Protocol | undefined): string {
    return this.byProtocol ? `${user}\0${protocol}` : user;
  }

  /** The user filter template of a search for a login over `protocol`, cut at each {user}; with byProtocol, there must be one. */
  private templateFor(protocol: Protocol | undefined): readonly string[] {
    if (this.protocolTemplates === null) return this.userFilterParts!;
    if (protocol === undefined) throw new MailfrontError('DIRECTORY_PROTOCOL_MISSING', 'internal', 'directory.user_filter holds {protocol}, and the search was not given the protocol of a login');
    return this.protocolTemplates[protocol];
  }

  /**
   * The user's entry for a login over `protocol`, from the cache or a search. `login`: a login's
   * lookup (counted in metrics, cached); `bearer`: a bearer login's, which reads the lock
   * attributes too (LOCK_ATTRIBUTES: an entry a password login's search cached without them is
   * searched again, and the answer cached in its place); `retry`: a login's second one, after
   * the first entry's server failed (cached); `tooling`: whereis and kick, which read the
   * directory itself (neither from the cache nor into it): what the directory says now, a hold set since the entry was cached
   * included, is what an operator asks them (cached() tells what the cache says).
   */
  private async search(user: string, protocol: Protocol | undefined, use: 'login' | 'bearer' | 'retry' | 'tooling', avoid?: AvoidedServer): Promise<FoundEntry | null> {
    const template = this.templateFor(protocol);
    const entries = this.entries;
    const key = this.entryKey(user, protocol);
    const kept = use === 'tooling' ? undefined : entries?.get(key);
    const cached = use === 'bearer' && kept?.locked === undefined ? undefined : kept;
    if ((use === 'login' || use === 'bearer') && entries !== null) this.metrics?.directoryCacheLookup('entry', cached !== undefined);
    // An entry found on a server held down since is found again on one that is not (its bind would wait out the deadline).
    if (cached !== undefined && cached.url !== avoid?.url && !this.keptOff(cached.url)) return cached;
    const forgets = this.forgets;
    const found = await this.searchDirectory(user, template, use === 'bearer', avoid);
    // A search that began before forget() must not put back what it dropped; nor one that began
    // before a reload handed the cache over (takeEntries()): the new directory's forget() is not counted here.
    if (found !== null && use !== 'tooling' && forgets === this.forgets && entries === this.entries) entries?.set(key, found);
    return found;
  }

  /**
   * Searches the user on a service connection, with the user filter `template` (cut at each {user}); `lock`: the lock
   * attributes too (a bearer login's). `avoid`: a server this login is not to use (its bind
   * failed there), and the failure to give when no other server can be had.
   */
  private async searchDirectory(user: string, template: readonly string[], lock: boolean, avoidFirst?: AvoidedServer): Promise<FoundEntry | null> {
    let answer: ServiceAnswer;
    try {
      answer = await this.serviceSearch(
        'the user search',
        this.config.baseDn,
        {
          scope: 'sub',
          filter: userFilterOf(template, user),
          // The login attribute in the same search: the name the login goes on with is the entry's own.
          // A password login's search asks no more: its bind is refused for a lock by the server.
          attributes: lock ? [...this.searchAttributes, ...LOCK_ATTRIBUTES] : this.searchAttributes,
          // No size limit of our own: ldapts (8.2) drops the sizeLimitExceeded status (code 4)
          // of a search that set one, so a server whose limit for the service account is 1
          // would answer one of two entries as if it were the only one. Without it, a server
          // limit is an error (ambiguous, below) and two entries are two. What a filter that
          // matches many entries may send is bounded by the connection's answer bound.
          sizeLimit: 0,
          timeLimit: Math.ceil(this.config.operationTimeoutMs / 1000),
        },
        'base_dn',
        avoidFirst,
      );
    } catch (error) {
      // The server's own size limit cut the answer short: there was more than one entry.
      if (error instanceof ResultCodeError && error.code === 4) throw new MailfrontError('LDAP_AMBIGUOUS_USER', 'auth-tempfail', `the user search found more than one entry for "${user}"`);
      throw error;
    }
    const { url, entries } = answer;
    if (entries.length === 0) return null;
    if (entries.length > 1) throw new MailfrontError('LDAP_AMBIGUOUS_USER', 'auth-tempfail', `the user search found more than one entry for "${user}"`);
    const entry = entries[0]!;
    const { store, values } = storeValue(attributeOf(entry, this.config.storeAttribute));
    const loginNames = this.loginAttribute === undefined ? [] : loginValues(attributeOf(entry, this.loginAttribute));
    const hold = this.config.holdAttribute === undefined ? NO_HOLD : holdOf(holdValues(attributeOf(entry, this.config.holdAttribute)));
    return { url, dn: entry.dn, store, storeValues: values, loginNames, hold, ...(lock ? { locked: accountLockOf(entry) } : {}), readAt: performance.now() };
  }

  /**
   * One search on a service connection, `what` naming it in errors. `base` is base_dn (a user
   * search: noSuchObject says that server lacks it, a server's failure) or an `entry` (a base
   * search of a DN found before: noSuchObject is the answer, the entry is gone). `avoid`: a server
   * this login is not to use, and the failure to give when no other server can be had. A server's
   * own size limit (result code 4) is the caller's to read: the ResultCodeError is thrown as it is.
   */
  private async serviceSearch(what: string, base: string, options: SearchOptions, baseIs: 'base_dn' | 'entry', avoidFirst?: AvoidedServer): Promise<ServiceAnswer> {
    // One retry after a server failure, on another server when there is one (the failed one is
    // held down meanwhile, unless it answered with a result code other than busy or unavailable,
    // see isServerDown(): a first server that fails in part would fail every retry in the same
    // way, and each login would wait out its deadline twice), else on a fresh connection to the
    // same one: the kept one may have been closed by the server or be half-dead. Not when it was
    // heard from: an answer past the byte bound, or one still coming at the deadline, would come
    // again on a fresh connection (twice the wait, twice the memory).
    const slot = this.takeServiceSlot();
    let avoid = avoidFirst;
    for (let attempt = 0; attempt < 2; attempt++) {
      let connection = await this.serviceConnection(slot, avoid?.url);
      // The slot is open on a server to keep off (this login's failed one, or one held down since
      // it was opened): it moves to another.
      if (connection.url === avoid?.url || this.keptOff(connection.url)) {
        this.retire(slot, connection);
        connection = await this.serviceConnection(slot, avoid?.url, connection);
      }
      // Another search of the slot reopened it on that server meanwhile.
      if (avoid !== undefined && connection.url === avoid.url) throw avoid.failure;
      if (!usable(connection.client)) {
        this.dropService(slot, connection);
        continue;
      }
      try {
        const { searchEntries } = await this.timed('search', () => connection.client.search(base, options));
        return { url: connection.url, entries: searchEntries };
      } catch (error) {
        if (error instanceof ResultCodeError && error.code === 4) throw error;
        // The entry searched is not there (deleted, or renamed, since it was found): an answer.
        if (baseIs === 'entry' && isBaseMissing(error)) return { url: connection.url, entries: [] };
        this.dropService(slot, connection);
        const failure =
          error instanceof LdapAnswerRefusedError
            ? new MailfrontError('LDAP_ANSWER_REFUSED', 'auth-tempfail', `${what} failed: ${error.message}`, { cause: error })
            : new MailfrontError('LDAP_SEARCH_FAILED', 'auth-tempfail', `${what} failed on ${connection.url}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
        if (attempt === 1 || !isServerFailure(error)) throw failure;
        if (this.hasOtherThan(connection.url)) {
          // Without base_dn the server answers every login so, as a down one fails it (a bind's
          // noSuchObject is about its user: isServerDown alone, in the bind's retry).
          if (isServerDown(error) || isBaseMissing(error)) this.holdDown(connection.url, failure.message);
          avoid = { url: connection.url, failure };
          continue;
        }
        // This search's own answer: others on the connection may well have been answered
        // meanwhile. A missing base_dn is an answer too, the same on a fresh connection.
        const heard = error instanceof LdapAnswerRefusedError || isBaseMissing(error) || (ldapResult(error) === 'timeout' && ldapAnswerBytes(error) > 0);
        if (heard) throw failure;
      }
    }
    throw new MailfrontError('LDAP_SEARCH_FAILED', 'auth-tempfail', `${what} failed`);
  }

  /**
   * Checks a password with a simple bind on a kept bind connection (never a search connection),
   * or a new one when none is kept. A kept connection whose bind gets no answer (a firewall or
   * NAT forgot it, and no close was seen) says nothing about the server, and the others kept with
   * it have likely gone the same way: they are closed, and the bind is tried once more on a new
   * connection. An answer from the server, whatever it is, stands.
   */
  private async checkPassword(url: string, dn: string, password: string): Promise<BindAnswer> {
    const idle = this.bindIdle.get(url) ?? [];
    this.bindIdle.set(url, idle);
    let kept = idle.pop();
    // Connections the server has closed are dropped here: each would fail its bind.
    while (kept !== undefined && !usable(kept)) {
      kept.unbind().catch(() => undefined);
      kept = idle.pop();
    }
    if (kept === undefined) return this.bindOnce(url, idle, undefined, dn, password);
    try {
      return await this.bindOnce(url, idle, kept, dn, password);
    } catch (error) {
      // An answer refused for its size or form was an answer too: a new connection would get it again.
      if (error instanceof MailfrontError && (error.cause instanceof ResultCodeError || error.cause instanceof LdapAnswerRefusedError)) throw error;
      for (const client of idle.splice(0)) client.unbind().catch(() => undefined);
      return this.bindOnce(url, idle, undefined, dn, password);
    }
  }

  /**
   * One simple bind on `kept`, or on a new connection to `url`: taken or not (a wrong password,
   * or a refusal of USER_BIND_REFUSALS), with what the password policy control said
   * (directory.password_policy), or LDAP_BIND_FAILED.
   * The connection goes back to `idle` after an answer, else it is closed.
   */
  private async bindOnce(url: string, idle: Client[], kept: Client | undefined, dn: string, password: string): Promise<BindAnswer> {
    let client = kept;
    let keep = false;
    // A new one each bind: the server's answer is read into it.
    const control = this.config.passwordPolicy !== false ? new PasswordPolicyRequest() : undefined;
    try {
      client ??= await openLdapClient(url, this.clientOptions(false));
      const bound = client;
      await this.timed('user-bind', () => bound.bind(dn, password, control));
      keep = true;
      return { ok: true, url, policy: control?.answer };
    } catch (error) {
      if (error instanceof InvalidCredentialsError) {
        keep = true;
        return { ok: false, url, policy: control?.answer };
      }
      if (error instanceof ResultCodeError && USER_BIND_REFUSALS.has(error.code)) {
        keep = true;
        return { ok: false, url, policy: control?.answer, refused: error };
      }
      throw new MailfrontError('LDAP_BIND_FAILED', 'auth-tempfail', `the user bind failed on ${url}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    } finally {
      if (client !== undefined) {
        if (keep && !this.closed && idle.length < MAX_IDLE_BIND_CONNECTIONS) idle.push(client);
        else client.unbind().catch(() => undefined);
      }
    }
  }

  /**
   * What the bind's answer means for the login: throws its refusal, logs and returns the warning
   * of one let in (undefined: none), for the session to tell the user.
   * Without directory.password_policy (or from a server without the policy) there is no control's
   * answer: the bind's result alone. passwordExpired is believed on a bind taken or refused with
   * invalidCredentials: OpenLDAP and 389 DS say it only once the password is checked (a wrong one
   * gets a plain invalidCredentials), so only the password's owner is told, as Dovecot tells it
   * (RFC 5530 EXPIRED); never with a refusal that no password changes (USER_BIND_REFUSALS), which
   * is said to anyone. changeAfterReset only on a bind the server took. A lock (OpenLDAP says it
   * only with ppolicy_use_lockout, 389 DS with its refusal of a locked-out or inactivated account,
   * each for any password) and a refusal of USER_BIND_REFUSALS are told as a wrong password, the
   * reason logged only: told, they would show a guesser which accounts are locked or disabled.
   */
  private passwordPolicyVerdict(answer: BindAnswer, user: string, found: FoundEntry): PasswordWarning | undefined {
    const { policy } = answer;
    if (policy === 'unreadable' && !this.policyUnreadableWarned) {
      this.policyUnreadableWarned = true;
      this.log.warn({ event: 'directory.password_policy_unreadable', url: answer.url, dn: found.dn }, 'a directory server answered a bind with a password policy control that is no PasswordPolicyResponseValue; its answers are taken as if it had sent none (said once)');
    }
    const said = typeof policy === 'object' ? policy : undefined;
    const error = said?.error;
    const { refused } = answer;
    // The server's words, for the log: bounded, as a line of the log is.
    const result = refused === undefined ? '' : `result ${refused.code} ${USER_BIND_REFUSALS.get(refused.code) ?? ''} "${serverText(refused).slice(0, 200)}"`;
    if (error === 'accountLocked') {
      throw new WrongPasswordError(user, found.loginNames, { code: 'ACCOUNT_LOCKED', message: `the directory's password policy says the account ${found.dn} is locked (accountLocked${refused === undefined ? '' : `, ${result}`}, said whatever the password: told as a wrong password)` });
    }
    if (refused !== undefined) {
      throw new WrongPasswordError(user, found.loginNames, { code: 'USER_BIND_REFUSED', message: `the directory refused the bind of ${found.dn} on ${answer.url} with ${result}, an answer about the account whatever the password: told as a wrong password` });
    }
    if (error === 'passwordExpired') {
      throw new MailfrontError('PASSWORD_EXPIRED', 'expired', `the directory's password policy says the password of ${found.dn} has expired (passwordExpired${answer.ok ? '' : ', no grace logins left'}): the password was right`, { clientText: PASSWORD_EXPIRED_TEXT });
    }
    if (!answer.ok) throw new WrongPasswordError(user, found.loginNames);
    if (error === 'changeAfterReset') {
      throw new MailfrontError('PASSWORD_MUST_CHANGE', 'expired', `the directory's password policy says the password of ${found.dn} was reset and must be changed before it is used (changeAfterReset): the password was right`, { clientText: PASSWORD_MUST_CHANGE_TEXT });
    }
    if (said?.graceLeft !== undefined) {
      this.metrics?.passwordPolicyWarning('grace');
      this.log.info({ event: 'directory.password_grace_login', user, dn: found.dn, graceLeft: said.graceLeft }, `the user's password has expired; the directory let this login in on a grace login (${said.graceLeft} left)`);
      return { kind: 'grace', graceLeft: said.graceLeft };
    }
    if (said?.expiresInS !== undefined) {
      this.metrics?.passwordPolicyWarning('expiring');
      const expiresInDays = Math.floor(said.expiresInS / 86_400);
      this.log.info({ event: 'directory.password_expiring', user, dn: found.dn, expiresInS: said.expiresInS, expiresInDays }, `the user's password expires in ${expiresInDays} days`);
      return { kind: 'expiring', expiresAt: performance.now() + said.expiresInS * 1000 };
    }
    return undefined;
  }

  async authenticate(user: string, password: string, signal: Cancellation, protocol?: Protocol): Promise<DirectoryUser> {
    if (this.closing) throw closedError();
    return this.counted(() => this.authenticateNow(user, password, protocol), signal);
  }

  /**
   * `work`, counted among the operations a reload's close waits for (inFlight, operationEnded()),
   * and given up by its caller when `signal` fires (the work goes on to its end, and is counted
   * until then).
   */
  private counted<T>(work: () => Promise<T>, signal: Cancellation): Promise<T> {
    this.inFlight++;
    const running = (async (): Promise<T> => {
      try {
        return await work();
      } finally {
        this.operationEnded();
      }
    })();
    return raceAbort(running, signal);
  }

  private operationEnded(): void {
    if (--this.inFlight === 0 && this.onIdle !== null) this.onIdle();
  }

  private async authenticateNow(user: string, password: string, protocol: Protocol | undefined): Promise<DirectoryUser> {
    const entryOf = async (use: 'login' | 'retry', avoid?: AvoidedServer): Promise<FoundEntry> => {
      const entry = await this.search(user, protocol, use, avoid);
      if (entry === null) throw new MailfrontError('UNKNOWN_USER', 'auth-failed', `no directory entry for "${user}"`);
      return entry;
    };
    let found = await entryOf('login');
    // RFC 4513 §5.1.2: a simple bind with an empty password is an unauthenticated bind and succeeds.
    if (password.length === 0) throw new WrongPasswordError(user, found.loginNames);
    let answer: BindAnswer;
    try {
      answer = await this.checkPassword(found.url, found.dn, password);
    } catch (error) {
      // The server that found the entry (a cached one, perhaps found minutes ago) does not
      // answer the bind: forget the entry, look the user up again on another server (not that
      // one, whose searches may well work while its binds do not), and bind there once. The
      // server is held down, so that the next logins do not wait for it too. A bind it answered
      // with a result code other than busy or unavailable stands, as in checkPassword(), and
      // another server is not asked; an inactivation or a lockout does not even come here
      // (USER_BIND_REFUSALS: a wrong password), and is never asked of another server either (one
      // that has not yet replicated it, or keeps a lockout of its own, would let the user in).
      if (!(error instanceof MailfrontError) || error.code !== 'LDAP_BIND_FAILED') throw error;
      this.entries?.delete(this.entryKey(user, protocol));
      const failedUrl = found.url;
      if (!this.hasOtherThan(failedUrl) || !isServerDown(error.cause)) throw error;
      this.holdDown(failedUrl, error.message);
      found = await entryOf('retry', { url: failedUrl, failure: error });
      answer = await this.checkPassword(found.url, found.dn, password);
    }
    const warning = this.passwordPolicyVerdict(answer, user, found);
    // Said only once the password is right: to anyone else the user is one more wrong password.
    // A hold goes first: the session refuses the login with its reason, whatever the entry says
    // of its store (a move may be rewriting it).
    if (found.hold.reason !== null) {
      if (found.hold.problem !== undefined && !this.holdWarned.has(found.dn)) {
        this.holdWarned.set(found.dn, true);
        this.log.warn({ event: 'directory.hold_value_refused', user, dn: found.dn, attribute: this.config.holdAttribute, problem: found.hold.problem }, 'the hold attribute of a user\'s entry is no reason that can be told; the user is held with the default reason');
      }
      return { user, loginNames: found.loginNames, dn: found.dn, store: found.storeValues > 1 ? null : found.store, readAt: found.readAt, hold: found.hold.reason };
    }
    if (found.storeValues > 1) {
      throw new MailfrontError('USER_STORE_AMBIGUOUS', 'no-route', `the directory entry ${found.dn} has ${found.storeValues} values of ${this.config.storeAttribute}; it must have one, the user's store`);
    }
    return { user, loginNames: found.loginNames, dn: found.dn, store: found.store, readAt: found.readAt, ...(warning !== undefined ? { passwordWarning: warning } : {}) };
  }

  async lookup(user: string, signal: Cancellation, protocol?: Protocol): Promise<DirectoryUser | null> {
    const work = (async (): Promise<DirectoryUser | null> => {
      // Without a protocol (whereis, kick), the user of any protocol: the protocols in turn, the first entry found.
      for (const each of protocol === undefined && this.byProtocol ? PROTOCOLS : [protocol]) {
        const found = await this.search(user, each, 'tooling');
        if (found !== null) return foundUser(user, found);
      }
      return null;
    })();
    return raceAbort(work, signal);
  }

  async findForLogin(user: string, signal: Cancellation, protocol: Protocol): Promise<DirectoryUser | null> {
    if (this.closing) throw closedError();
    return this.counted(async () => {
      const found = await this.search(user, protocol, 'bearer');
      return found === null ? null : foundUser(user, found);
    }, signal);
  }

  /**
   * A base search of the staff member's entry with directory.master_user_filter (`{user}`
   * `staff.user`, the entry's own name as the session gives it, escaped), under the service account, with the deadlines
   * and the retry on the next server of the user search: the entry it finds lets the staff member
   * in as another user. Never from the cache of entries, nor into it. An entry gone since it was
   * found (a cached login's) is no master. A filter the LDAP client cannot parse (check-config
   * refuses one) fails the login, the connections left alone. A directory a reload is closing
   * takes none (DIRECTORY_CLOSED): the session asks the one in force.
   */
  async masterAllowed(staff: DirectoryUser, signal: Cancellation): Promise<boolean> {
    const template = this.config.masterUserFilter;
    if (template === undefined) return false;
    if (this.closing) throw closedError();
    const filter = userFilter(template, staff.user);
    try {
      FilterParser.parseString(filter);
    } catch (error) {
      throw new MailfrontError('MASTER_FILTER_INVALID', 'config', `directory.master_user_filter does not parse with the name "${staff.user}": ${error instanceof Error ? error.message : String(error)}`);
    }
    return this.counted(async () => {
      const { entries } = await this.serviceSearch('the master user check', staff.dn, { scope: 'base', filter, attributes: ['1.1'], sizeLimit: 0, timeLimit: Math.ceil(this.config.operationTimeoutMs / 1000) }, 'entry');
      return entries.length > 0;
    }, signal);
  }

  /**
   * A base search of `found`'s entry for the lock and reset attributes its directory's schema has
   * (accountAttributes()), under the service account, with the user search's deadlines and retry;
   * never from the cache of entries (the login path reads none of this: a password login's bind is
   * refused by the server itself). Its filter (readableFilter()) answers no entry when any of them
   * may not be read: then one search for each says which, for an ACL that hides one must not read
   * as "not locked". A pwdAccountLockedTime is read with its policy's pwdLockout and
   * pwdLockoutDuration (the entry's pwdPolicySubentry), when the service account may read them, to
   * tell whether slapd enforces it (pwdLockout TRUE, not in the future) and whether it ended.
   */
  async accountState(found: DirectoryUser, signal: Cancellation): Promise<AccountState> {
    if (this.closing) throw closedError();
    return this.counted(async () => {
      const schema = await this.accountAttributes();
      const lockNames = WHEREIS_LOCK_ATTRIBUTES.filter((name) => schema.has(name));
      const resetNames = PASSWORD_RESET_ATTRIBUTES.filter((name) => schema.has(name));
      const names = [...lockNames, ...resetNames];
      const search = async (base: string, filter: string, attributes: string[]): Promise<Record<string, unknown> | undefined> =>
        (await this.serviceSearch('the account lock search', base, { scope: 'base', filter, attributes, sizeLimit: 0, timeLimit: Math.ceil(this.config.operationTimeoutMs / 1000) }, 'entry')).entries[0];
      const attributes = [...names, 'pwdPolicySubentry'];
      let entry = await search(found.dn, readableFilter(names), attributes);
      let hidden: string[] = [];
      if (entry === undefined) {
        const readable = await Promise.all(names.map(async (name) => (await search(found.dn, readableFilter([name]), ['1.1'])) !== undefined));
        hidden = names.filter((_, i) => readable[i] !== true);
        entry = await search(found.dn, '(objectClass=*)', attributes);
        // The entry is gone (or hidden whole) since the lookup.
        if (entry === undefined) return { lock: 'unreadable', hidden: names, passwordReset: null };
      }
      // Any pwdAccountLockedTime, the administrator's too: slapd enforces none unless the policy's pwdLockout is TRUE.
      const lockedTime = holdValues(attributeOf(entry, 'pwdAccountLockedTime')).some((value) => value !== null);
      const policyDn = holdValues(attributeOf(entry, 'pwdPolicySubentry')).find((value): value is string => value !== null);
      const policy = lockedTime && policyDn !== undefined ? await this.lockoutPolicy(policyDn, search) : undefined;
      const { lock, ended, ignored } = accountLockView(entry, policy, Date.now());
      const resetBy = passwordResetOf(entry);
      const hiddenLock = hidden.filter((name) => (lockNames as readonly string[]).includes(name));
      const reset = resetBy !== null ? true : hidden.some((name) => (resetNames as readonly string[]).includes(name)) ? null : false;
      return {
        lock: lock ?? (hiddenLock.length > 0 ? 'unreadable' : null),
        ...(lock === null && hiddenLock.length > 0 ? { hidden: hiddenLock } : {}),
        ...(lock === null && ended !== null ? { lockEnded: ended } : {}),
        ...(lock === null && ignored !== null ? { lockIgnored: ignored } : {}),
        passwordReset: reset,
        ...(resetBy !== null ? { passwordResetBy: resetBy } : {}),
      };
    }, signal);
  }

  /**
   * The policy's pwdLockout (absent: FALSE, as slapd's ppolicy_get() leaves it) and
   * pwdLockoutDuration in ms (absent: 0, until an administrator); undefined when the service
   * account may not read both, or the duration is no number.
   */
  private async lockoutPolicy(policy: string, search: (base: string, filter: string, attributes: string[]) => Promise<Record<string, unknown> | undefined>): Promise<LockoutPolicy | undefined> {
    const entry = await search(policy, readableFilter(['pwdLockout', 'pwdLockoutDuration']), ['pwdLockout', 'pwdLockoutDuration']);
    if (entry === undefined) return undefined;
    const lockout = holdValues(attributeOf(entry, 'pwdLockout')).some((value) => value?.toUpperCase() === 'TRUE');
    const value = holdValues(attributeOf(entry, 'pwdLockoutDuration'))[0];
    if (value === undefined) return { lockout, durationMs: 0 };
    return value !== null && /^\d{1,10}$/.test(value) ? { lockout, durationMs: Number(value) * 1000 } : undefined;
  }

  /**
   * Which of the lock and reset attributes the directory's schema has, asked once (a filter on
   * one its schema lacks matches nothing, as one hidden does): 389 DS's own (its root DSE's
   * vendorName), else each asked of the subschema entry ((attributeTypes=NAME), slapd), all of
   * them when that cannot be asked (a hidden one is then "unknown", never "not locked").
   */
  private accountAttributes(): Promise<ReadonlySet<string>> {
    this.accountSchema ??= this.readAccountAttributes().catch((error: unknown) => {
      this.accountSchema = null;
      throw error;
    });
    return this.accountSchema;
  }

  private async readAccountAttributes(): Promise<ReadonlySet<string>> {
    const all: ReadonlySet<string> = new Set([...WHEREIS_LOCK_ATTRIBUTES, ...PASSWORD_RESET_ATTRIBUTES]);
    const search = async (base: string, filter: string, attributes: string[]): Promise<Record<string, unknown> | undefined> =>
      (await this.serviceSearch('the schema search', base, { scope: 'base', filter, attributes, sizeLimit: 0, timeLimit: Math.ceil(this.config.operationTimeoutMs / 1000) }, 'entry')).entries[0];
    const root = await search('', '(objectClass=*)', ['subschemaSubentry', 'vendorName']);
    if (root === undefined) return all;
    if (holdValues(attributeOf(root, 'vendorName')).some((value) => value !== null && /^389 Project$/i.test(value))) return DS389_ACCOUNT_ATTRIBUTES;
    const subschema = holdValues(attributeOf(root, 'subschemaSubentry')).find((value): value is string => value !== null);
    if (subschema === undefined) return all;
    // objectClass is in every schema: when it does not match, the subschema answers no such filter.
    const known = await Promise.all(['objectClass', ...all].map(async (name) => (await search(subschema, `(attributeTypes=${name})`, ['1.1'])) !== undefined));
    if (known[0] !== true) return all;
    return new Set([...all].filter((_, i) => known[i + 1] === true));
  }

  cached(user: string, dns: ReadonlySet<string>): CachedUser[] {
    const entries = this.entries;
    if (entries === null) return [];
    // Operator tooling: a walk of the cache, as forget() walks it.
    const userOf = (key: string): string => (this.byProtocol ? key.slice(0, key.lastIndexOf('\0')) : key);
    const found: CachedUser[] = [];
    entries.forEach((entry, key) => {
      if (userOf(key) !== user && !dns.has(entry.dn)) return;
      found.push({ cache: 'entry', dn: entry.dn, store: entry.storeValues > 1 ? null : entry.store, ...(entry.hold.reason !== null ? { hold: entry.hold.reason } : {}), expiresInMs: entries.getRemainingTTL(key) });
    });
    return found;
  }

  forget(user: string, dns: Set<string> = new Set()): number {
    this.forgets++;
    const entries = this.entries;
    if (entries === null) return 0;
    // With byProtocol the user has an entry per protocol, each keyed `user NUL protocol` (entryKey()).
    const userOf = (key: string): string => (this.byProtocol ? key.slice(0, key.lastIndexOf('\0')) : key);
    entries.forEach((entry, key) => {
      if (userOf(key) === user) dns.add(entry.dn);
    });
    const keys: string[] = [];
    entries.forEach((entry, key) => {
      if (userOf(key) === user || dns.has(entry.dn)) keys.push(key);
    });
    for (const key of keys) entries.delete(key);
    return keys.length;
  }

  /**
   * Takes over the entries `replaced` found, for as long as each had left: at a reload that
   * changed only how the servers are reached, not what they answer (the caller judges), with the
   * same entry_cache_ttl_ms and cache_max_entries (else this makes its own empty cache, made
   * here for a directory built with entriesFromTakeover). The logins still asking `replaced`
   * cache nothing more.
   */
  takeEntries(replaced: LdapDirectory | null): boolean {
    const same = replaced !== null && replaced.config.entryCacheTtlMs === this.config.entryCacheTtlMs && replaced.config.cacheMaxEntries === this.config.cacheMaxEntries;
    if (!same || replaced.entries === null || this.config.entryCacheTtlMs <= 0) {
      this.entries ??= newEntryCache(this.config);
      return false;
    }
    this.entries = replaced.entries;
    replaced.entries = null;
    return true;
  }

  cacheEntries(): Partial<Record<'auth' | 'entry', number>> {
    return this.entries === null ? {} : { entry: this.entries.size };
  }

  /**
   * Whether a directory server answers now: a base search of base_dn on a service connection,
   * within the operation deadline. An open socket is not enough (a hung server keeps it open).
   * A service bind every server that answered refused, or a base_dn the server does not have, is
   * 'refused' (SETTINGS_REFUSALS): the config's fault, which waiting does not cure. Any other
   * LDAP answer counts as an answer, a refusal by an ACL included.
   */
  async health(signal: Cancellation): Promise<DirectoryHealth> {
    try {
      const slot = this.takeServiceSlot();
      let connection = await raceAbort(this.serviceConnection(slot), signal);
      if (!usable(connection.client)) {
        this.dropService(slot, connection);
        connection = await raceAbort(this.serviceConnection(slot), signal);
      }
      // A server without base_dn is held down, as the logins' search holds it down, and the
      // next is asked: the directory takes the settings when one server does, as the logins go
      // to it. Each server once at most.
      let firstRefusal: DirectoryRefusal | undefined;
      for (let asked = 1; ; asked++) {
        if (!usable(connection.client)) return unreachable(`${connection.url}: the connection closed`);
        try {
          await raceAbort(connection.client.search(this.config.baseDn, BASE_ENTRY_CHECK), signal);
          return { state: 'answers' };
        } catch (error) {
          if (error instanceof ResultCodeError) {
            const refusal = settingsRefusal(error, 'search', connection.url);
            if (refusal === undefined) return { state: 'answers' };
            firstRefusal ??= refusal;
            if (asked >= this.config.urls.length || !this.hasOtherThan(connection.url)) return { state: 'refused', refusal: firstRefusal };
            this.holdDown(connection.url, `${refusal.name} (${refusal.code}) for base_dn ${this.config.baseDn}`);
            this.retire(slot, connection);
            // No other server to be had (down): this one's refusal is what the logins meet.
            const next = await raceAbort(this.serviceConnection(slot, connection.url, connection), signal).catch(() => null);
            if (next === null || next.url === connection.url) return { state: 'refused', refusal: firstRefusal };
            connection = next;
            continue;
          }
          // The caller stopped waiting (readiness has its own deadline): the connection may be
          // only slow, and logins' searches share it; it is left to its own operation deadline.
          if (signal.aborted) return unreachable(`${connection.url}: no answer in time`);
          // The search failed on the connection (closed, or past the operation deadline): it is
          // of no use to the searches either.
          this.dropService(slot, connection);
          return unreachable(`${connection.url}: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    } catch (error) {
      const refusal = error instanceof MailfrontError ? refusalOfFailure.get(error) : undefined;
      return refusal !== undefined ? { state: 'refused', refusal } : unreachable(error instanceof Error ? error.message : String(error));
    }
  }

  /** True when a directory server answers now and takes the directory's settings (health()). */
  async reachable(signal: Cancellation): Promise<boolean> {
    return (await this.health(signal)).state === 'answers';
  }

  async close(graceMs = 0): Promise<void> {
    this.closing = true;
    if (graceMs > 0 && this.inFlight > 0) {
      await new Promise<void>((resolve) => {
        // Not holding the process up: a stop does not wait for a replaced directory's logins.
        const timer = setTimeout(resolve, graceMs).unref();
        this.onIdle = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.onIdle = null;
    }
    this.closed = true;
    const opening = this.serviceSlots.map((slot) => slot.opening);
    for (const slot of this.serviceSlots) {
      slot.opening = null;
      slot.open = null;
    }
    for (const idle of this.bindIdle.values()) for (const client of idle.splice(0)) client.unbind().catch(() => undefined);
    for (const [client, timer] of this.retiring) {
      clearTimeout(timer);
      client.unbind().catch(() => undefined);
    }
    this.retiring.clear();
    this.entries?.clear();
    await Promise.all(opening.map((service) => service?.then((c) => c.client.unbind(), () => undefined).catch(() => undefined)));
  }
}

/** What an entry says of its hold when directory.hold_attribute is not set. */
const NO_HOLD: Hold = Object.freeze({ reason: null });

/** The cache of entries found (none when entry_cache_ttl_ms is 0): its index is allocated for cache_max_entries at once. */
function newEntryCache(config: DirectoryConfig): LRUCache<string, FoundEntry> | null {
  return config.entryCacheTtlMs > 0 ? new LRUCache({ max: config.cacheMaxEntries, ttl: config.entryCacheTtlMs }) : null;
}
