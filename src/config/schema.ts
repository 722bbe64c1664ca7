/**
 * mailfront's configuration: its types, its defaults and the reader that turns a parsed YAML
 * document into a frozen Config or a complete list of issues. File access is in load.ts.
 */
import { isIP } from 'node:net';
import { FilterParser } from 'ldapts';
import {
  DEFAULT_AUTH_FAILURE_DELAY_MS,
  DEFAULT_BACKEND_CONNECT_TIMEOUT_MS,
  DEFAULT_BACKEND_LOGIN_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_LDAP_CONNECT_TIMEOUT_MS,
  DEFAULT_LDAP_OPERATION_TIMEOUT_MS,
  DEFAULT_PREAUTH_TIMEOUT_MS,
  MAX_CACHE_ENTRIES,
} from '../limits.js';
import { CidrSet, bindAddressesOverlap, isWildcard, parseAddress, parseCidr } from '../net/cidr.js';
import type { BackendLoginMode, ProtocolName } from '../protocol/types.js';
import { readThrottleConfig } from '../auth/throttle-config.js';
import type { ThrottleConfig } from '../auth/throttle-config.js';
import { readOAuthConfig } from '../auth/oauth-config.js';
import { DEFAULT_ALERT_INTERVAL_MS, DEFAULT_EXPIRING_ALERT, DEFAULT_GRACE_ALERT, DEFAULT_PASSWORD_ALERTS, EXPIRING_ALERT_PLACEHOLDERS, GRACE_ALERT_PLACEHOLDERS, MAX_ALERT_TEXT_CHARS, alertTextProblem } from '../auth/password-policy.js';
import type { PasswordAlertsConfig } from '../auth/password-policy.js';
import type { OAuthConfig } from '../auth/oauth-config.js';
import { readConnectionLimitsConfig } from '../server/connection-limits.js';
import type { ConnectionLimitsConfig } from '../server/connection-limits.js';
import { readTlsPolicy } from '../server/tls-config.js';
import type { TlsPolicy } from '../server/tls-config.js';
import { checkBearerToken, readHttpConfig } from '../server/http.js';
import type { HttpConfig } from '../server/http.js';
import { BACKEND_PROXY_PROTOCOLS, readProxyConfig } from '../server/proxy-protocol.js';
import type { BackendProxyProtocol, ProxyListenerConfig } from '../server/proxy-protocol.js';
import {
  IssueList,
  at,
  bool,
  int,
  ldapUrlList,
  offOrInt,
  oneOf,
  optStr,
  port,
  readMapping,
  readNat64Prefixes,
  readNetworks,
  readSection,
  str,
  strList,
} from './validate.js';

export type Protocol = ProtocolName;
/** The protocols, in the order a lookup without one tries them (see Directory.lookup()). */
export const PROTOCOLS: readonly Protocol[] = ['imap', 'pop3', 'managesieve'];
export type ListenerTls = 'none' | 'starttls' | 'implicit';
export type BackendTls = 'none' | 'starttls' | 'implicit';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface TlsFiles {
  readonly cert: string;
  readonly key: string;
}

export interface ListenerConfig {
  readonly name: string;
  readonly protocol: Protocol;
  readonly host: string;
  readonly port: number;
  readonly tls: ListenerTls;
  /** Accept plaintext credentials without TLS (a trusted network, e.g. a webmail server). */
  readonly plaintextWithoutTls: boolean;
  /** The one certificate served (`certificate:`); never with `certificates`. */
  readonly certificate?: TlsFiles;
  /**
   * Certificates chosen by the server name a client asks for (SNI), the first the default
   * (`certificates:`, never empty); never with `certificate`.
   */
  readonly certificates?: readonly TlsFiles[];
  /** PROXY protocol from trusted load balancers (absent: none accepted). */
  readonly proxyProtocol?: ProxyListenerConfig;
}

/**
 * The one attribute `userFilter` compares `{user}` with (`(uid={user})` → uid), or undefined when
 * it compares it with several (`(|(uid={user})(mail={user}))`: an alias may match) or none but
 * in another form. directory.login_attribute, when not set, is that attribute: the entry's value
 * of it is the name typed (as the server matched it), so nothing changes for such a filter.
 */
export function filterLoginAttribute(userFilter: string): string | undefined {
  const equalities = [...userFilter.matchAll(/\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{user\}\s*\)/g)];
  // Any other use of {user} (a substring, an extensible match) is no equality with one attribute.
  const uses = userFilter.split('{user}').length - 1;
  const names = new Set(equalities.map((m) => m[1]!.toLowerCase()));
  return names.size === 1 && equalities.length === uses ? equalities[0]![1] : undefined;
}

/** The placeholders directory.user_filter may hold. */
export const USER_FILTER_PLACEHOLDERS = ['{user}', '{protocol}'] as const;

/** The placeholders directory.master_user_filter may hold: the staff member's own name. */
export const MASTER_FILTER_PLACEHOLDERS = ['{user}'] as const;

/**
 * True when `userFilter` holds `{protocol}`: whether a user's entry is found then depends on
 * the protocol of the login, and every cache of the directory's answers keys by it.
 */
export function filterUsesProtocol(userFilter: string): boolean {
  return userFilter.includes('{protocol}');
}

/**
 * The `{...}` in `filter` that are none of `allowed`, each once, in order. A Dovecot variable
 * (`%{protocol}`) is one too: its `%` would reach LDAP as text.
 */
export function unknownFilterPlaceholders(filter: string, allowed: readonly string[]): string[] {
  const unknown: string[] = [];
  for (const [written, percent, placeholder] of filter.matchAll(/(%?)(\{[^{}]*\})/g)) {
    if (percent === '' && allowed.includes(placeholder!)) continue;
    if (!unknown.includes(written)) unknown.push(written);
  }
  return unknown;
}

/**
 * The attribute whose value a login goes on with (directory.login_attribute, else the one
 * user_filter compares {user} with), or undefined: the name typed, which only a replay login
 * may assert (the backend checks the password against it itself).
 */
export function loginAttributeOf(directory: Pick<DirectoryConfig, 'loginAttribute' | 'userFilter'>): string | undefined {
  if (directory.loginAttribute !== undefined) return directory.loginAttribute;
  // Asked at every login: the filter is read once per config.
  let inferred = inferredLoginAttributes.get(directory);
  if (inferred === undefined) inferredLoginAttributes.set(directory, (inferred = { name: filterLoginAttribute(directory.userFilter) }));
  return inferred.name;
}

const inferredLoginAttributes = new WeakMap<object, { readonly name: string | undefined }>();

export interface DirectoryConfig {
  readonly urls: readonly string[];
  readonly bindDn: string;
  readonly bindPassword: string;
  readonly baseDn: string;
  /**
   * Search filter with `{user}` where the escaped user name goes, and optionally `{protocol}`,
   * where the login's protocol goes (imap, pop3, managesieve).
   */
  readonly userFilter: string;
  readonly storeAttribute: string;
  /**
   * The attribute holding the name the backend knows the user by, as set: the login goes on with
   * its value, not with the name typed, which user_filter may have matched as an alias. Not set:
   * the one attribute user_filter compares {user} with (loginAttributeOf()).
   */
  readonly loginAttribute?: string;
  /**
   * The attribute that holds a user (a mailbox being moved), read in the same search: absent or
   * FALSE, no hold; TRUE, held with the default reason; anything else, held with it as the reason
   * (see auth/directory.ts holdOf()). Not set: no hold is read.
   */
  readonly holdAttribute?: string;
  /**
   * An LDAP filter the entry of a user authenticated with their own password must match, in a
   * base search of that entry, to log in to another user's mailbox (a helpdesk's master login);
   * `{user}` is the authenticated user's name, escaped. Not set: nobody may (a SASL authzid other
   * than the user is refused, and a name holding the separator is an ordinary name).
   */
  readonly masterUserFilter?: string;
  /**
   * With masterUserFilter: the character a login name `target<separator>staff` is split at (the
   * first one, as Dovecot's auth_master_user_separator), or null when only a SASL authzid names
   * the target. Absent without masterUserFilter.
   */
  readonly masterUserSeparator?: string | null;
  readonly starttls: boolean;
  readonly caFile?: string;
  readonly connectTimeoutMs: number;
  readonly operationTimeoutMs: number;
  /** How long a user's entry (DN and store) found by a search is reused; 0 turns it off. */
  readonly entryCacheTtlMs: number;
  /** How long a successful authentication is reused for the same user and password; 0 turns it off. */
  readonly authCacheTtlMs: number;
  readonly cacheMaxEntries: number;
  /** Service-bound connections the searches are spread over (opened as needed). */
  readonly searchConnections: number;
  /**
   * Send the password policy request control (OpenLDAP's ppolicy) on each user's bind and act on
   * its answer: an expired password or one to change after a reset refused as such, a lock as a
   * wrong password, warnings logged. The reader always sets it; absent (a config built in code): on.
   */
  readonly passwordPolicy?: boolean;
  /**
   * What the user is told of a warning of the policy (IMAP [ALERT]: directory.password_policy as a
   * mapping, or its defaults when true). The reader sets it when the policy is on; absent: the defaults.
   */
  readonly passwordAlerts?: PasswordAlertsConfig;
}

