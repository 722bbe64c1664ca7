/**
 * The `throttle` config section: penalties and refusals after failed logins, the networks exempt
 * from per-address counting (a carrier's NAT), the prefix an IPv6 client is counted by, the
 * addresses a user logged in from that the user's refusal spares, and the optional Redis that a fleet shares counters through
 * (one URL, or the primary that Redis Sentinel names).
 * Reads plain YAML data into a typed value with the validate.ts helpers; must not open files or
 * connections (the Redis passwords arrive inline, each `auth_password_file` is resolved by the loader;
 * the TLS files are only named here, and read by each connection attempt and by check-config).
 */
import { isAbsolute } from 'node:path';
import { IssueList, at, bool, int, offOrInt, optStr, readNetworks, readSection, str, strList } from '../config/validate.js';
import { MAX_CACHE_ENTRIES } from '../limits.js';

/** A sentinel's address. */
export interface SentinelNode {
  readonly host: string;
  readonly port: number;
}

/**
 * Redis Sentinel: the sentinels that name the primary of `masterName`, asked at each connection
 * attempt; `username` and `password` are the sentinels' own (the primary's are the section's).
 */
export interface ThrottleSentinelConfig {
  readonly masterName: string;
  readonly nodes: readonly SentinelNode[];
  readonly username?: string;
  readonly password?: string;
}

/** Where counters are shared when several mailfront instances serve the same users: one of `url` and `sentinel`. */
export interface ThrottleRedisConfig {
  /** `redis://host:port/db` or `rediss://…`; no password in it (use `auth_password`). */
  readonly url?: string;
  /** The primary the sentinels name, instead of a URL (database 0, no TLS). */
  readonly sentinel?: ThrottleSentinelConfig;
  readonly username?: string;
  readonly password?: string;
  /** Prepended to every key, so that one Redis can serve several purposes. */
  readonly keyPrefix: string;
  /** Deadline of every Redis call; past it the call counts as failed and local counters answer. */
  readonly timeoutMs: number;
  /** With `rediss://`: PEM CA certificates to trust for Redis's certificate instead of the system's (made absolute against the config file's folder). */
  readonly caFile?: string;
  /** With `rediss://`: PEM client certificate, for a Redis that asks for one (tls-auth-clients); with keyFile. */
  readonly certFile?: string;
  /** With `rediss://`: PEM key of certFile. */
  readonly keyFile?: string;
}

/** Auth-failure throttling, as the Throttle uses it. */
export interface ThrottleConfig {
  readonly enabled: boolean;
  /** Penalty after the first counted failure; doubles with each further one. */
  readonly baseDelayMs: number;
  /** Cap of the penalty. */
  readonly maxDelayMs: number;
  /** Distinct wrong passwords for one user within the window before logins as that user are refused. */
  readonly failuresPerUser: number;
  /** Distinct failed logins from one client address within the window before its logins are refused. */
  readonly failuresPerAddress: number;
  /** How long a failure is remembered after the last counted one. */
  readonly failureWindowMs: number;
  /** How long logins are refused once a limit is reached. */
  readonly refusalMs: number;
  /** Users and addresses tracked in memory at most (least recently used ones are forgotten first). */
  readonly maxTrackedSubjects: number;
  /**
   * Address blocks not counted per address (no per-address failures, penalty or refusal; their
   * users are counted as anyone's): a carrier's or campus's NAT. Unlike trusted_networks, their
   * ID claims are not believed. Absent: none.
   */
  readonly exemptNetworks?: readonly string[];
  /** An IPv6 client's failures are counted by its network of this many bits (absent: THROTTLE_DEFAULTS.ipv6PrefixBits). */
  readonly ipv6PrefixBits?: number;
  /**
   * How long an address a user logged in from is known for that user: the user's refusal does not
   * refuse it (its own per-address limit still does); 0: off. Absent: THROTTLE_DEFAULTS.knownAddressMs.
   */
  readonly knownAddressMs?: number;
  readonly redis?: ThrottleRedisConfig;
}

/**
 * Defaults sized for about 100,000 mailboxes behind a few instances: a person who mistypes a
 * password a few times waits a few seconds more each time; a guesser gets ten tries per user and
 * thirty per address every quarter hour; 100,000 tracked subjects take about 40 MB with one
 * wrong password each (measured in test/unit/throttle.test.ts), and about 45 bytes more per wrong
 * password remembered (as many as the limit, at most 64: 290 MB for 100,000 subjects of 64).
 */