export interface BackendConfig {
  readonly loginMode: BackendLoginMode;
  readonly proxyUser?: string;
  readonly proxyPassword?: string;
  readonly masterUserSeparator: string;
  readonly tls: BackendTls;
  readonly caFile?: string;
  /** Name expected in the backend's certificate; defaults to the slot's host. */
  readonly tlsServername?: string;
  readonly forwardClientAddress: boolean;
  /** Pass the client's own IMAP ID parameters (name, version, …) on in mailfront's ID. */
  readonly forwardClientId: boolean;
  readonly connectTimeoutMs: number;
  readonly loginTimeoutMs: number;
  /** Announce the client to the slot with a PROXY header (Dovecot `haproxy = yes` listeners, Cyrus -H). */
  readonly proxyProtocol: BackendProxyProtocol;
  /**
   * Names never asserted to a backend in the trust modes (master-user, sasl-authzid), lower-cased:
   * the backend's administrators. The proxy account is never asserted either, listed or not.
   * Undefined when the config does not set it: then the login mode's default applies
   * (reservedUsersOf), also in a profile or store that changes the mode.
   */
  readonly reservedUsers?: readonly string[];
  /**
   * Local addresses (IP literals) the connections to the slots and their probes leave from, taken
   * in turn within each family (nextSourceAddress in backend/connect.ts). Absent: the kernel picks.
   */
  readonly sourceAddresses?: readonly string[];
}

/** The family of an IP literal as the source addresses are kept apart by: 4 or 6 (a name: undefined). */
export function addressFamily(address: string): 4 | 6 | undefined {
  const family = isIP(address);
  return family === 4 || family === 6 ? family : undefined;
}

/**
 * Why a slot at `host` cannot be dialled from `config`'s source addresses, or null when it can:
 * an IP literal of a family none of them has (an IPv4 source cannot reach an IPv6 slot). A host
 * name is looked up at each connection, and dialled at an address of a family they have.
 */
export function sourceFamilyProblem(host: string, config: Pick<BackendConfig, 'sourceAddresses'>): string | null {
  const sources = config.sourceAddresses;
  const family = addressFamily(host);
  if (sources === undefined || family === undefined || sources.some((a) => addressFamily(a) === family)) return null;
  return `an IPv${family === 4 ? 6 : 4} address, or an IPv${family} address in the store's source_addresses (backend.source_addresses, its backend_profile's or its own, holds IPv${family === 4 ? 6 : 4} addresses only: a connection leaves from an address of the slot's family)`;
}

/**
 * backend.reserved_users when not set, by login mode. sasl-authzid is Cyrus's: `cyrus` is the
 * administrator of its shipped imapd.conf (`admins: cyrus`) and of its documentation. In
 * master-user mode (Dovecot) a name carries no privilege of its own (Dovecot's master users log
 * in as "user*master", which the separator check refuses), so mailboxes named admin or root are
 * ordinary users there. An operator with other admin names lists them (the list replaces these).
 */
export const DEFAULT_RESERVED_USERS: Readonly<Record<BackendLoginMode, readonly string[]>> = { 'sasl-authzid': ['cyrus'], 'master-user': [], replay: [] };

/** The reserved names in force for `config`: its own list, or its login mode's default. */
export function reservedUsersOf(config: Pick<BackendConfig, 'loginMode' | 'reservedUsers'>): readonly string[] {
  return config.reservedUsers ?? DEFAULT_RESERVED_USERS[config.loginMode];
}

/** How a domain part in a login name is treated (see UsernameConfig). */
export type UsernameDomainMode = 'keep' | 'strip' | 'qualify';

export interface UsernameConfig {
  readonly lowercase: boolean;
  /**
   * `keep` (default): the name as typed, its domain part lower-cased; `strip`: `user@<local domain>`
   * is the user `user`; `qualify`: a bare `user` is `user@<first local domain>`.
   */
  readonly domain?: UsernameDomainMode;
  /** The local mail domains (lower-case ASCII); when any are set, names in other domains are refused. */
  readonly localDomains?: readonly string[];
}

export interface SessionConfig {
  readonly greeting: string;
  readonly preauthTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly authFailureDelayMs: number;
}

/** Where the store map comes from: a YAML file, or store entries in LDAP. */
export type StoreMapSourceConfig =
  /** `baseDir`: the config file's folder, against which the store map's relative file names resolve. */
  | { readonly kind: 'file'; readonly file: string; readonly watch: boolean; readonly baseDir: string }
  | {
      readonly kind: 'ldap';
      readonly urls: readonly string[];
      readonly bindDn: string;
      readonly bindPassword: string;
      readonly baseDn: string;
      readonly pollIntervalMs: number;
      readonly starttls: boolean;
      readonly caFile?: string;
      readonly operationTimeoutMs: number;
      /** Bytes one read of the store map may take, all pages together (default MAX_STOREMAP_LDAP_ANSWER_BYTES). */
      readonly maxAnswerBytes?: number;
    };

export interface FailoverConfig {
  /** Sessions on a demoted master are closed at random moments spread over this window. */
  readonly drainSpreadMs: number;
  /** A login whose master is unreachable is retried (following the store map) for this long. */
  readonly holdMs: number;
}

export interface HealthConfig {
  readonly intervalMs: number;
  readonly timeoutMs: number;
  /** When set, a probe also logs in with this account (replay mode). */
  readonly probeUser?: string;
  readonly probePassword?: string;
}

export interface ShutdownConfig {
  /** On SIGTERM, spliced sessions get this long to end on their own before they are closed. */
  readonly drainTimeoutMs: number;
  /**
   * On SIGTERM, /readyz answers 503 at once while the listeners go on accepting for this long,
   * so that a balancer checking /readyz takes the instance out before its ports close (only with
   * an HTTP listener whose /readyz has said ready: else no balancer sent it a client, and the
   * listeners close at once).
   */
  readonly unreadyDelayMs: number;
}

/**
 * shutdown.unready_delay_ms's default: HAProxy's checks of docker/haproxy/haproxy.cfg (inter 2s,
 * fall 2) mark the instance down at most 4 s after /readyz turns 503; a second more covers the
 * check's own time and the connections dispatched just before.
 */
export const DEFAULT_UNREADY_DELAY_MS = 5_000;

/** After the drain (its deadline, or its sessions gone), how long spliced sessions get to close once told BYE. */
export const STOP_CLOSE_MS = 2_000;
/** How long a stopping server waits for its last log lines to reach a log reader that is slow. */
export const STOP_LOG_FLUSH_MS = 5_000;
/**
 * The time the shipped units give a stop before they kill it: deploy/mailfront.service's
 * TimeoutStopSec and docker/compose.yaml's stop_grace_period (a test keeps them equal to it).
 */
export const SHIPPED_STOP_GRACE_MS = 30_000;

/**
 * The longest a stop (SIGTERM) may take with `config`: the unready delay (only with an HTTP
 * listener: without one nothing reads /readyz, and there is none), the drain, the BYEs spread over
 * failover.drain_spread_ms after it, the close and the log's last lines. A service manager that
 * kills it sooner cuts the drain.
 */