export const THROTTLE_DEFAULTS = {
  enabled: true,
  baseDelayMs: 1_000,
  // Dovecot's auth penalty stops at 15 s too: longer and clients time out and retry at once.
  maxDelayMs: 15_000,
  failuresPerUser: 10,
  // Higher than per user: offices and carrier-grade NAT put many users behind one address.
  failuresPerAddress: 30,
  failureWindowMs: 15 * 60_000,
  refusalMs: 10 * 60_000,
  maxTrackedSubjects: 100_000,
  // A home line is delegated a /56 (RIPE-690), so counting /64s gave one subscriber 256 budgets;
  // Dovecot's auth penalty masks IPv6 to /48. /56 keeps neighbours on one provider apart.
  ipv6PrefixBits: 56,
  // A day: a laptop opened once a day still finds its address known; an attacker must log in as
  // the user (the password right) to make an address known.
  knownAddressMs: 24 * 3_600_000,
  redisKeyPrefix: 'mailfront:throttle:',
  // A local Redis answers in well under a millisecond; a login must not wait on a sick one.
  redisTimeoutMs: 250,
} as const;

const KEYS = ['enabled', 'base_delay_ms', 'max_delay_ms', 'failures_per_user', 'failures_per_address', 'failure_window_ms', 'refusal_ms', 'max_tracked', 'exempt_networks', 'ipv6_prefix_bits', 'known_address_ms', 'redis'] as const;
const REDIS_KEYS = ['url', 'sentinel', 'username', 'auth_password', 'key_prefix', 'timeout_ms', 'ca_file', 'cert_file', 'key_file'] as const;

const SENTINEL_KEYS = ['master_name', 'nodes', 'username', 'auth_password'] as const;

/** The TLS files of `throttle.redis`: config key, field, and the TLS option each becomes. */
export const REDIS_TLS_FILES = [
  ['ca_file', 'caFile', 'ca'],
  ['cert_file', 'certFile', 'cert'],
  ['key_file', 'keyFile', 'key'],
] as const;

/** Each setting of ThrottleConfig with its config key, in the section's order. */
const SETTING_KEYS: readonly (readonly [Exclude<keyof ThrottleConfig, 'redis' | 'exemptNetworks' | 'ipv6PrefixBits' | 'knownAddressMs'>, string])[] = [
  ['enabled', 'enabled'],
  ['baseDelayMs', 'base_delay_ms'],
  ['maxDelayMs', 'max_delay_ms'],
  ['failuresPerUser', 'failures_per_user'],
  ['failuresPerAddress', 'failures_per_address'],
  ['failureWindowMs', 'failure_window_ms'],
  ['refusalMs', 'refusal_ms'],
  ['maxTrackedSubjects', 'max_tracked'],
];

/** Each setting of ThrottleRedisConfig but `sentinel` with its config key under `redis`. */
const REDIS_SETTING_KEYS: readonly (readonly [Exclude<keyof ThrottleRedisConfig, 'sentinel'>, string])[] = [
  ['url', 'url'],
  ['username', 'username'],
  ['password', 'auth_password'],
  ['keyPrefix', 'key_prefix'],
  ['timeoutMs', 'timeout_ms'],
  ['caFile', 'ca_file'],
  ['certFile', 'cert_file'],
  ['keyFile', 'key_file'],
];

/** Each setting of `redis.sentinel` with its config key under it, as a value two sections can compare. */
const SENTINEL_SETTING_KEYS: readonly (readonly [string, (s: ThrottleSentinelConfig | undefined) => string | undefined])[] = [
  ['master_name', (s) => s?.masterName],
  ['nodes', (s) => s?.nodes.map(sentinelNodeName).join(',')],
  ['username', (s) => s?.username],
  ['auth_password', (s) => s?.password],
];

/** A sentinel as the config names it: `host:port`, an IPv6 address in brackets. */
export function sentinelNodeName(node: SentinelNode): string {
  return node.host.includes(':') ? `[${node.host}]:${node.port}` : `${node.host}:${node.port}`;
}

/** The keys under `redis.sentinel` whose values differ between two sections (either may have none). */
function sentinelChanges(a: ThrottleSentinelConfig | undefined, b: ThrottleSentinelConfig | undefined): string[] {
  return SENTINEL_SETTING_KEYS.filter(([, value]) => value(a) !== value(b)).map(([key]) => key);
}

/**
 * The config keys whose values differ between two `throttle` sections (`redis` when one has it
 * and the other not, else `redis.<key>` for each), for a reload to say what it changed.
 */
export function throttleChanges(previous: ThrottleConfig, next: ThrottleConfig): string[] {
  const changed = SETTING_KEYS.filter(([field]) => previous[field] !== next[field]).map(([, key]) => key);
  if ((previous.exemptNetworks ?? []).join(',') !== (next.exemptNetworks ?? []).join(',')) changed.push('exempt_networks');
  if (ipv6PrefixBitsOf(previous) !== ipv6PrefixBitsOf(next)) changed.push('ipv6_prefix_bits');
  if (knownAddressMsOf(previous) !== knownAddressMsOf(next)) changed.push('known_address_ms');
  if ((previous.redis === undefined) !== (next.redis === undefined)) changed.push('redis');
  else if (previous.redis !== undefined && next.redis !== undefined) {
    for (const [field, key] of REDIS_SETTING_KEYS) if (previous.redis[field] !== next.redis[field]) changed.push(`redis.${key}`);
    if ((previous.redis.sentinel === undefined) !== (next.redis.sentinel === undefined)) changed.push('redis.sentinel');
    else for (const key of sentinelChanges(previous.redis.sentinel, next.redis.sentinel)) changed.push(`redis.sentinel.${key}`);
  }
  return changed;
}

/** throttle.ipv6_prefix_bits in force. */
export function ipv6PrefixBitsOf(config: ThrottleConfig): number {
  return config.ipv6PrefixBits ?? THROTTLE_DEFAULTS.ipv6PrefixBits;
}

/** throttle.known_address_ms in force (0: off). */
export function knownAddressMsOf(config: ThrottleConfig): number {
  return config.knownAddressMs ?? THROTTLE_DEFAULTS.knownAddressMs;
}

/**
 * Whether two `throttle.redis` sections reach the same Redis the same way (every setting but the
 * call deadline, `timeout_ms`): a connection made for one serves the other. A TLS file's content
 * is not compared: each connection attempt reads it anew.
 */
export function sameRedisConnection(a: ThrottleRedisConfig, b: ThrottleRedisConfig): boolean {
  return REDIS_SETTING_KEYS.every(([field]) => field === 'timeoutMs' || a[field] === b[field]) && (a.sentinel === undefined) === (b.sentinel === undefined) && sentinelChanges(a.sentinel, b.sentinel).length === 0;
}

/**
 * Reads the `throttle` section (absent: defaults); every problem goes to `issues`. `resolvePath`
 * makes file names absolute (against the config file's folder); without it, a relative file name
 * is a problem, not a name resolved against whatever folder the process runs in.
 */
export function readThrottleConfig(v: unknown, path: string, issues: IssueList, resolvePath?: (p: string) => string): ThrottleConfig {
  const o = v === undefined ? {} : readSection(v, path, KEYS, issues) ?? {};
  const d = THROTTLE_DEFAULTS;
  const baseDelayMs = int(o, 'base_delay_ms', path, issues, 0, 60_000, d.baseDelayMs);
  const maxDelayMs = int(o, 'max_delay_ms', path, issues, 0, 300_000, d.maxDelayMs);
  if (maxDelayMs < baseDelayMs) issues.add(at(path, 'max_delay_ms'), `at least base_delay_ms (${baseDelayMs})`, maxDelayMs);
  const redis = o['redis'] === undefined ? undefined : readRedis(o['redis'], at(path, 'redis'), issues, resolvePath);
  return {
    enabled: bool(o, 'enabled', path, issues, d.enabled),
    baseDelayMs,
    maxDelayMs,
    failuresPerUser: int(o, 'failures_per_user', path, issues, 1, 1_000_000, d.failuresPerUser),
    failuresPerAddress: int(o, 'failures_per_address', path, issues, 1, 1_000_000, d.failuresPerAddress),
    failureWindowMs: int(o, 'failure_window_ms', path, issues, 1_000, 7 * 24 * 3_600_000, d.failureWindowMs),
    refusalMs: int(o, 'refusal_ms', path, issues, 1_000, 7 * 24 * 3_600_000, d.refusalMs),
    maxTrackedSubjects: int(o, 'max_tracked', path, issues, 100, MAX_CACHE_ENTRIES, d.maxTrackedSubjects),
    exemptNetworks: readNetworks(o, 'exempt_networks', path, issues),
    // Not past /64 (a customer's smallest delegation, RFC 6177), nor wider than /32 (a provider's).
    ipv6PrefixBits: int(o, 'ipv6_prefix_bits', path, issues, 32, 64, d.ipv6PrefixBits),
    knownAddressMs: offOrInt(o, 'known_address_ms', path, issues, 60_000, 30 * 24 * 3_600_000, d.knownAddressMs),
    ...(redis !== undefined ? { redis } : {}),
  };
}