export function stopTakesAtMostMs(config: { readonly shutdown: ShutdownConfig; readonly failover: Pick<FailoverConfig, 'drainSpreadMs'>; readonly http?: unknown }): number {
  const unreadyMs = config.http === undefined ? 0 : config.shutdown.unreadyDelayMs;
  return unreadyMs + config.shutdown.drainTimeoutMs + config.failover.drainSpreadMs + STOP_CLOSE_MS + STOP_LOG_FLUSH_MS;
}

export interface AdminConfig {
  /** Bearer token for the admin API; the API is off when absent. */
  readonly token?: string;
  /** The admin API base URLs of the fleet's instances, for the operator commands' --all (serve checks it, and uses it for nothing). */
  readonly instances?: readonly string[];
}

export interface Config {
  /** Absolute path of the file this was read from (relative paths in it resolve against its folder). */
  readonly file: string;
  readonly logLevel: LogLevel;
  readonly listeners: readonly ListenerConfig[];
  readonly directory: DirectoryConfig;
  readonly storeMap: StoreMapSourceConfig;
  readonly backend: BackendConfig;
  /** Named backend settings a store can refer to with `backend_profile`. */
  readonly backendProfiles: ReadonlyMap<string, BackendConfig>;
  readonly failover: FailoverConfig;
  readonly health: HealthConfig;
  readonly admin: AdminConfig;
  readonly http?: HttpConfig;
  /** Networks of trusted clients (webmail servers): their ID x-originating-ip is believed. */
  readonly trustedNetworks: readonly string[];
  /** Translator prefixes (/96) whose addresses are counted per client by the IPv4 address they embed (setNat64Prefixes()). */
  readonly nat64Prefixes: readonly string[];
  readonly shutdown: ShutdownConfig;
  readonly throttle: ThrottleConfig;
  readonly connectionLimits: ConnectionLimitsConfig;
  /** TLS versions and ciphers of every client-facing listener. */
  readonly tls: TlsPolicy;
  readonly usernames: UsernameConfig;
  readonly session: SessionConfig;
  /** OAuth 2.0 bearer-token logins (OAUTHBEARER, XOAUTH2); absent: not offered. */
  readonly oauth2?: OAuthConfig;
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const LOGIN_MODES: readonly BackendLoginMode[] = ['replay', 'master-user', 'sasl-authzid'];
const TLS_MODES: readonly ListenerTls[] = ['none', 'starttls', 'implicit'];

/** Reads a whole config document; `resolvePath` makes file names absolute. */
export function readConfig(doc: unknown, file: string, resolvePath: (p: string) => string, issues: IssueList): Config {
  const root = readSection(doc, '', ['log', 'listeners', 'directory', 'store_map', 'backend', 'backend_profiles', 'usernames', 'session', 'failover', 'health', 'admin', 'http', 'trusted_networks', 'nat64_prefixes', 'shutdown', 'throttle', 'connection_limits', 'tls', 'oauth2'], issues) ?? {};
  const log = root['log'] === undefined ? {} : readSection(root['log'], 'log', ['level'], issues) ?? {};
  const directory = readDirectory(root['directory'], resolvePath, issues);
  const backend = readBackend(root['backend'], 'backend', resolvePath, issues);
  const logLevel = oneOf(log, 'level', 'log', issues, LOG_LEVELS, 'info');
  const bindings: Binding[] = [];
  const listeners = readListeners(root['listeners'], resolvePath, bindings, issues);
  const httpStart = issues.issues.length;
  const http = root['http'] !== undefined ? readHttpConfig(root['http'], 'http', issues)! : undefined;
  // The HTTP listener binds in the same process: a port it shares with a listener fails the start
  // as surely as two listeners on one. A section that had an issue stands in for defaults, and
  // port 0 is any free port.
  if (http !== undefined && http.port !== 0 && issues.issues.slice(httpStart).every((i) => i.path !== 'http' && i.path !== 'http.host' && i.path !== 'http.port')) {
    checkBinding(bindingOf(http.host, http.port, 'http'), bindings, issues);
  }
  const backendProfiles = readBackendProfiles(root['backend_profiles'], backend, resolvePath, issues);
  // A login mode that asserts the user's name to the backend needs the entry's own name (a store
  // of the store map that sets one is refused at login, with the same words).
  const asserting = [['backend', backend] as const, ...[...backendProfiles].map(([name, profile]) => [at('backend_profiles', name), profile] as const)].find(([, b]) => b.loginMode !== 'replay');
  if (asserting !== undefined && loginAttributeOf(directory) === undefined) {
    const [where, b] = asserting;
    issues.add(at('directory', 'login_attribute'), `the attribute holding the name the backend knows users by: ${where}.login_mode "${b.loginMode}" asserts the directory entry's name, and user_filter compares {user} with no one attribute (an alias may match), so it cannot be inferred`, undefined);
  }
  const oauth2 = readOAuthConfig(root['oauth2'], 'oauth2', issues, resolvePath);
  const config: Config = {
    file,
    logLevel,
    listeners,
    directory,
    storeMap: readStoreMapSource(root['store_map'], directory, resolvePath, issues),
    backend,
    backendProfiles,
    failover: readFailover(root['failover'], issues),
    health: readHealth(root['health'], issues),
    admin: readAdmin(root['admin'], issues),
    ...(http !== undefined ? { http } : {}),
    trustedNetworks: readNetworks(root, 'trusted_networks', '', issues),
    nat64Prefixes: readNat64Prefixes(root, 'nat64_prefixes', '', issues),
    shutdown: readShutdown(root['shutdown'], issues),
    throttle: readThrottleConfig(root['throttle'], 'throttle', issues, resolvePath),
    connectionLimits: readConnectionLimitsConfig(root['connection_limits'], 'connection_limits', issues),
    tls: readTlsPolicy(root['tls'], 'tls', issues, resolvePath),
    usernames: readUsernames(root['usernames'], issues),
    session: readSessionSettings(root['session'], issues),
    ...(oauth2 !== undefined ? { oauth2 } : {}),
  };
  checkTrustedNotExempt(root['trusted_networks'], [
    ['throttle.exempt_networks', config.throttle.exemptNetworks ?? []],
    ['connection_limits.exempt_networks', config.connectionLimits.exemptNetworks ?? []],
  ], issues);
  return config;
}

/**
 * Refuses a block of trusted_networks (`trusted`, as written: a string is a list of one) that
 * equals or contains a block of an exempt list: the session believes a trusted network's ID
 * claims whatever the exempt lists say, so everyone behind a NAT listed in both could still name
 * any address as theirs (to the logs, the backend, and another address's failures_per_address),
 * which is what the exempt lists are for. A narrower trusted block inside an exempt one (a webmail
 * server inside a campus NAT) is fine. Blocks that are no blocks were reported by readNetworks().
 */
function checkTrustedNotExempt(trusted: unknown, exempt: readonly (readonly [string, readonly string[]])[], issues: IssueList): void {
  const list = typeof trusted === 'string' ? [trusted] : Array.isArray(trusted) ? (trusted as unknown[]) : [];
  list.forEach((item, i) => {
    const block = typeof item === 'string' ? parseCidr(item) : null;
    if (block === null) return;
    const within = new CidrSet([block]);
    for (const [path, blocks] of exempt) {
      const inside = blocks.find((text) => {
        const other = parseCidr(text);
        return other !== null && block.prefixBits <= other.prefixBits && within.contains(text.split('/')[0] ?? '');
      });
      if (inside === undefined) continue;
      issues.add(
        at('trusted_networks', i),
        `an address block that neither equals nor contains one of ${path} (${inside}): a NAT exempt there must not be trusted, or anyone behind it could name any address as theirs with ID x-originating-ip; take it out of trusted_networks (a webmail server inside the NAT may be trusted by its own narrower block)`,
        item,
      );
      return;
    }
  });
}

/** What a socket listening on an address takes of its port (the path is the section's, for messages). */
interface Binding {
  readonly path: string;
  readonly host: string;
  readonly port: number;
}

function bindingOf(host: string, port: number, path: string): Binding | undefined {
  return parseAddress(host) === null ? undefined : { path, host, port };
}

function endpoint(b: Binding): string {
  return b.host.includes(':') ? `[${b.host}]:${b.port}` : `${b.host}:${b.port}`;
}

/**
 * Why `b` cannot bind beside `a`, or undefined when it can (bindAddressesOverlap: the same
 * address in any spelling, or a wildcard that covers the other; SO_REUSEADDR lets none of these
 * share a listening port on Linux).
 */
function clash(a: Binding, b: Binding): string | undefined {
  if (a.port !== b.port || !bindAddressesOverlap(a.host, b.host)) return undefined;
  const wide = [a, b].find((x) => isWildcard(x.host) === 'all') ?? [a, b].find((x) => isWildcard(x.host) === 'ipv4');
  if (wide === undefined || bindAddressesOverlap(a.host, b.host, true)) return `${a.path} has it`;
  const reach = isWildcard(wide.host) === 'all' ? 'every IPv6 address and, dual-stack, every IPv4 address' : 'every IPv4 address';
  return wide === a ? `${a.path} has ${endpoint(a)}, which takes port ${a.port} on ${reach}` : `${a.path} has ${endpoint(a)}, and ${b.host} would take port ${a.port} on ${reach}`;
}

/** Reports `b` when an earlier binding takes its address and port (the first one that does), and adds it to them. */
function checkBinding(b: Binding | undefined, earlier: Binding[], issues: IssueList): void {
  if (b === undefined) return;
  for (const a of earlier) {
    const why = clash(a, b);
    if (why === undefined) continue;
    issues.add(at(b.path, 'port'), `an address and port no other listener uses (${why})`, endpoint(b));
    break;
  }
  earlier.push(b);
}

/** Reads the listeners; `bindings` receives the address and port of each. */
function readListeners(v: unknown, resolvePath: (p: string) => string, bindings: Binding[], issues: IssueList): ListenerConfig[] {
  if (!Array.isArray(v) || v.length === 0) {
    issues.add('listeners', 'a non-empty list of listeners', v);
    return [];
  }
  const seenNames = new Map<string, string>();
  return v.map((item, i) => {
    const path = at('listeners', i);
    const section = readSection(item, path, ['name', 'protocol', 'host', 'port', 'tls', 'plaintext_without_tls', 'certificate', 'certificates', 'proxy_protocol'], issues);
    const o = section ?? {};
    const proxyProtocol = readProxyConfig(o['proxy_protocol'], at(path, 'proxy_protocol'), issues, (n) => parseCidr(n) !== null);
    const protocol = oneOf<Protocol>(o, 'protocol', path, issues, PROTOCOLS);
    // A host or port that had an issue is a stand-in (0.0.0.0, port 1): it would clash with
    // others' addresses, and lend its port to a default name, for no fault of theirs.
    const hostIssues = issues.issues.length;
    const host = str(o, 'host', path, issues, '0.0.0.0');
    if (isIP(host) === 0) issues.add(at(path, 'host'), 'an IPv4 or IPv6 address', host);
    const portIssues = issues.issues.length;
    const listenPort = port(o, 'port', path, issues);
    const portRead = issues.issues.length === portIssues;
    const addressRead = portRead && portIssues === hostIssues;
    const name = str(o, 'name', path, issues, `${protocol}-${listenPort}`);
    const tls = oneOf(o, 'tls', path, issues, TLS_MODES, 'none');
    if (addressRead) checkBinding(bindingOf(host, listenPort, path), bindings, issues);
    // A reload matches listeners by name as well as by address: two of one name cannot be told apart.
    if (portRead || o['name'] !== undefined) {
      const named = seenNames.get(name);
      if (named !== undefined) issues.add(at(path, 'name'), `a name no other listener has (${named} has it${o['name'] === undefined ? '; the default name is <protocol>-<port>, so listeners on one port need names of their own' : ''})`, name);
      seenNames.set(name, path);
    }
    const readFiles = (v: unknown, filesPath: string): TlsFiles => {
      const c = readSection(v, filesPath, ['cert', 'key'], issues) ?? {};
      return { cert: resolvePath(str(c, 'cert', filesPath, issues)), key: resolvePath(str(c, 'key', filesPath, issues)) };
    };
    let certificate: TlsFiles | undefined;
    let certificates: TlsFiles[] | undefined;
    if (o['certificate'] !== undefined && o['certificates'] !== undefined) {
      issues.add(at(path, 'certificates'), 'either certificate (one) or certificates (a list), not both', o['certificates']);
    } else if (o['certificate'] !== undefined) {
      certificate = readFiles(o['certificate'], at(path, 'certificate'));
    } else if (o['certificates'] !== undefined) {
      const list = o['certificates'];
      if (!Array.isArray(list) || list.length === 0) issues.add(at(path, 'certificates'), 'a non-empty list of {cert, key} (the first is served to clients that ask for no name, or one no certificate has)', list);
      else certificates = list.map((item, j) => readFiles(item, at(at(path, 'certificates'), j)));
    } else if (tls !== 'none') {
      issues.add(at(path, 'certificate'), `cert and key files (tls is "${tls}"), or certificates: a list of them`, undefined);
    }
    const plaintextWithoutTls = bool(o, 'plaintext_without_tls', path, issues, false);
    // Without TLS and without plaintext logins nothing can log in: IMAP says LOGINDISABLED, POP3's
    // CAPA offers neither USER nor SASL, and ManageSieve would greet with an empty SASL and no
    // STARTTLS (RFC 5804 section 1.7 forbids that). Not said of a listener that is no mapping, or
    // whose tls or plaintext_without_tls had an issue of its own.
    if (section !== undefined && (o['tls'] === undefined || o['tls'] === 'none') && (o['plaintext_without_tls'] === undefined || o['plaintext_without_tls'] === false)) {
      issues.add(at(path, 'plaintext_without_tls'), 'true on a listener without TLS (tls: none), or tls: starttls/implicit: without it no client can log in', o['plaintext_without_tls']);
    }
    return {
      name,
      protocol,
      host,
      port: listenPort,
      tls,
      plaintextWithoutTls,
      ...(certificate ? { certificate } : {}),
      ...(certificates ? { certificates } : {}),
      ...(proxyProtocol ? { proxyProtocol } : {}),
    };
  });
}

function readDirectory(v: unknown, resolvePath: (p: string) => string, issues: IssueList): DirectoryConfig {
  const path = 'directory';
  const o = readSection(v, path, ['urls', 'bind_dn', 'bind_password', 'base_dn', 'user_filter', 'store_attribute', 'login_attribute', 'hold_attribute', 'master_user_filter', 'master_user_separator', 'starttls', 'ca_file', 'connect_timeout_ms', 'operation_timeout_ms', 'entry_cache_ttl_ms', 'auth_cache_ttl_ms', 'cache_max_entries', 'search_connections', 'password_policy'], issues) ?? {};
  const urls = ldapUrlList(o, 'urls', path, issues);
  const userFilter = str(o, 'user_filter', path, issues, '(&(objectClass=inetOrgPerson)(uid={user}))');
  // Parsed as the LDAP client parses it (placeholders stand for a name): one it cannot read failed
  // every login before a byte was sent, taken for a server failure (connections dropped, servers held down).
  const userSyntax = filterSyntaxProblem(userFilter.split('{user}').join('x').split('{protocol}').join('imap'));
  if (!userFilter.includes('{user}') || !userFilter.startsWith('(') || !userFilter.endsWith(')') || userSyntax !== undefined) {
    issues.add(at(path, 'user_filter'), `an LDAP filter in parentheses (RFC 4515) containing {user}${userSyntax !== undefined ? `; this one does not parse: ${userSyntax}` : ''}`, userFilter);
  }
  // Any other placeholder would reach LDAP as text and match no entry: every login refused.
  const unknown = unknownFilterPlaceholders(userFilter, USER_FILTER_PLACEHOLDERS);
  if (unknown.length > 0) {
    issues.addFinding(
      at(path, 'user_filter'),
      `an LDAP filter whose placeholders are ${USER_FILTER_PLACEHOLDERS.join(' and ')} (the session's protocol: ${PROTOCOLS.join(', ')}); a brace of the filter's own is written \\7b or \\7d`,
      `${unknown.length === 1 ? 'an unknown placeholder' : 'unknown placeholders'} ${unknown.map((p) => JSON.stringify(p)).join(', ')}`,
    );
  }
  const loginAttribute = optStr(o, 'login_attribute', path, issues);
  // An attribute type's name (RFC 4512 §1.4 descr): the entry's answer is read by that name.
  if (loginAttribute !== undefined && !/^[A-Za-z][A-Za-z0-9-]*$/.test(loginAttribute)) issues.add(at(path, 'login_attribute'), 'an LDAP attribute name (letters, digits and hyphens, starting with a letter)', loginAttribute);
  const storeAttribute = str(o, 'store_attribute', path, issues, 'mailStore');
  const holdAttribute = optStr(o, 'hold_attribute', path, issues);
  if (holdAttribute !== undefined) {
    if (!/^[A-Za-z][A-Za-z0-9-]*$/.test(holdAttribute)) issues.add(at(path, 'hold_attribute'), 'an LDAP attribute name (letters, digits and hyphens, starting with a letter)', holdAttribute);
    // Every user's store name (or login name) would read as a hold's reason: every login refused.
    else if ([storeAttribute, loginAttributeOf({ userFilter, ...(loginAttribute !== undefined ? { loginAttribute } : {}) })].some((other) => other?.toLowerCase() === holdAttribute.toLowerCase())) {
      issues.add(at(path, 'hold_attribute'), 'an LDAP attribute name other than store_attribute and login_attribute (its value holds the user)', holdAttribute);
    }
  }
  const master = readMasterUsers(o, path, issues);
  const caFile = optStr(o, 'ca_file', path, issues);
  return {
    urls,
    bindDn: str(o, 'bind_dn', path, issues),
    bindPassword: str(o, 'bind_password', path, issues),
    baseDn: str(o, 'base_dn', path, issues),
    userFilter,
    storeAttribute,
    ...(loginAttribute !== undefined ? { loginAttribute } : {}),
    ...(holdAttribute !== undefined ? { holdAttribute } : {}),
    ...master,
    starttls: bool(o, 'starttls', path, issues, false),
    ...(caFile !== undefined ? { caFile: resolvePath(caFile) } : {}),
    connectTimeoutMs: int(o, 'connect_timeout_ms', path, issues, 100, 120_000, DEFAULT_LDAP_CONNECT_TIMEOUT_MS),
    operationTimeoutMs: int(o, 'operation_timeout_ms', path, issues, 100, 120_000, DEFAULT_LDAP_OPERATION_TIMEOUT_MS),
    entryCacheTtlMs: int(o, 'entry_cache_ttl_ms', path, issues, 0, 3_600_000, 30_000),
    authCacheTtlMs: int(o, 'auth_cache_ttl_ms', path, issues, 0, 3_600_000, 60_000),
    cacheMaxEntries: int(o, 'cache_max_entries', path, issues, 1, MAX_CACHE_ENTRIES, 100_000),
    searchConnections: int(o, 'search_connections', path, issues, 1, 64, 2),
    ...readPasswordPolicy(o, path, issues),
  };
}

/**
 * directory.password_policy: true (the default: a server without the policy ignores the control,
 * not critical, RFC 4511 §4.1.11), false, or a mapping (on) with what the user is told of its
 * warnings: expiring_alert, grace_alert (each a text with only its own placeholders, '' telling
 * nothing) and alert_interval_ms.
 */
function readPasswordPolicy(o: Record<string, unknown>, directoryPath: string, issues: IssueList): Pick<DirectoryConfig, 'passwordPolicy' | 'passwordAlerts'> {
  const value = o['password_policy'];
  if (value === undefined || value === true) return { passwordPolicy: true, passwordAlerts: DEFAULT_PASSWORD_ALERTS };
  if (value === false) return { passwordPolicy: false };
  const path = at(directoryPath, 'password_policy');
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    issues.add(path, 'true, false, or a mapping of expiring_alert, grace_alert and alert_interval_ms (the policy on)', value);
    return { passwordPolicy: true, passwordAlerts: DEFAULT_PASSWORD_ALERTS };
  }
  const p = readSection(value, path, ['expiring_alert', 'grace_alert', 'alert_interval_ms'], issues) ?? {};
  return {
    passwordPolicy: true,
    passwordAlerts: {
      expiringAlert: alertText(p, 'expiring_alert', path, issues, EXPIRING_ALERT_PLACEHOLDERS, DEFAULT_EXPIRING_ALERT),
      graceAlert: alertText(p, 'grace_alert', path, issues, GRACE_ALERT_PLACEHOLDERS, DEFAULT_GRACE_ALERT),
      alertIntervalMs: int(p, 'alert_interval_ms', path, issues, 0, 2_592_000_000, DEFAULT_ALERT_INTERVAL_MS),
    },
  };
}

/** An alert's text: printable ASCII, at most MAX_ALERT_TEXT_CHARS, only `placeholders`; '' is off. */
function alertText(o: Record<string, unknown>, key: string, path: string, issues: IssueList, placeholders: readonly string[], fallback: string): string {
  const value = o[key];
  if (value === undefined) return fallback;
  const expected = `a text of printable ASCII (IMAP's response text is 7-bit: no CR, LF, NUL or other control character) of at most ${MAX_ALERT_TEXT_CHARS} characters, whose only ${placeholders.length > 1 ? `placeholders are ${placeholders.slice(0, -1).join(', ')} and ${placeholders.at(-1)}` : `placeholder is ${placeholders.join('')}`}, or "" to tell nothing`;
  if (typeof value !== 'string') {
    issues.add(at(path, key), expected, value);
    return fallback;
  }
  const problem = alertTextProblem(value);
  if (problem !== undefined) {
    issues.addFinding(at(path, key), expected, problem);
    return fallback;
  }
  const unknown = unknownFilterPlaceholders(value, placeholders);
  if (unknown.length > 0) {
    issues.addFinding(at(path, key), expected, `${unknown.length === 1 ? 'an unknown placeholder' : 'unknown placeholders'} ${unknown.map((u) => JSON.stringify(u)).join(', ')}`);
    return fallback;
  }
  // A brace of no placeholder: `{{days}}` would end the line `... {9}`, which imapflow (and any
  // client that finds a literal by a line's end) reads as announcing 9 bytes of literal, and the
  // login's tagged OK disappears into it.
  let rest = value;
  for (const placeholder of placeholders) rest = rest.replaceAll(placeholder, '');
  if (/[{}]/.test(rest)) {
    issues.addFinding(at(path, key), expected, 'a brace that is no placeholder (`{{days}}` would be sent as `{9}`, which a client can read as a literal)');
    return fallback;
  }
  // IMAP's text is at least one character (RFC 3501 §9, text = 1*TEXT-CHAR): spaces alone would be sent as nothing.
  if (value !== '' && value.trim() === '') {
    issues.addFinding(at(path, key), expected, 'spaces only');
    return fallback;
  }
  return value;
}