function readRedis(v: unknown, path: string, issues: IssueList, resolvePath: ((p: string) => string) | undefined): ThrottleRedisConfig {
  const o = readSection(v, path, REDIS_KEYS, issues) ?? {};
  if (o['sentinel'] !== undefined && o['url'] !== undefined) issues.addFinding(at(path, 'sentinel'), 'either url or sentinel, not both (url names one Redis, sentinel the sentinels that name the primary)', 'both');
  const sentinel = o['sentinel'] === undefined ? undefined : readSentinel(o['sentinel'], at(path, 'sentinel'), issues);
  // Neither: one issue, not one for the string missing and one for the URL.
  if (sentinel === undefined && o['url'] === undefined) issues.addFinding(at(path, 'url'), 'a redis:// or rediss:// URL with a host, or sentinel in its place', 'nothing');
  const url = sentinel === undefined && o['url'] !== undefined ? str(o, 'url', path, issues) : undefined;
  let parsed: URL | undefined;
  try {
    parsed = url === undefined ? undefined : new URL(url);
  } catch {
    parsed = undefined;
  }
  if (url === undefined) {
    // Sentinel: no URL to check.
  } else if (parsed === undefined || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || parsed.hostname === '') {
    // A URL that does not parse may still hold a password: what precedes an "@" is never shown.
    issues.addUrl(at(path, 'url'), 'a redis:// or rediss:// URL with a host', url);
  } else if (parsed.password !== '') {
    // A password in a URL ends up in process listings, shell histories and error messages.
    issues.addFinding(at(path, 'url'), 'a URL without a password (use auth_password_file)', 'a URL with a password');
  } else if (!/^\/?(?:\d+)?$/.test(parsed.pathname)) {
    // The path is the database number; the client library throws on anything else.
    issues.addUrl(at(path, 'url'), 'a redis:// or rediss:// URL whose path, if any, is a database number (redis://host:6379/0)', url);
  }
  const username = optStr(o, 'username', path, issues);
  const password = optStr(o, 'auth_password', path, issues);
  const files: { caFile?: string; certFile?: string; keyFile?: string } = {};
  const named = new Set<string>();
  for (const [key, field] of REDIS_TLS_FILES) {
    const file = optStr(o, key, path, issues);
    if (file === undefined) continue;
    named.add(key);
    if (file === '') continue;
    // Not ignored: the operator would believe the connection is checked against the CA.
    if (sentinel !== undefined) issues.addFinding(at(path, key), 'nothing with sentinel (TLS is for a rediss:// url; the primary a sentinel names is reached without TLS)', 'a file name');
    else if (parsed !== undefined && parsed.protocol !== 'rediss:') issues.addFinding(at(path, key), 'a rediss:// url (the file is for TLS, which a redis:// url does not use)', `a ${parsed.protocol}// url`);
    else if (resolvePath !== undefined) files[field] = resolvePath(file);
    else if (isAbsolute(file)) files[field] = file;
    else issues.add(at(path, key), 'an absolute file name', file);
  }
  // One without the other is of no use, and Redis would only tell by failing the handshake.
  if (named.has('cert_file') !== named.has('key_file')) {
    const missing = named.has('cert_file') ? 'key_file' : 'cert_file';
    issues.addFinding(at(path, missing), 'a file name: a client certificate (cert_file) goes with its key (key_file)', 'nothing');
  }
  return {
    ...(url !== undefined ? { url } : {}),
    ...(sentinel !== undefined ? { sentinel } : {}),
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    keyPrefix: str(o, 'key_prefix', path, issues, THROTTLE_DEFAULTS.redisKeyPrefix),
    timeoutMs: int(o, 'timeout_ms', path, issues, 10, 10_000, THROTTLE_DEFAULTS.redisTimeoutMs),
    ...files,
  };
}

/** `host:port`, or `[IPv6]:port`. */
const SENTINEL_NODE = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]/@]+)):(\d{1,5})$/;

/** `throttle.redis.sentinel`: a master name and at least one sentinel, with the sentinels' own credentials if they ask for them. */
function readSentinel(v: unknown, path: string, issues: IssueList): ThrottleSentinelConfig {
  const o = readSection(v, path, SENTINEL_KEYS, issues) ?? {};
  const masterName = str(o, 'master_name', path, issues);
  const nodes: SentinelNode[] = [];
  strList(o, 'nodes', path, issues).forEach((name, i) => {
    const m = SENTINEL_NODE.exec(name);
    const port = Number(m?.[3] ?? 0);
    if (m === null || port < 1 || port > 65535) issues.addUrl(at(at(path, 'nodes'), i), 'a sentinel as host:port (an IPv6 address in brackets: [2001:db8::1]:26379)', name);
    else nodes.push({ host: m[1] ?? m[2] ?? '', port });
  });
  const username = optStr(o, 'username', path, issues);
  const password = optStr(o, 'auth_password', path, issues);
  return { masterName, nodes, ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}) };
}