/**
 * Why `filter` is no LDAP filter (RFC 4515), as the LDAP client reads it before it sends a search;
 * undefined when it parses. A filter it cannot read fails every search that uses it.
 */
function filterSyntaxProblem(filter: string): string | undefined {
  try {
    FilterParser.parseString(filter);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/**
 * directory.master_user_filter and master_user_separator. The filter is checked as user_filter is
 * (in parentheses; its only placeholder `{user}`, which it need not hold), and parsed as the LDAP
 * client parses it. The separator is one
 * printable ASCII character (default `*`, Dovecot's), or null: only a SASL authzid names the
 * target; not `@`, which would split every name with a domain. A separator without the filter
 * would do nothing: the operator meant something else.
 */
function readMasterUsers(o: Record<string, unknown>, path: string, issues: IssueList): Pick<DirectoryConfig, 'masterUserFilter' | 'masterUserSeparator'> {
  const filter = optStr(o, 'master_user_filter', path, issues);
  const separator = o['master_user_separator'];
  if (filter === undefined) {
    if (separator !== undefined) issues.add(at(path, 'master_user_separator'), 'no separator without directory.master_user_filter (master logins are off without it)', separator);
    return {};
  }
  const syntax = filterSyntaxProblem(filter.split('{user}').join('x'));
  if (!filter.startsWith('(') || !filter.endsWith(')') || syntax !== undefined) {
    issues.add(at(path, 'master_user_filter'), `an LDAP filter in parentheses (RFC 4515), e.g. (memberOf=cn=mail-helpdesk,ou=groups,dc=example,dc=com)${syntax !== undefined ? `; this one does not parse: ${syntax}` : ''}`, filter);
  }
  // Any other placeholder would reach LDAP as text and match no entry: every master login refused.
  const unknown = unknownFilterPlaceholders(filter, MASTER_FILTER_PLACEHOLDERS);
  if (unknown.length > 0) {
    issues.addFinding(
      at(path, 'master_user_filter'),
      'an LDAP filter whose only placeholder is {user} (the staff member\'s own name); a brace of the filter\'s own is written \\7b or \\7d',
      `${unknown.length === 1 ? 'an unknown placeholder' : 'unknown placeholders'} ${unknown.map((p) => JSON.stringify(p)).join(', ')}`,
    );
  }
  if (separator === undefined) return { masterUserFilter: filter, masterUserSeparator: '*' };
  if (separator === null) return { masterUserFilter: filter, masterUserSeparator: null };
  if (typeof separator !== 'string' || !/^[\x21-\x3f\x41-\x7e]$/.test(separator)) {
    issues.add(at(path, 'master_user_separator'), 'one printable ASCII character other than "@" (e.g. "*", as Dovecot\'s auth_master_user_separator), or null for a SASL authzid only', separator);
    return { masterUserFilter: filter, masterUserSeparator: '*' };
  }
  return { masterUserFilter: filter, masterUserSeparator: separator };
}

/** Keys of a backend section; a store may override any of them. */
export const BACKEND_KEYS = ['login_mode', 'proxy_user', 'proxy_password', 'master_user_separator', 'tls', 'ca_file', 'tls_servername', 'forward_client_address', 'forward_client_id', 'connect_timeout_ms', 'login_timeout_ms', 'proxy_protocol', 'reserved_users', 'source_addresses'] as const;

/** Reads a backend section; `base` supplies the values a store-level override leaves out. */
export function readBackend(v: unknown, path: string, resolvePath: (p: string) => string, issues: IssueList, base?: BackendConfig): BackendConfig {
  const o = readSection(v ?? {}, path, BACKEND_KEYS, issues) ?? {};
  const loginMode = oneOf(o, 'login_mode', path, issues, LOGIN_MODES, base?.loginMode ?? 'replay');
  const proxyUser = optStr(o, 'proxy_user', path, issues) ?? base?.proxyUser;
  const proxyPassword = optStr(o, 'proxy_password', path, issues) ?? base?.proxyPassword;
  if (loginMode !== 'replay') {
    if (proxyUser === undefined) issues.add(at(path, 'proxy_user'), `the proxy account's name (login_mode is "${loginMode}")`, undefined);
    if (proxyPassword === undefined) issues.add(at(path, 'proxy_password'), `the proxy account's password (login_mode is "${loginMode}")`, undefined);
  }
  const caFile = optStr(o, 'ca_file', path, issues);
  const servername = optStr(o, 'tls_servername', path, issues) ?? base?.tlsServername;
  const resolvedCa = caFile !== undefined ? resolvePath(caFile) : base?.caFile;
  // A section that changes the login mode does not inherit a list set for the other mode: the
  // names that carry rights differ (a Dovecot-wide list must not leave Cyrus's cyrus unreserved
  // on a store that turns to sasl-authzid). Not set there, it gets its own mode's default.
  const reservedUsers = readReservedUsers(o, path, issues, base !== undefined && loginMode !== base.loginMode ? undefined : base?.reservedUsers);
  const sourceAddresses = readSourceAddresses(o, path, issues, base?.sourceAddresses);
  return {
    loginMode,
    ...(proxyUser !== undefined ? { proxyUser } : {}),
    ...(proxyPassword !== undefined ? { proxyPassword } : {}),
    masterUserSeparator: readSeparator(o, path, issues, base?.masterUserSeparator ?? '*'),
    tls: oneOf(o, 'tls', path, issues, TLS_MODES, base?.tls ?? 'none'),
    ...(resolvedCa !== undefined ? { caFile: resolvedCa } : {}),
    ...(servername !== undefined ? { tlsServername: servername } : {}),
    forwardClientAddress: bool(o, 'forward_client_address', path, issues, base?.forwardClientAddress ?? true),
    forwardClientId: bool(o, 'forward_client_id', path, issues, base?.forwardClientId ?? true),
    connectTimeoutMs: int(o, 'connect_timeout_ms', path, issues, 100, 120_000, base?.connectTimeoutMs ?? DEFAULT_BACKEND_CONNECT_TIMEOUT_MS),
    loginTimeoutMs: int(o, 'login_timeout_ms', path, issues, 100, 300_000, base?.loginTimeoutMs ?? DEFAULT_BACKEND_LOGIN_TIMEOUT_MS),
    proxyProtocol: oneOf(o, 'proxy_protocol', path, issues, BACKEND_PROXY_PROTOCOLS, base?.proxyProtocol ?? 'none'),
    ...(reservedUsers !== undefined ? { reservedUsers } : {}),
    ...(sourceAddresses !== undefined ? { sourceAddresses } : {}),
  };
}

/**
 * backend.source_addresses: a list of IP literals (a single string is a list of one), each a
 * unicast address (a wildcard is the kernel's choice, as no list is); `fallback` (the inherited
 * list) when not set, and `[]` none (a profile or store back to the kernel's choice). Whether the
 * host has them is asked of the kernel at start, check-config and reload (unusableSourceAddresses).
 */
function readSourceAddresses(o: Record<string, unknown>, path: string, issues: IssueList, fallback: readonly string[] | undefined): readonly string[] | undefined {
  const v = o['source_addresses'];
  if (v === undefined) return fallback;
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list)) {
    issues.add(at(path, 'source_addresses'), 'a list of IP addresses of this host (e.g. [192.0.2.10, 192.0.2.11]), possibly empty', v);
    return fallback;
  }
  const addresses: string[] = [];
  list.forEach((item, i) => {
    if (typeof item === 'string' && addressFamily(item) !== undefined && isWildcard(item) === undefined) addresses.push(item);
    else issues.add(at(at(path, 'source_addresses'), i), 'an IPv4 or IPv6 address of this host, written as an IP literal (no host name, port or prefix length; not 0.0.0.0 or ::)', item);
  });
  return addresses.length > 0 ? addresses : undefined;
}

/**
 * backend.master_user_separator: one printable ASCII character. Dovecot's
 * auth_master_user_separator is a single character (it splits the login name at the first
 * occurrence of that character), so "**" made every master-user login fail.
 */
function readSeparator(o: Record<string, unknown>, path: string, issues: IssueList, fallback: string): string {
  const v = o['master_user_separator'];
  if (v === undefined) return fallback;
  if (typeof v === 'string' && /^[\x21-\x7e]$/.test(v)) return v;
  issues.add(at(path, 'master_user_separator'), 'one printable ASCII character, as Dovecot\'s auth_master_user_separator (e.g. "*")', v);
  return fallback;
}

/**
 * backend.reserved_users: a list of names (empty allowed: the proxy account stays reserved),
 * lower-cased for comparison; `fallback` (the inherited list, or undefined for the mode's default)
 * when not set.
 */
function readReservedUsers(o: Record<string, unknown>, path: string, issues: IssueList, fallback: readonly string[] | undefined): readonly string[] | undefined {
  const v = o['reserved_users'];
  if (v === undefined) return fallback;
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || !list.every((name) => typeof name === 'string' && name.trim() !== '')) {
    issues.add(at(path, 'reserved_users'), 'a list of user names (the backend administrators, e.g. [cyrus]), possibly empty', v);
    return fallback;
  }
  // Cyrus lower-cases authorization identities: CYRUS is cyrus there.
  return (list as string[]).map((name) => name.trim().toLowerCase());
}

function readStoreMapSource(v: unknown, directory: DirectoryConfig, resolvePath: (p: string) => string, issues: IssueList): StoreMapSourceConfig {
  const path = 'store_map';
  const o = readSection(v, path, ['file', 'watch', 'ldap'], issues) ?? {};
  if ((o['file'] === undefined) === (o['ldap'] === undefined)) {
    issues.add(path, 'exactly one of file or ldap', o);
    return { kind: 'file', file: '', watch: false, baseDir: resolvePath('.') };
  }
  if (o['file'] !== undefined) return { kind: 'file', file: resolvePath(str(o, 'file', path, issues)), watch: bool(o, 'watch', path, issues, true), baseDir: resolvePath('.') };
  const lpath = at(path, 'ldap');
  const l = readSection(o['ldap'], lpath, ['urls', 'bind_dn', 'bind_password', 'base_dn', 'poll_interval_ms', 'starttls', 'ca_file', 'operation_timeout_ms', 'max_answer_bytes'], issues) ?? {};
  // Checked as the directory's are: a typo would replace a working source with one that never answers.
  const urls = l['urls'] === undefined ? [...directory.urls] : ldapUrlList(l, 'urls', lpath, issues);
  const caFile = optStr(l, 'ca_file', lpath, issues);
  const resolvedCa = caFile !== undefined ? resolvePath(caFile) : directory.caFile;
  return {
    kind: 'ldap',
    urls,
    bindDn: str(l, 'bind_dn', lpath, issues, directory.bindDn),
    bindPassword: str(l, 'bind_password', lpath, issues, directory.bindPassword),
    baseDn: str(l, 'base_dn', lpath, issues),
    pollIntervalMs: int(l, 'poll_interval_ms', lpath, issues, 100, 3_600_000, 1_000),
    starttls: bool(l, 'starttls', lpath, issues, directory.starttls),
    ...(resolvedCa !== undefined ? { caFile: resolvedCa } : {}),
    operationTimeoutMs: int(l, 'operation_timeout_ms', lpath, issues, 100, 120_000, directory.operationTimeoutMs),
    // Not set: MAX_STOREMAP_LDAP_ANSWER_BYTES (about 75,000 stores of two slots); a larger map needs it raised.
    ...(l['max_answer_bytes'] !== undefined ? { maxAnswerBytes: int(l, 'max_answer_bytes', lpath, issues, 64 * 1024, 1024 * 1024 * 1024) } : {}),
  };
}

function readBackendProfiles(v: unknown, base: BackendConfig, resolvePath: (p: string) => string, issues: IssueList): ReadonlyMap<string, BackendConfig> {
  const profiles = new Map<string, BackendConfig>();
  if (v === undefined) return profiles;
  const o = readMapping(v, 'backend_profiles', issues) ?? {};
  for (const [name, section] of Object.entries(o)) profiles.set(name, readBackend(section, at('backend_profiles', name), resolvePath, issues, base));
  return profiles;
}

function readFailover(v: unknown, issues: IssueList): FailoverConfig {
  const o = v === undefined ? {} : readSection(v, 'failover', ['drain_spread_ms', 'hold_ms'], issues) ?? {};
  return {
    drainSpreadMs: int(o, 'drain_spread_ms', 'failover', issues, 0, 600_000, 2_000),
    holdMs: int(o, 'hold_ms', 'failover', issues, 0, 600_000, 15_000),
  };
}

/** A setting that is valid but probably not what the operator meant: serve and check-config say so, and go on. */
export interface ConfigWarning {
  /** The log event of serve's line (at start and at each reload). */
  readonly event: string;
  /** The config path it is about. */
  readonly path: string;
  readonly text: string;
}

/** How many stores a warning names before it counts the rest. */
const WARNING_STORES_NAMED = 10;

/**
 * The warnings that logins needing a trust mode (master logins, OAuth logins) are refused where
 * the backend, a profile or stores of the store map keep login_mode "replay": `text(what, whose)`
 * says it for the place (`what`) and whose users (`whose`).
 */
function replayWarnings(config: Partial<Pick<Config, 'backend' | 'backendProfiles'>>, stores: ReadonlyMap<string, { readonly backend: Pick<BackendConfig, 'loginMode'> }> | undefined, warnings: ConfigWarning[], event: string, text: (what: string, whose: string) => string): void {
  const replay = (path: string, what: string, whose: string): ConfigWarning => ({ event, path, text: text(what, whose) });
  if (config.backend?.loginMode === 'replay') warnings.push(replay('backend.login_mode', 'backend.login_mode is "replay"', 'the stores that keep it'));
  for (const [name, profile] of config.backendProfiles ?? []) {
    const path = at(at('backend_profiles', name), 'login_mode');
    if (profile.loginMode === 'replay') warnings.push(replay(path, `${path} is "replay"`, 'the stores that use it'));
  }
  const replaying = [...(stores ?? [])].filter(([, store]) => store.backend.loginMode === 'replay').map(([name]) => name);
  if (replaying.length > 0) {
    const more = replaying.length > WARNING_STORES_NAMED ? ` and ${replaying.length - WARNING_STORES_NAMED} more` : '';
    const count = `${replaying.length} ${replaying.length === 1 ? 'store' : 'stores'}`;
    warnings.push(replay('stores', `${count} of the store map ${replaying.length === 1 ? 'logs' : 'log'} in with login_mode "replay" (${replaying.slice(0, WARNING_STORES_NAMED).join(', ')}${more})`, replaying.length === 1 ? 'it' : 'them'));
  }
}

/**
 * What `config` sets that works against itself. A stop that may outlast the shipped units' grace
 * time (stopTakesAtMostMs()): the service manager kills the drain. A failover.hold_ms at or above
 * session.preauth_timeout_ms: a login held for a master that is down is cut by the pre-auth
 * deadline, which runs from accept, before the hold ends, so the hold never ends a login. A
 * directory.master_user_filter with a backend, a profile or (given `stores`, the store map's, as
 * check-config reads it) a store in replay mode: mailfront has not the target's password, so
 * master logins to those stores are refused (MASTER_USER_NEEDS_TRUST_MODE). oauth2 with such a
 * store: mailfront has no password of the user's either, so its bearer-token logins are refused
 * (OAUTH_NEEDS_TRUST_MODE).
 */
export function configWarnings(config: Pick<Config, 'failover' | 'session' | 'shutdown'> & Partial<Pick<Config, 'directory' | 'backend' | 'backendProfiles' | 'http' | 'oauth2'>>, stores?: ReadonlyMap<string, { readonly backend: Pick<BackendConfig, 'loginMode'> }>): ConfigWarning[] {
  const warnings: ConfigWarning[] = [];
  const stopMs = stopTakesAtMostMs(config);
  if (stopMs >= SHIPPED_STOP_GRACE_MS) {
    const seconds = Math.ceil(stopMs / 1000);
    warnings.push({
      event: 'config.stop_exceeds_shipped_grace',
      path: stopPath(config),
      text: `a stop may take up to ${seconds} s (${config.http === undefined ? '' : `shutdown.unready_delay_ms ${config.shutdown.unreadyDelayMs} + `}shutdown.drain_timeout_ms ${config.shutdown.drainTimeoutMs} + failover.drain_spread_ms ${config.failover.drainSpreadMs} + ${(STOP_CLOSE_MS + STOP_LOG_FLUSH_MS) / 1000} s to close and write the log), and the shipped systemd unit's TimeoutStopSec and compose's stop_grace_period are ${SHIPPED_STOP_GRACE_MS / 1000} s: raise them above ${seconds + 5} s, or the service manager kills the drain`,
    });
  }
  // /metrics tells whoever scrapes it while trying logins which user names exist (README,
  // Security): open on an address beyond loopback, anyone who reaches the port reads it.
  const http = config.http;
  if (http !== undefined && http.metricsToken === undefined && !isLoopbackHost(http.host)) {
    warnings.push({
      event: 'config.metrics_open',
      path: 'http.metrics_token',
      text: `http.host ${http.host} is not a loopback address and http.metrics_token is not set: /metrics answers anyone who reaches ${http.host}:${http.port}; set metrics_token_file (Prometheus's authorization: { credentials_file }), or listen on 127.0.0.1 behind a proxy that authenticates`,
    });
  }
  if (config.directory?.masterUserFilter !== undefined) {
    replayWarnings(config, stores, warnings, 'config.master_user_replay', (what, whose) => `directory.master_user_filter is set and ${what}: master logins to ${whose} are refused (MASTER_USER_NEEDS_TRUST_MODE: mailfront does not have the target's password to replay); set login_mode master-user or sasl-authzid there`);
  }
  if (config.oauth2 !== undefined) {
    replayWarnings(config, stores, warnings, 'config.oauth2_replay', (what, whose) => `oauth2 is set and ${what}: OAuth logins (OAUTHBEARER, XOAUTH2) of users of ${whose} are refused (OAUTH_NEEDS_TRUST_MODE: a token is no password to replay); set login_mode master-user or sasl-authzid there`);
  }
  const { holdMs } = config.failover;
  const { preauthTimeoutMs } = config.session;
  if (holdMs >= preauthTimeoutMs) {
    warnings.push({
      event: 'config.hold_exceeds_preauth',
      path: 'failover.hold_ms',
      text: `failover.hold_ms (${holdMs}) is not below session.preauth_timeout_ms (${preauthTimeoutMs}): a login held for a master that is down is cut by the pre-auth deadline, which runs from accept, before its hold ends; lower hold_ms or raise preauth_timeout_ms`,
    });
  }
  return warnings;
}

function readHealth(v: unknown, issues: IssueList): HealthConfig {
  const o = v === undefined ? {} : readSection(v, 'health', ['interval_ms', 'timeout_ms', 'probe_user', 'probe_password'], issues) ?? {};
  const probeUser = optStr(o, 'probe_user', 'health', issues);
  const probePassword = optStr(o, 'probe_password', 'health', issues);
  if ((probeUser === undefined) !== (probePassword === undefined)) issues.add('health', 'probe_user and probe_password together', o);
  return {
    intervalMs: offOrInt(o, 'interval_ms', 'health', issues, 1_000, 3_600_000, 5_000),
    timeoutMs: int(o, 'timeout_ms', 'health', issues, 100, 120_000, 3_000),
    ...(probeUser !== undefined && probePassword !== undefined ? { probeUser, probePassword } : {}),
  };
}

/** Whether `host` (http.host) is a loopback address or name: 127.0.0.0/8, ::1, localhost. */
function isLoopbackHost(host: string): boolean {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  return bare === 'localhost' || bare === '::1' || /^127(?:\.\d{1,3}){3}$/.test(bare) || /^::ffff:127(?:\.\d{1,3}){3}$/i.test(bare);
}

/** The key a long stop is most likely owed to: the largest of the three the operator sets (the unready delay only with an HTTP listener). */
function stopPath(config: Pick<Config, 'shutdown' | 'failover'> & { readonly http?: unknown }): string {
  const { drainTimeoutMs } = config.shutdown;
  const unreadyDelayMs = config.http === undefined ? 0 : config.shutdown.unreadyDelayMs;
  const { drainSpreadMs } = config.failover;
  if (drainTimeoutMs >= unreadyDelayMs && drainTimeoutMs >= drainSpreadMs) return 'shutdown.drain_timeout_ms';
  return unreadyDelayMs >= drainSpreadMs ? 'shutdown.unready_delay_ms' : 'failover.drain_spread_ms';
}

function readShutdown(v: unknown, issues: IssueList): ShutdownConfig {
  const o = v === undefined ? {} : readSection(v, 'shutdown', ['drain_timeout_ms', 'unready_delay_ms'], issues) ?? {};
  return {
    drainTimeoutMs: int(o, 'drain_timeout_ms', 'shutdown', issues, 0, 3_600_000, 10_000),
    unreadyDelayMs: int(o, 'unready_delay_ms', 'shutdown', issues, 0, 600_000, DEFAULT_UNREADY_DELAY_MS),
  };
}

function readAdmin(v: unknown, issues: IssueList): AdminConfig {
  const o = v === undefined ? {} : readSection(v, 'admin', ['token', 'instances'], issues) ?? {};
  const token = optStr(o, 'token', 'admin', issues);
  checkBearerToken(token, 'admin.token', issues);
  const instances = readAdminInstances(o, issues);
  return { ...(token !== undefined ? { token } : {}), ...(instances !== undefined ? { instances } : {}) };
}

/**
 * admin.instances (absent: undefined): the admin API base URLs the operator commands' --all sends
 * a command to, each an http(s) URL of a host and port and nothing after them (the commands add
 * /api/...), each instance once: a URL listed twice would have a kick or an unthrottle sent twice
 * and its answer printed twice. Written as given, without a trailing "/".
 */
export function readAdminInstances(o: Record<string, unknown>, issues: IssueList): string[] | undefined {
  if (o['instances'] === undefined || o['instances'] === null) return undefined;
  const path = at('admin', 'instances');
  const list = o['instances'];
  if (!Array.isArray(list) || list.length === 0) {
    issues.add(path, 'a non-empty list of admin API base URLs (http://HOST:PORT), one per instance of the fleet', list);
    return undefined;
  }
  const seen = new Map<string, number>();
  const instances: string[] = [];
  list.forEach((item, i) => {
    const origin = typeof item === 'string' ? adminUrlOrigin(item) : null;
    if (origin === null) return issues.addUrl(at(path, i), 'an admin API base URL: http:// or https://, a host and an optional port, and nothing after them (http://HOST:PORT)', item);
    const before = seen.get(origin);
    if (before !== undefined) return issues.addUrl(at(path, i), `an instance not listed before (admin.instances[${before}] is ${origin} too)`, item);
    seen.set(origin, i);
    // As the URL reads once parsed: the header of its answers, the key of --json, the --url a hint gives.
    instances.push(origin);
  });
  return instances;
}

/** The origin (scheme, host, port) of an admin API base URL, or null when `text` is not one. */
function adminUrlOrigin(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  // The URL parser drops spaces, tabs and newlines, and takes an empty user before "@": written so, it is a typo.
  if (/[\s@\\]/.test(text) || url.port === '0') return null;
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '' || url.username !== '' || url.password !== '') return null;
  if (url.pathname !== '/' || url.search !== '' || url.hash !== '' || /[?#]/.test(text)) return null;
  return url.origin;
}

function readUsernames(v: unknown, issues: IssueList): UsernameConfig {
  const path = 'usernames';
  const o = v === undefined ? {} : readSection(v, path, ['lowercase', 'domain', 'local_domains'], issues) ?? {};
  const domain = oneOf<UsernameDomainMode>(o, 'domain', path, issues, ['keep', 'strip', 'qualify'], 'keep');
  const localDomains = o['local_domains'] === undefined ? [] : strList(o, 'local_domains', path, issues).map((d) => d.toLowerCase());
  localDomains.forEach((d, i) => {
    if (!/^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/.test(d)) {
      issues.add(at(at(path, 'local_domains'), i), 'a domain name in ASCII (internationalised names as xn--…)', d);
    }
  });
  if (domain !== 'keep' && localDomains.length === 0) issues.add(at(path, 'local_domains'), `the local mail domains (domain is "${domain}")`, undefined);
  return { lowercase: bool(o, 'lowercase', path, issues, true), domain, localDomains };
}

function readSessionSettings(v: unknown, issues: IssueList): SessionConfig {
  const path = 'session';
  const o = v === undefined ? {} : readSection(v, path, ['greeting', 'preauth_timeout_ms', 'idle_timeout_ms', 'auth_failure_delay_ms'], issues) ?? {};
  const greeting = str(o, 'greeting', path, issues, 'mailfront ready.');
  if (/[\r\n\0]/.test(greeting)) issues.add(at(path, 'greeting'), 'one line of text', greeting);
  return {
    greeting,
    preauthTimeoutMs: int(o, 'preauth_timeout_ms', path, issues, 1_000, 600_000, DEFAULT_PREAUTH_TIMEOUT_MS),
    idleTimeoutMs: int(o, 'idle_timeout_ms', path, issues, 1_000, 24 * 3_600_000, DEFAULT_IDLE_TIMEOUT_MS),
    authFailureDelayMs: int(o, 'auth_failure_delay_ms', path, issues, 0, 60_000, DEFAULT_AUTH_FAILURE_DELAY_MS),
  };
}

export { readMapping };
