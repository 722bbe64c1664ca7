/**
 * Auth-failure throttling: per user and per client address, failed logins earn a penalty that
 * doubles up to a cap, and past a limit logins are refused for a while. The same wrong password
 * tried again does not count again (a phone retrying a stale password is not a guesser); the
 * machine never keeps passwords, only keyed fingerprints of them. Trusted networks (webmail) and
 * exempt ones (a carrier's NAT) are not counted per address, only per user. An address a user
 * logged in from lately is known: the user's refusal does not refuse it (an attacker who knows a
 * user name cannot lock the user out), its own per-address count still does. Counters live in memory, or in Redis so that a fleet
 * shares them; when Redis is unreachable or slow, local counters answer until it is back, and
 * the failures it missed are added to its counts until it takes writes again and holds them.
 *
 * Owns the counters and their stores. Must not: decide wire text, wait (it returns delays for the
 * session to apply), log a password or fingerprint, or ever reject (a broken store lets logins through
 * to the directory rather than locking everyone out).
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { createClient } from '@redis/client';
import { LRUCache } from 'lru-cache';
import { caCertificatesProblem, readCaFile } from '../ca-file.js';
import { urlShown } from '../config/validate.js';
import type { ConfigIssue } from '../config/validate.js';
import type { Logger } from '../log.js';
import { CidrSet, addressKey } from '../net/cidr.js';
import { REDIS_TLS_FILES, ipv6PrefixBitsOf, knownAddressMsOf, sameRedisConnection, sentinelNodeName, throttleChanges } from './throttle-config.js';
import type { SentinelNode, ThrottleConfig, ThrottleRedisConfig, ThrottleSentinelConfig } from './throttle-config.js';

/** One login attempt as the throttle sees it. */
export interface LoginAttempt {
  /** The normalised user, or null when the name could not be normalised (only the address counts then). */
  readonly user: string | null;
  /** The client address as the socket reports it. */
  readonly address: string;
  /** The address is on a trusted network: not counted per address (nor is one of throttle.exempt_networks, whatever this says). */
  readonly trusted: boolean;
}

/** What the throttle says about an attempt. */
export interface ThrottleVerdict {
  /** Over a limit: answer 'limit' without asking the directory. */
  readonly refused: boolean;
  /** Which counter refused, for logs. */
  readonly refusedBy?: 'user' | 'address';
  /** For how long the refusal lasts (for logs). */
  readonly refusedForMs: number;
  /** Penalty to add before answering a failed login. */
  readonly delayMs: number;
  /**
   * The user's limit refuses the user, but not this login: its address is known (the user logged
   * in from it within throttle.known_address_ms).
   */
  readonly knownAddress?: true;
}

/** A check's verdict, with what the address has left when asked (see Throttle.check). */
export interface BudgetedVerdict extends ThrottleVerdict {
  /**
   * Failures the address may still have counted before its logins are refused (its limit less
   * those counted); absent when the address is not counted (trusted, or throttling off).
   */
  readonly addressLeft?: number;
}

/** The state of one counted subject (a user or an address). */
export interface SubjectState {
  /** Counted failures within the window. */
  readonly failures: number;
  /** Time left of a refusal; 0 when logins are allowed. */
  readonly refusedForMs: number;
}

/** A subject to count a failure for, with the limit that starts its refusal. */
export interface SubjectLimit {
  readonly key: string;
  readonly limit: number;
  /**
   * Where a failure of a user comes from (sourceTag() of the address as the throttle keys it),
   * kept with its fingerprint so that a success from there forgets it (forgetSource()); none for
   * an address's own count.
   */
  readonly source?: string;
}

/** How long failures and refusals last, and how many fingerprints are kept per subject at least (see fingerprintsKeptFor()). */
export interface FailurePolicy {
  readonly failureWindowMs: number;
  readonly refusalMs: number;
  readonly fingerprintsKept: number;
}

/** Where counters live. Implementations never reject. */
export interface ThrottleStore {
  /**
   * The state of each subject, in order. A store that adds counts of its own to another's starts
   * the refusal the two together earn (see RedisThrottleStore).
   */
  read(subjects: readonly SubjectLimit[]): Promise<SubjectState[]>;
  /** Counts a failure for each subject unless it already holds `fingerprint`; returns the new states. */
  addFailure(subjects: readonly SubjectLimit[], fingerprint: string): Promise<SubjectState[]>;
  /** Forgets the keys. */
  clear(keys: readonly string[]): Promise<void>;
  /**
   * After a success from `source`: forgets the failures of `key` counted from there (not those
   * from elsewhere, nor those kept without a source); a refusal ends when what is left is below
   * `limit`, and runs on otherwise.
   */
  forgetSource(key: string, source: string, limit: number): Promise<void>;
  close(): Promise<void>;
}

/** A user's known address (see Throttle.recordSuccess()): the user's key, the address's, and for how long. */
export interface KnownAddress {
  readonly user: string;
  readonly address: string;
  readonly ms: number;
}

/**
 * Known addresses kept per user in Redis at most: the most recently seen are kept. A phone on a
 * mobile network changes address all the time; home, office and a webmail's forwarded addresses fit.
 */
export const KNOWN_ADDRESSES_PER_USER = 8;


/** Wrong passwords remembered per subject at least: enough for a client cycling through a few stale ones. */
export const FINGERPRINTS_KEPT = 8;

/**
 * At most. A subject keeps as many as its limit (fingerprintsKeptFor()): with 8, nine phones
 * behind one NAT retrying stale passwords in turn each counted anew at every retry, and refused
 * every user behind it for as long as they retried. A limit set far higher (to turn refusals off)
 * keeps this many: each takes about 45 bytes while its subject is tracked (290 MB for 100,000
 * subjects of 64: see the README's max_tracked).
 */
export const MAX_FINGERPRINTS_KEPT = 64;

/** The wrong passwords a subject of `limit` keeps: as many as it may count before its refusal, at least `floor`, at most MAX_FINGERPRINTS_KEPT. */
export function fingerprintsKeptFor(limit: number, floor: number = FINGERPRINTS_KEPT): number {
  return Math.min(MAX_FINGERPRINTS_KEPT, Math.max(floor, limit));
}

/** 96 bits: collisions between two wrong passwords of one user are out of reach. */
const FINGERPRINT_BYTES = 12;
/** A fingerprint's length in base64url, as stores keep it. */
const FINGERPRINT_CHARS = 16;

/**
 * 48 bits of SHA-256 of the address key: fixed length for the Redis hash (8 characters) and a
 * number for the local counters (8 bytes, see MemoryEntry.sources). Not keyed, so that every
 * instance tags an address alike whatever its fingerprint key; a guesser would need an address of
 * his own whose tag is the user's address's (2^48 tries, each an address to own) for the user's
 * success to forget his failures.
 */
const SOURCE_BYTES = 6;
const SOURCE_CHARS = 8;

/**
 * The tags of the address keys seen lately: a SHA-256 per login was 1.3 % of a warm login's CPU
 * (its digest, its Buffer and its base64url text), and a webmail or a household logs in from the
 * same few keys all day. Emptied whole when full (no order to keep: a miss only costs a digest).
 */
const recentSourceTags = new Map<string, string>();
const RECENT_SOURCE_TAGS = 4096;

/** The source tag of an address key (addressKey()): where a user's failure came from. */
export function sourceTag(addressKey: string): string {
  let tag = recentSourceTags.get(addressKey);
  if (tag === undefined) {
    tag = createHash('sha256').update(addressKey).digest().subarray(0, SOURCE_BYTES).toString('base64url');
    if (recentSourceTags.size >= RECENT_SOURCE_TAGS) recentSourceTags.clear();
    recentSourceTags.set(addressKey, tag);
  }
  return tag;
}

/** A source tag as the local counters keep it; -1 for none. */
function sourceNumber(tag: string | undefined): number {
  return tag === undefined || tag === '' ? -1 : Buffer.from(tag, 'base64url').readUIntBE(0, SOURCE_BYTES);
}

/** The tag sourceNumber() was given; '' for none. */
function sourceText(n: number | undefined): string {
  if (n === undefined || n < 0) return '';
  const bytes = Buffer.alloc(SOURCE_BYTES);
  bytes.writeUIntBE(n, 0, SOURCE_BYTES);
  return bytes.toString('base64url');
}

/** A clock in milliseconds; injectable for tests. */
export type Clock = () => number;

/**
 * The monotonic clock on the epoch's scale (0 is long before any of its times): windows,
 * refusals, log intervals and flaps are timed by it, so that a step of the wall clock (NTP)
 * neither ends nor stretches them, nor gives a timer a delay past 2^31 ms (which node cuts to 1 ms).
 */
const monotonic: Clock = () => performance.timeOrigin + performance.now();

interface MemoryEntry {
  failures: number;
  fingerprints: string[];
  /**
   * Where each of `fingerprints` was counted from (sourceNumber(), -1 for none), at the same
   * index: numbers, not the tags' strings, so that the array keeps them unboxed (about 11 bytes
   * a failure, measured); made at the first failure with a source (an address's count has none).
   */
  sources?: number[];
  refusedUntil: number;
  /** For counts kept apart from another's: that count when last seen (see refuseWith). */
  shared?: number;
  /** For counts kept apart: the subject's own limit, with which they are written to the other's (see apart()). */
  limit?: number;
  /**
   * For counts kept apart: the refusal was started by the other count and these together, which
   * may have held one password twice (see settle()), not by these alone.
   */
  joint?: boolean;
}

/**
 * A subject whose failures are counted apart from another store's: `limit` starts the refusal
 * here, `own` is the subject's own limit, and `joint` says whether `limit` takes the other
 * store's count into account (a refusal it starts may then end, see settle()).
 */
export interface ApartSubject extends SubjectLimit {
  readonly own: number;
  readonly joint: boolean;
}

/** The failures counted apart for one subject, to be written to the other store. */
export interface ApartEntry {
  readonly key: string;
  /** The subject's own limit. */
  readonly limit: number;
  readonly fingerprints: readonly string[];
  /** Where each of `fingerprints` was counted from (a source tag, '' for none). */
  readonly sources: readonly string[];
  /** Time left of the refusal these counts started; undefined when they started none. */
  readonly refusalLeftMs: number | undefined;
}

/**
 * Counters in this process, bounded: at most `maxEntries` subjects (least recently used forgotten
 * first), each forgotten `failureWindowMs` after its last counted failure, so that an attacker
 * spraying user names or addresses cannot grow memory without bound.
 */
export class MemoryThrottleStore implements ThrottleStore {
  private cache: LRUCache<string, MemoryEntry>;

  constructor(
    private policy: FailurePolicy,
    maxEntries: number,
    private readonly now: Clock = monotonic,
  ) {
    this.cache = this.newCache(maxEntries);
  }

  private newCache(maxEntries: number): LRUCache<string, MemoryEntry> {
    // ttlResolution 0: lru-cache would otherwise cache the time for a tick, and refusals end on time.
    return new LRUCache<string, MemoryEntry>({ max: maxEntries, ttl: this.policy.failureWindowMs, ttlResolution: 0, perf: { now: this.now } });
  }

  /**
   * A reload's new window and refusal time: for the failures counted and refusals started from
   * now on. A subject counted before keeps the expiry it was given, and a refusal its end.
   */
  setPolicy(policy: FailurePolicy): void {
    this.policy = policy;
    this.cache.ttl = policy.failureWindowMs;
  }

  /**
   * A reload's new max_tracked: the subjects are copied into a cache of that size (lru-cache's
   * is fixed when it is made), each with the time it had left; when they do not all fit, the
   * least recently used are forgotten. Returns how many were.
   */
  resize(maxEntries: number): number {
    const before = this.cache.size;
    this.cache = resized(this.cache, this.newCache(maxEntries));
    return before - this.cache.size;
  }

  /** Subjects tracked now (for tests and metrics). */
  get size(): number {
    return this.cache.size;
  }

  /** At most this many subjects are tracked. */
  get capacity(): number {
    return this.cache.max;
  }

  read(subjects: readonly SubjectLimit[]): Promise<SubjectState[]> {
    return Promise.resolve(this.readNow(subjects.map((s) => s.key)));
  }

  /** The synchronous form of read(). */
  readNow(keys: readonly string[]): SubjectState[] {
    const now = this.now();
    return keys.map((key) => stateOf(this.cache.get(key), now));
  }

  addFailure(subjects: readonly (SubjectLimit | ApartSubject)[], fingerprint: string): Promise<SubjectState[]> {
    const now = this.now();
    return Promise.resolve(
      subjects.map((subject) => {
        const { key, limit } = subject;
        const entry: MemoryEntry = this.cache.get(key) ?? { failures: 0, fingerprints: [], refusedUntil: 0 };
        if ('own' in subject) entry.limit = subject.own;
        if (entry.fingerprints.includes(fingerprint)) return stateOf(entry, now);
        entry.fingerprints.push(fingerprint);
        if (subject.source !== undefined) entry.sources ??= entry.fingerprints.slice(1).map(() => -1);
        entry.sources?.push(sourceNumber(subject.source));
        // Counts kept apart are refused at a lowered limit: they keep as many as the subject's own.
        if (entry.fingerprints.length > fingerprintsKeptFor('own' in subject ? subject.own : limit, this.policy.fingerprintsKept)) {
          entry.fingerprints.shift();
          entry.sources?.shift();
        }
        entry.failures++;
        if (entry.failures >= limit) {
          // A refusal these counts started alone stays theirs when a joint one prolongs it.
          entry.joint = 'own' in subject && subject.joint && (entry.refusedUntil <= now || entry.joint === true);
          entry.refusedUntil = now + this.policy.refusalMs;
        }
        this.cache.set(key, entry, { ttl: Math.max(this.policy.failureWindowMs, entry.refusedUntil - now) });
        return stateOf(entry, now);
      }),
    );
  }

  /** Whether `key` holds `fingerprint`: a failure with it would not be counted again. */
  holds(key: string, fingerprint: string): boolean {
    return this.cache.peek(key)?.fingerprints.includes(fingerprint) ?? false;
  }

  /**
   * Takes the failure with `fingerprint` out of `key`'s count, if the key holds it: for counts
   * kept apart from others, once the others hold it. A refusal it helped start runs on (the entry
   * is kept for it); an entry with neither failures nor a refusal is forgotten.
   */
  forget(key: string, fingerprint: string): void {
    const entry = this.cache.peek(key);
    const at = entry?.fingerprints.indexOf(fingerprint) ?? -1;
    if (entry === undefined || at < 0) return;
    entry.fingerprints.splice(at, 1);
    entry.sources?.splice(at, 1);
    entry.failures = Math.max(0, entry.failures - 1);
    if (entry.failures === 0 && entry.refusedUntil <= this.now()) this.cache.delete(key);
  }

  forgetSource(key: string, source: string, limit: number): Promise<void> {
    const entry = this.cache.peek(key);
    const sources = entry?.sources;
    if (entry === undefined || sources === undefined) return Promise.resolve();
    const tag = sourceNumber(source);
    if (tag < 0) return Promise.resolve();
    let forgotten = 0;
    for (let i = sources.length - 1; i >= 0; i--) {
      if (sources[i] !== tag) continue;
      entry.fingerprints.splice(i, 1);
      sources.splice(i, 1);
      forgotten++;
    }
    if (forgotten === 0) return Promise.resolve();
    // Failures past the fingerprints kept (a subject refused already) are not known by source: they stay.
    entry.failures = Math.max(0, entry.failures - forgotten);
    if (entry.failures < limit) {
      entry.refusedUntil = 0;
      entry.joint = false;
    }
    if (entry.failures === 0) this.cache.delete(key);
    return Promise.resolve();
  }

  /**
   * For counts kept apart from another's (`shared`), that reach a limit together with it: starts a
   * refusal of `key` when the two have reached `limit` and none is running in either. Once per
   * failure, as addFailure starts one: `failed` when `shared` counted a failure just now, else
   * only when `shared` grew since it was last given here (failures counted elsewhere, seen by a
   * read), so that a refusal that ended is not started again at every read while the counts last
   * (failures are remembered longer than a refusal lasts).
   */
  refuseWith(key: string, limit: number, shared: SubjectState, failed: boolean): void {
    const entry = this.cache.get(key);
    if (entry === undefined) return;
    const grew = failed || entry.shared === undefined || shared.failures > entry.shared;
    entry.shared = shared.failures;
    const now = this.now();
    if (!grew || entry.failures + shared.failures < limit || entry.refusedUntil > now || shared.refusedForMs > 0) return;
    entry.refusedUntil = now + this.policy.refusalMs;
    entry.joint = true;
    this.cache.set(key, entry, { ttl: Math.max(this.cache.getRemainingTTL(key), entry.refusedUntil - now) });
  }

  /**
   * For counts kept apart from another's, once that one holds failures they held (after forget()):
   * a refusal the two started together (refuseWith, or a failure the other refused to write) ends
   * unless they still reach `limit` together, for it may have counted one password twice (in
   * both); one these counts started alone runs on. `shared` is the other's state now, taken as
   * last seen. `doubleCounted`: the other held a password these counts held too; without that,
   * a count below the limit is no sign of a password counted twice (the other's failures may
   * have expired since, and a refusal outlasts the failures that started it), and the refusal
   * runs on.
   */
  settle(key: string, limit: number, shared: SubjectState, doubleCounted = true): void {
    const entry = this.cache.peek(key);
    if (entry === undefined) return;
    entry.shared = shared.failures;
    const now = this.now();
    if (doubleCounted && entry.joint === true && entry.refusedUntil > now && entry.failures + shared.failures < limit) {
      entry.refusedUntil = 0;
      entry.joint = false;
    }
    if (entry.failures === 0 && entry.refusedUntil <= now) this.cache.delete(key);
  }

  /**
   * For counts kept apart: the subjects with the fingerprints they hold (a copy, at most one per
   * subject tracked), to be written to the other store.
   */
  apart(): ApartEntry[] {
    const now = this.now();
    const out: ApartEntry[] = [];
    for (const [key, entry] of this.cache.entries()) {
      if (entry.fingerprints.length === 0 || entry.limit === undefined) continue;
      out.push({ key, limit: entry.limit, fingerprints: [...entry.fingerprints], sources: entry.fingerprints.map((_, i) => sourceText(entry.sources?.[i])), refusalLeftMs: entry.refusedUntil > 0 ? Math.max(0, entry.refusedUntil - now) : undefined });
    }
    return out;
  }

  clear(keys: readonly string[]): Promise<void> {
    for (const key of keys) this.cache.delete(key);
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.cache.clear();
    return Promise.resolve();
  }
}

/**
 * `to` (empty) given the entries of `from`, least recently used first, so that their order is
 * kept and those over its maximum are the least recently used; each with the time it had left.
 */
function resized<V extends {}>(from: LRUCache<string, V>, to: LRUCache<string, V>): LRUCache<string, V> {
  for (const key of from.rkeys()) {
    const value = from.peek(key);
    const ttl = from.getRemainingTTL(key);
    if (value !== undefined && ttl > 0) to.set(key, value, Number.isFinite(ttl) ? { ttl } : {});
  }
  return to;
}

function stateOf(entry: MemoryEntry | undefined, now: number): SubjectState {
  if (entry === undefined) return { failures: 0, refusedForMs: 0 };
  return { failures: entry.failures, refusedForMs: Math.max(0, entry.refusedUntil - now) };
}

/**
 * Redis state for logs and metrics: 'up' shares counters; 'read-only' (Redis answers but refuses
 * writes, or answers calls with an error) shares what Redis holds, if it answers reads, plus the
 * failures this instance counted that Redis refused; otherwise local counters answer.
 */
export type RedisState = 'connecting' | 'up' | 'read-only' | 'down';

/**
 * Lua shared by the scripts that read a user's failures by source. `s` holds, for the
 * fingerprints of `p` counted with a source, one record each: the fingerprint and its source tag
 * (FINGERPRINT_CHARS + SOURCE_CHARS). Records are found by fingerprint, not by position, so that
 * a `p` written by a version without sources (which leaves `s` alone, and may trim `p`) spoils
 * nothing: a fingerprint without a record has no source, a record whose fingerprint left `p` is
 * ignored and dropped at the next write.
 * fromSources(p, s, tags): the fingerprints of `p` counted from one of `tags` (tags concatenated),
 * as a set, and how many. kept(p, s, gone): the records of `s` whose fingerprint is in `p` and not in `gone`.
 */
const SOURCES_LUA = `
local FP = ${FINGERPRINT_CHARS}
local TAG = ${SOURCE_CHARS}
local REC = FP + TAG
local function inP(p)
  local set = {}
  for j = 1, string.len(p), FP do set[string.sub(p, j, j + FP - 1)] = true end
  return set
end
local function fromSources(p, s, tags)
  local held = inP(p)
  local out = {}
  local count = 0
  for j = 1, string.len(s), REC do
    local f = string.sub(s, j, j + FP - 1)
    local t = string.sub(s, j + FP, j + REC - 1)
    if held[f] and not out[f] then
      for k = 1, string.len(tags), TAG do
        if string.sub(tags, k, k + TAG - 1) == t then
          out[f] = true
          count = count + 1
          break
        end
      end
    end
  end
  return out, count
end
local function kept(p, s, gone)
  local held = inP(p)
  local out = {}
  for j = 1, string.len(s), REC do
    local f = string.sub(s, j, j + FP - 1)
    if held[f] and not gone[f] then out[#out + 1] = string.sub(s, j, j + REC - 1) end
  end
  return table.concat(out)
end
`;

/**
 * One hash per subject: n = failures, p = the recent fingerprints concatenated (fixed length
 * each; as many as the key's limit, see fingerprintsKeptFor()), b = refused until (Redis server
 * time, ms), and for a user s = where each of p's failures came from (see SOURCES_LUA; none for
 * an address). One script call per attempt keeps it atomic
 * for the whole fleet and uses one clock, Redis's own. (replicate_commands: Redis before 5 would
 * refuse writes after TIME; it is a no-op since.) Per key, ARGV gives three values after the
 * first four: the limit, the failure's source tag ('' none), and the tags whose failures this
 * instance leaves out of the count it is answered (a success's forgetting Redis has not taken
 * yet, see RedisThrottleStore.uncleared; '' none). Per key three numbers: the count, the time
 * left of the refusal, and 1 if it wrote, 0 if the password was counted already, -1 if Redis
 * refused the write (the count and refusal are then Redis's as they were); after them, the
 * refusal's error text, or '' when none was refused. A write is attempted with pcall, so that a
 * Redis refusing writes (out of memory, a replica) still says, per key, whether it held the
 * password: only a failure it did not hold is one it missed. A refusal running is never shortened:
 * a failure counted apart and written later passes the time left of the refusal it started.
 * n, p and b mean what they meant before s was added: an instance of the version before reads and
 * writes them alike, leaving s as it is.
 */
const FAILURE_SCRIPT = `
if redis.replicate_commands then redis.replicate_commands() end
${SOURCES_LUA}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fp = ARGV[1]
local window = tonumber(ARGV[2])
local refusal = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local len = string.len(fp)
local out = {}
local refused = ''
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 + 3 * i])
  local source = ARGV[3 + 3 * i] or ''
  local excluded = ARGV[4 + 3 * i] or ''
  local keep = math.min(${MAX_FINGERPRINTS_KEPT}, math.max(floor, limit))
  local v = redis.call('HMGET', key, 'n', 'p', 'b', 's')
  local n = tonumber(v[1]) or 0
  local p = v[2] or ''
  local b = tonumber(v[3]) or 0
  local s = v[4] or ''
  local seen = false
  for j = 1, string.len(p), len do
    if string.sub(p, j, j + len - 1) == fp then seen = true break end
  end
  local status = 0
  if not seen then
    local np = p .. fp
    if string.len(np) > keep * len then np = string.sub(np, -keep * len) end
    local nb = b
    if n + 1 >= limit then nb = math.max(b, now + refusal) end
    local w
    local ns = s
    if source ~= '' or s ~= '' then
      ns = kept(np, s, {})
      if source ~= '' then ns = ns .. fp .. source end
      w = redis.pcall('HSET', key, 'n', n + 1, 'p', np, 'b', string.format('%.0f', nb), 's', ns)
    else
      w = redis.pcall('HSET', key, 'n', n + 1, 'p', np, 'b', string.format('%.0f', nb))
    end
    if type(w) == 'table' and w.err then
      status = -1
      refused = w.err
    else
      n = n + 1
      b = nb
      p = np
      s = ns
      redis.call('PEXPIRE', key, math.max(window, b - now))
      status = 1
    end
  end
  if excluded ~= '' then
    local _, c = fromSources(p, s, excluded)
    if c > 0 then
      n = math.max(0, n - c)
      if n < limit then b = 0 end
    end
  end
  out[#out + 1] = n
  out[#out + 1] = math.max(0, b - now)
  out[#out + 1] = status
end
out[#out + 1] = refused
return out
`;

/**
 * Per key, ARGV gives two values: the tags whose failures are left out ('' none, see
 * FAILURE_SCRIPT), and the limit (a refusal ends for the count left out of when it is below).
 */
const READ_SCRIPT = `
${SOURCES_LUA}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local excluded = ARGV[2 * i - 1] or ''
  local n
  local b
  if excluded == '' then
    local v = redis.call('HMGET', key, 'n', 'b')
    n = tonumber(v[1]) or 0
    b = tonumber(v[2]) or 0
  else
    local v = redis.call('HMGET', key, 'n', 'p', 'b', 's')
    n = tonumber(v[1]) or 0
    b = tonumber(v[3]) or 0
    local _, c = fromSources(v[2] or '', v[4] or '', excluded)
    if c > 0 then
      n = math.max(0, n - c)
      if n < (tonumber(ARGV[2 * i]) or 0) then b = 0 end
    end
  end
  out[#out + 1] = n
  out[#out + 1] = math.max(0, b - now)
end
return out
`;

/**
 * After a successful login: the failures of the user's count KEYS[1] counted from the source tags
 * ARGV[1] (concatenated; '' none) are forgotten: their fingerprints leave p and s, n drops by as
 * many, the refusal ends when n is then below the limit ARGV[2] (runs on otherwise), and the key
 * is deleted when nothing is left. Failures from other sources stay, and so do those without a
 * source (written by a version before sources, or past the fingerprints kept): the count a
 * guesser built from elsewhere is not the user's to lift. When ARGV[3] is not '', the address
 * ARGV[3] is known for the user until ARGV[4] ms from now in the hash KEYS[2] (field: the
 * address, value: until when, Redis server time), which expires with its latest and keeps the
 * KNOWN_ADDRESSES_PER_USER latest (ARGV[5]). One call, as the DEL alone was. Returns {1}; {0, '',
 * the error text} when Redis refused to write the address (the failures were forgotten); {2, the
 * command, the error text} when Redis refused another command (an ACL without it): the expiry is
 * set before the write, and again right after it when there was no hash yet, and the trim is last
 * and through pcall, so that a command refused leaves a key that expires (PEXPIRE refused: the
 * hash is deleted) rather than one that grows for good, and the call is not taken for a Redis
 * refusing writes. A refused write of the count is an error of the whole call (nothing was
 * written).
 * Out of memory (maxmemory reached, noeviction), Redis refuses a script without flags a command
 * that may grow memory (HSET) only until the script has called a write command, whatever that
 * one changed (Redis 7's scriptVerifyOOM, and 6's alike): so each HSET comes after a write Redis
 * takes then, the count's after an HDEL of the fields it rewrites (n stays, and with it the key
 * and its expiry), the address's after a PEXPIRE of its hash. A success then forgets and makes
 * its address known as the script before sources did, which began with the count's DEL. The
 * HDEL is through pcall: an ACL written before the known addresses lacks it, and the HSET is
 * then refused out of memory only, as before.
 */
const SUCCESS_SCRIPT = `
if redis.replicate_commands then redis.replicate_commands() end
${SOURCES_LUA}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  local v = redis.call('HMGET', KEYS[1], 'n', 'p', 'b', 's')
  local p = v[2] or ''
  local s = v[4] or ''
  local gone, c = fromSources(p, s, ARGV[1])
  if c > 0 then
    local np = {}
    for j = 1, string.len(p), FP do
      local f = string.sub(p, j, j + FP - 1)
      if not gone[f] then np[#np + 1] = f end
    end
    local n = math.max(0, (tonumber(v[1]) or 0) - c)
    local b = tonumber(v[3]) or 0
    if n < tonumber(ARGV[2]) then b = 0 end
    if n == 0 then
      redis.call('DEL', KEYS[1])
    else
      local joined = table.concat(np)
      redis.pcall('HDEL', KEYS[1], 'p', 'b', 's')
      redis.call('HSET', KEYS[1], 'n', n, 'p', joined, 'b', string.format('%.0f', b), 's', kept(joined, s, gone))
    end
  end
end
if ARGV[3] == '' then return {1} end
local ttl = tonumber(ARGV[4])
local max = tonumber(ARGV[5])
local e = redis.pcall('PEXPIRE', KEYS[2], ttl)
local w = redis.pcall('HSET', KEYS[2], ARGV[3], string.format('%.0f', now + ttl))
if type(w) == 'table' and w.err then return {0, '', w.err} end
if type(e) == 'table' or e == 0 then e = redis.pcall('PEXPIRE', KEYS[2], ttl) end
if type(e) == 'table' and e.err then
  redis.pcall('DEL', KEYS[2])
  return {2, 'PEXPIRE', e.err}
end
local n = redis.pcall('HLEN', KEYS[2])
if type(n) == 'table' and n.err then return {2, 'HLEN', n.err} end
if n > max then
  local all = redis.pcall('HGETALL', KEYS[2])
  if all.err then return {2, 'HGETALL', all.err} end
  local fields = {}
  for i = 1, #all, 2 do fields[#fields + 1] = {all[i], tonumber(all[i + 1]) or 0} end
  table.sort(fields, function(a, b) return a[2] < b[2] end)
  local extra = #fields - max
  for i, f in ipairs(fields) do
    if i <= extra or f[2] <= now then
      local d = redis.pcall('HDEL', KEYS[2], f[1])
      if type(d) == 'table' and d.err then return {2, 'HDEL', d.err} end
    end
  end
end
return {1}
`;

/**
 * Whether the hash KEYS[1] (see SUCCESS_SCRIPT) knows the address ARGV[1] now: {1} or {0}; {0,
 * 'HGET', the error text} when Redis refused the HGET (an ACL without it).
 */
const KNOWN_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.pcall('HGET', KEYS[1], ARGV[1])
if type(v) == 'table' and v.err then return {0, 'HGET', v.err} end
if v and (tonumber(v) or 0) > now then return {1} end
return {0}
`;

/**
 * Every command the store and its scripts call, for the ACL of its Redis user (see
 * commandRefused()); with a database number in the URL, the client also sends SELECT; with
 * sentinel, ROLE (see connect()).
 */
export const REDIS_COMMANDS = ['EVALSHA', 'EVAL', 'TIME', 'HMGET', 'HSET', 'PEXPIRE', 'DEL', 'HLEN', 'HGETALL', 'HDEL', 'HGET', 'PING'] as const;

/** REDIS_COMMANDS as an ACL rule grants them (`+evalsha +eval …`); with sentinel, `+role` too. */
function redisAcl(redis: Pick<ThrottleRedisConfig, 'sentinel'>): string {
  return [...REDIS_COMMANDS, ...(redis.sentinel !== undefined ? ['ROLE'] : [])].map((c) => `+${c.toLowerCase()}`).join(' ');
}

/** What a sentinel user needs besides SENTINEL GET-MASTER-ADDR-BY-NAME to listen for failovers (see listen()). */
const SENTINEL_LISTEN_ACL = '+subscribe &+switch-master';

/**
 * The probe's keys, after the prefix (no subject's key, u:… or a:…, is named so), that tell
 * whether Redis takes a failure again, for an instance that had none to write since it refused
 * one: a failure of two subjects written by the failure script, with keys that expire within a
 * second (PROBE_TTL_MS). A Redis that refuses anything a failure takes (a write, a command an ACL
 * leaves out, two keys in two slots of a Redis Cluster) refuses the probe too.
 */
const PROBE_KEYS = ['probe', 'probe:2'] as const;
const PROBE_TTL_MS = 1_000;
/** A limit the probe's keys never reach: they start no refusal. */
const PROBE_LIMIT = 1_000_000_000;

interface Script {
  readonly body: string;
  readonly sha: string;
}

function script(body: string): Script {
  return { body, sha: createHash('sha1').update(body).digest('hex') };
}

const FAILURE = script(FAILURE_SCRIPT);
const READ = script(READ_SCRIPT);
const SUCCESS = script(SUCCESS_SCRIPT);
const KNOWN = script(KNOWN_SCRIPT);

type Client = ReturnType<typeof createClient>;

type RedisModule = typeof import('@redis/client');
/**
 * The Redis client library, loaded by the first connection attempt: a process without
 * `throttle.redis` never loads it (measured on Node 20: about 100 ms of start-up and 19 MB of
 * RSS, 6.5 MB of it heap).
 */
let redisModule: Promise<RedisModule> | undefined;
function loadRedis(): Promise<RedisModule> {
  redisModule ??= import('@redis/client');
  return redisModule;
}

/** Where the TLS options of `throttle.redis` are named in the config. */
const TLS_FILES_PATH = 'throttle.redis';

/**
 * The TLS options the config's files give (none: the system's CAs, no client certificate), read
 * anew by each connection attempt, so that a renewed certificate is used from the next one.
 * Throws an error naming the config key of a file that cannot be read.
 */
function redisTlsOptions(redis: ThrottleRedisConfig): { tls: true; ca?: Buffer; cert?: Buffer; key?: Buffer } | Record<string, never> {
  const options: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  for (const [key, field, option] of REDIS_TLS_FILES) {
    const file = redis[field];
    if (file !== undefined) options[option] = readCaFile(file, `${TLS_FILES_PATH}.${key}`);
  }
  return Object.keys(options).length === 0 ? {} : { tls: true, ...options };
}

/**
 * What would keep `throttle.redis` from connecting over TLS, for check-config: a file that cannot
 * be read, or files that make no TLS context (a key not the certificate's, a file not PEM).
 * Reads the files; connects to nothing.
 */
export function redisTlsIssues(config: ThrottleConfig): ConfigIssue[] {
  const redis = config.redis;
  if (redis === undefined) return [];
  const issues: ConfigIssue[] = [];
  const options: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  for (const [key, field, option] of REDIS_TLS_FILES) {
    const file = redis[field];
    if (file === undefined) continue;
    try {
      options[option] = readFileSync(file);
    } catch (error) {
      issues.push({ path: `${TLS_FILES_PATH}.${key}`, expected: `a readable file (${file})`, found: (error as NodeJS.ErrnoException).code ?? String(error) });
    }
  }
  if (issues.length > 0 || Object.keys(options).length === 0) return issues;
  if (options.ca !== undefined && redis.caFile !== undefined) {
    // The TLS context takes a CA file without a certificate in it, and then trusts nothing:
    // checked as every CA file of the config is.
    const problem = caCertificatesProblem(options.ca);
    if (problem !== null) issues.push({ path: `${TLS_FILES_PATH}.ca_file`, expected: `PEM CA certificates (${redis.caFile})`, found: problem });
  }
  try {
    createSecureContext(options);
  } catch (error) {
    issues.push({ path: TLS_FILES_PATH, expected: 'a PEM client certificate (cert_file) and the key that belongs to it (key_file)', found: error instanceof Error ? error.message : String(error) });
  }
  return issues;
}

/** Options of a RedisThrottleStore. */
export interface RedisThrottleStoreOptions {
  readonly redis: ThrottleRedisConfig;
  readonly policy: FailurePolicy;
  /**
   * The local counters: every failure is counted here too, and they answer while Redis is down.
   * Failures Redis refused to write are kept apart as well, up to as many subjects as these.
   */
  readonly local: MemoryThrottleStore;
  readonly log: Logger;
  /** Called on every change of the Redis state (turn it into a metric). */
  readonly onStateChange?: (state: RedisState) => void;
  /** Time between reconnection attempts while Redis is down (default 1 s; longer after flaps). */
  readonly retryIntervalMs?: number;
}

class RedisTimeout extends Error {}

/** Settles with `pending`, or rejects with a RedisTimeout after `ms`. */
async function within<T>(pending: Promise<T>, ms: number, message: string): Promise<T> {
  pending.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      pending,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new RedisTimeout(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Error replies are logged at most this often (they come with every call while they last). */
const ERROR_REPLY_LOG_INTERVAL_MS = 60_000;

/**
 * Error replies by which Redis refuses every write for a while, not one key's (out of memory with
 * noeviction, a replica, a failed save with stop-writes-on-bgsave-error, too few replicas). Redis
 * 7 starts a script's error with the code; earlier versions put it after a "-" in their own text.
 */
const WRITES_REFUSED = /(?:^|-)(?:OOM|READONLY|MISCONF|NOREPLICAS)\b/;

/**
 * The error reply about one key (a key of another type, set by something else): the other keys
 * are shared still. Every other error (an ACL without a command the scripts call, NOPERM; the keys
 * of one call in several slots of a Redis Cluster, CROSSSLOT; a replica cut off from its primary,
 * MASTERDOWN) comes with every call, and nothing is shared while it lasts.
 */
const ONE_KEY_REFUSED = /(?:^|-)WRONGTYPE\b/;

/**
 * With sentinel, the error reply of a primary turned replica (a failover): the connection is let
 * go of and the sentinels asked for the new one, rather than the replica read while it refuses
 * writes (as a URL's Redis is: only its operator can make it take writes again).
 */
const NOT_PRIMARY = /(?:^|-)READONLY\b/;


/**
 * Keys whose failures counted apart are written to Redis at once when it takes writes again (each
 * key's one after another): a few calls in flight, not one per key tracked.
 */
const REPLAY_KEYS_AT_ONCE = 32;

/** A TCP and TLS handshake on a busy machine; nothing waits on it but the retry. */
const CONNECT_TIMEOUT_MIN_MS = 2_000;

/**
 * PINGs in a row that a new connection must have answered, each within timeout_ms, before Redis
 * counts as up. Calls get no longer; and a Redis busy part of the time (a slow command from
 * another client) may answer one PING in time by luck, seldom three.
 */
const PROOF_PINGS = 3;

/**
 * An 'up' that ends sooner than this is a flap: each one in a row doubles the wait before the
 * next reconnection attempt, up to MAX_RETRY_INTERVAL_MS. An 'up' that lasts starts over.
 */
const FLAP_MS = 60_000;
const MAX_RETRY_INTERVAL_MS = 60_000;

/**
 * State lines: the first few changes are logged as they come; while the state keeps changing
 * (changes less than this apart), at most one line this often, which counts the changes not
 * logged since the one before and gives the state then in force.
 */
const STATE_LOG_INTERVAL_MS = 60_000;
const STATE_LINES_AT_ONCE = 3;

/**
 * Counters shared through Redis. Each call has a deadline; a failed or late call marks Redis down
 * (one warning), drops the connection, and local counters answer until a background reconnect
 * succeeds (one info line). Failures are always counted locally as well, so that the local view
 * is warm when Redis goes away. A Redis that answers but refuses writes (out of memory, a replica)
 * is 'read-only' until it takes one; each failure it refused, or that was not sent while it was
 * down, is counted per key apart (`missed`) and added to Redis's count by every read, until Redis
 * takes writes again and is given them (replay()), or they expire. With sentinel, each connection
 * attempt asks the sentinels for the primary, and a failover (announced, a lost connection, or
 * READONLY from the old primary) is Redis down until the new primary is reached: no primary
 * known, local counters answer as they do for a URL's Redis down.
 */
export class RedisThrottleStore implements ThrottleStore {
  private client: Client | undefined;
  private stateNow: RedisState = 'connecting';
  private retryTimer: NodeJS.Timeout | undefined;
  /** While 'read-only': the next write probe (see probe()). */
  private probeTimer: NodeJS.Timeout | undefined;
  private connecting: Promise<void> | undefined;
  private closed = false;
  /** When throttle.redis_refused was last logged (monotonic()). */
  private lastErrorReplyLogAt = 0;
  /** The commands of the known addresses' scripts Redis refused, each logged once (see commandRefused()). */
  private readonly refusedCommands = new Set<string>();
  /** A replay of `missed` is running; another 'up' came meanwhile (see replay()). */
  private replaying = false;
  private replayAgain = false;
  /**
   * Failures this instance counted that Redis refused to write, per key, with the refusals they
   * started: Redis's count plus these is the subject's. Kept for the failure window (or the
   * refusal) like the local counters, so that a refusal earned while Redis refused writes lasts
   * its time after Redis takes writes again; bounded like them (least recently used forgotten).
   * A failure leaves them once Redis holds its password (written when Redis takes writes again, a
   * retry it took, or one it held already), lest it count twice; until then, only this instance
   * adds them to Redis's counts.
   */
  private readonly missed: MemoryThrottleStore;
  /**
   * What Redis did not take of a clear or a success (it was down, or refused the write): `true`,
   * a key an operator cleared (unthrottle), whose count in Redis is from before and is not added;
   * or, for a user's count, the sources successes forgot meanwhile (see Pending), whose failures
   * this instance leaves out of Redis's count. Written once Redis takes writes again (replay()),
   * or before a failure of the key is written. Kept as long as Redis keeps a key (the failure
   * window, or a refusal), and bounded like the local counters.
   */
  private uncleared: LRUCache<string, Pending>;
  private readonly retryIntervalMs: number;
  /** options.redis, and options.policy, until a reload gives new ones (reconfigure()). */
  private redis: ThrottleRedisConfig;
  private policy: FailurePolicy;
  /** When the state last became 'up' from a connection attempt (undefined while not usable). */
  private upSince: number | undefined;
  /** Flaps in a row (see FLAP_MS). */
  private flaps = 0;
  /** State lines logged since the state last stayed unchanged for STATE_LOG_INTERVAL_MS. */
  private stateLines = 0;
  /** When the last state line was logged and the state last changed (monotonic()). */
  private lastStateLineAt = 0;
  private lastStateChangeAt = 0;
  /** State changes not logged since the last line, and the last one's previous state and reason. */
  private unloggedChanges = 0;
  private unloggedBefore: RedisState = 'connecting';
  private unloggedReason: string | undefined;
  private stateLineTimer: NodeJS.Timeout | undefined;
  /** While 'down': the reason in force, and whether it is this instance's own set-up (see setState). */
  private downCause: { readonly reason: string | undefined; readonly setup: boolean } | undefined;
  /** With sentinel: the primary the sentinels named last (for logs), and the sentinel that named it (asked first next time). */
  private primary: SentinelNode | undefined;
  private lastSentinel: string | undefined;
  /** With sentinel: the connection to a sentinel that listens for +switch-master while the primary is used (see watchSentinel()). */
  private watcher: { destroy(): void } | undefined;
  /** With sentinel, while up without a listener: the next look at the sentinels (see watchSentinel()). */
  private watchTimer: NodeJS.Timeout | undefined;
  /** Listener openings failed in a row (each doubles the wait before the next, as flaps do), and when the next is due (monotonic()). */
  private listenFailures = 0;
  private nextListenAt = 0;
  /** throttle.redis_sentinel_listener was logged at warn, and no listener has been opened since; SUBSCRIBE refused was logged. */
  private listenerWarned = false;
  private subscribeRefusedLogged = false;

  constructor(private readonly options: RedisThrottleStoreOptions) {
    this.retryIntervalMs = options.retryIntervalMs ?? 1_000;
    this.redis = options.redis;
    this.policy = options.policy;
    this.missed = new MemoryThrottleStore(options.policy, options.local.capacity);
    this.uncleared = new LRUCache<string, Pending>({ max: options.local.capacity, ttl: Math.max(options.policy.failureWindowMs, options.policy.refusalMs) });
    this.connecting = this.connect();
  }

  /**
   * A reload's new policy and call deadline, on the connection in force: `redis` reaches the same
   * Redis the same way (sameRedisConnection()). Keys Redis holds keep the expiry they were given.
   */
  reconfigure(policy: FailurePolicy, redis: ThrottleRedisConfig): void {
    this.policy = policy;
    this.redis = redis;
    this.missed.setPolicy(policy);
    this.uncleared.ttl = Math.max(policy.failureWindowMs, policy.refusalMs);
  }

  /** A reload's new max_tracked, for the failures counted apart and the keys left uncleared (see MemoryThrottleStore.resize()). */
  resize(maxEntries: number): void {
    this.missed.resize(maxEntries);
    this.uncleared = resized(this.uncleared, new LRUCache<string, Pending>({ max: maxEntries, ttl: this.uncleared.ttl }));
  }

  /** The Redis state now. */
  get state(): RedisState {
    return this.stateNow;
  }

  /** Resolves once the first connection attempt has ended (either way). */
  async ready(): Promise<RedisState> {
    await this.connecting;
    return this.stateNow;
  }

  async read(subjects: readonly SubjectLimit[]): Promise<SubjectState[]> {
    return (await this.readFrom(subjects)).states;
  }

  /** read(), saying where the states came from: Redis (with what this instance missed), or the local counters when Redis did not answer. */
  async readFrom(subjects: readonly SubjectLimit[]): Promise<{ readonly states: SubjectState[]; readonly from: 'redis' | 'local' }> {
    const keys = subjects.map((s) => s.key);
    const reply = await this.run(READ, keys.map((k) => this.key(k)), subjects.flatMap((s) => [this.forgotten(s.key), String(s.limit)]));
    if (reply instanceof Error) this.callRefused(reply.message);
    if (!Array.isArray(reply)) return { states: this.options.local.readNow(keys), from: 'local' };
    const shared = pairs(reply, subjects.length);
    return { states: subjects.map((subject, i) => this.withMissed(subject, this.uncleared.get(subject.key) === true ? NOTHING : shared[i] ?? NOTHING, false)), from: 'redis' };
  }

  async addFailure(subjects: readonly SubjectLimit[], fingerprint: string): Promise<SubjectState[]> {
    const { policy } = this;
    // A password the local counters hold already was counted before: written to Redis, missed
    // already, or sent in a call that got no answer in time (which Redis may have counted).
    const fresh = subjects.map((s) => !this.options.local.holds(s.key, fingerprint));
    const local = await this.options.local.addFailure(subjects, fingerprint);
    // A count an operator cleared, or sources a success forgot, that Redis still holds: written
    // before the failure is (what Redis still does not take is left out of its answer).
    const uncleared = subjects.filter((s) => this.uncleared.get(s.key) === true).map((s) => s.key);
    if (uncleared.length > 0) await this.del(uncleared);
    for (const subject of subjects) {
      const pending = this.uncleared.get(subject.key);
      if (pending !== undefined && pending !== true) await this.forgetIn(subject.key, pending);
    }
    // Redis down: the call is not sent, and Redis will never count this failure.
    const notSent = !this.usable || this.client === undefined;
    const reply = await this.run(
      FAILURE,
      subjects.map((s) => this.key(s.key)),
      [fingerprint, String(policy.failureWindowMs), String(policy.refusalMs), String(policy.fingerprintsKept), ...subjects.flatMap((s) => [String(s.limit), s.source ?? '', this.forgotten(s.key)])],
    );
    if (reply instanceof Error) {
      // The whole call failed (a key of another type, ...): Redis counted nothing, and neither its
      // counts nor which keys held the password already are known. Counted as missed for every
      // key the local counters counted it for (at worst once too often), refused where they
      // refuse; this call answers from the local counters.
      this.callRefused(reply.message);
      await this.missedLocally(subjects, fingerprint, fresh, local);
      return local;
    }
    if (!Array.isArray(reply)) {
      // Not sent (Redis down): missed as a refused write is, so that once Redis is back this
      // instance still adds it, and a refusal the local counters started goes on (it ended the
      // moment Redis answered again). A call sent that got no answer in time may have been
      // counted by Redis: it is not added, lest it count twice; nor is a password the local
      // counters held already (Redis holds it, or it is missed already, or it went in such a call).
      if (notSent) await this.missedLocally(subjects, fingerprint, fresh, local);
      return local;
    }
    const states: SubjectState[] = [];
    let wrote = false;
    for (const [i, subject] of subjects.entries()) {
      // A count an operator cleared that Redis refused to delete is not the subject's.
      const shared = this.uncleared.get(subject.key) === true ? NOTHING : { failures: Number(reply[i * 3] ?? 0), refusedForMs: Number(reply[i * 3 + 1] ?? 0) };
      const status = Number(reply[i * 3 + 2] ?? 0);
      // A failure Redis did not take: this instance adds it to Redis's count from now on, and the
      // refusal starts when the two together reach the limit.
      if (status === -1) await this.missed.addFailure([{ key: subject.key, limit: subject.limit - shared.failures, own: subject.limit, joint: shared.failures > 0, ...sourceOf(subject) }], fingerprint);
      // Redis holds it now (it took it, or had it: a call that got no answer in time, another
      // instance): no longer missed, or it would count twice.
      else this.missed.forget(subject.key, fingerprint);
      if (status === 1) wrote = true;
      states.push(this.withMissed(subject, shared, status === 1, status !== -1));
    }
    const refused = String(reply[subjects.length * 3] ?? '');
    if (refused !== '') this.callRefused(refused);
    else if (wrote) this.writeTaken();
    return states;
  }

  /**
   * Redis's state of a subject with what this instance missed. Redis does not know those: when
   * the two together reach the limit, through a failure Redis counted just now (`failed`) or
   * since the last look (another instance's), the refusal starts here. `held`: Redis holds the
   * password just failed, which may have been counted twice until now (see settle()).
   */
  private withMissed(subject: SubjectLimit, shared: SubjectState, failed: boolean, held = false): SubjectState {
    this.missed.refuseWith(subject.key, subject.limit, shared, failed);
    if (held) this.missed.settle(subject.key, subject.limit, shared);
    return plus(shared, this.missed.readNow([subject.key])[0]);
  }

  /**
   * Counts a failure Redis will never count in `missed`, for the keys the local counters counted
   * it for (`fresh`), refused where they refuse (their refusal goes on once Redis answers again).
   */
  private async missedLocally(subjects: readonly SubjectLimit[], fingerprint: string, fresh: readonly boolean[], local: readonly SubjectState[]): Promise<void> {
    const apart = subjects.flatMap((s, i) => (fresh[i] === true ? [{ key: s.key, limit: (local[i]?.refusedForMs ?? 0) > 0 ? 1 : s.limit, own: s.limit, joint: false, ...sourceOf(s) }] : []));
    if (apart.length > 0) await this.missed.addFailure(apart, fingerprint);
  }

  async clear(keys: readonly string[]): Promise<void> {
    await this.clearFrom(keys);
  }

  /**
   * After a successful login: forgets the user's failures counted from the login's source
   * (`forget`: here, in the failures counted apart, and in Redis) and makes the address known
   * (`known`) to every instance sharing Redis, in one call. When Redis does not take the
   * address, only this instance knows it (Throttle's own); sources Redis did not forget wait in
   * `uncleared`, and this instance leaves their failures out of Redis's count meanwhile.
   */
  async succeeded(userKey: string, forget: { readonly source: string; readonly limit: number }, known: KnownAddress | undefined): Promise<void> {
    let tags = '';
    await this.options.local.forgetSource(userKey, forget.source, forget.limit);
    await this.missed.forgetSource(userKey, forget.source, forget.limit);
    const pending = this.uncleared.get(userKey);
    // A count an operator cleared that Redis still holds is left out whole: nothing to forget in it.
    if (pending !== true) {
      tags = withSource(pending?.tags ?? '', forget.source);
      // Left before the call, as del()'s keys are: a failure sent after it runs after it.
      this.uncleared.delete(userKey);
    }
    if (tags === '' && known === undefined) return;
    const keys = known === undefined ? [this.key(userKey)] : [this.key(userKey), this.key(known.user)];
    const reply = await this.run(SUCCESS, keys, [tags, String(forget.limit), known?.address ?? '', String(known?.ms ?? 0), String(KNOWN_ADDRESSES_PER_USER)]);
    if (reply instanceof Error) this.callRefused(reply.message);
    else if (Array.isArray(reply) && Number(reply[0] ?? 0) === 0) this.callRefused(String(reply[2] ?? ''));
    else if (Array.isArray(reply) && Number(reply[0] ?? 0) === 2) this.commandRefused(String(reply[1] ?? ''), String(reply[2] ?? ''));
    if (tags !== '' && !Array.isArray(reply)) this.pend(userKey, { tags, limit: forget.limit });
  }

  forgetSource(key: string, source: string, limit: number): Promise<void> {
    return this.succeeded(key, { source, limit }, undefined);
  }

  /** The source tags a success forgot of `key` that Redis has not forgotten yet ('' none): left out of Redis's answers. */
  private forgotten(key: string): string {
    const pending = this.uncleared.get(key);
    return pending === undefined || pending === true ? '' : pending.tags;
  }

  /** Sources forgotten of `key` that Redis did not take, added to those waiting (an operator's clear waiting stays, and covers them). */
  private pend(key: string, forgot: { readonly tags: string; readonly limit: number }): void {
    const pending = this.uncleared.get(key);
    if (pending === true) return;
    let tags = pending?.tags ?? '';
    for (let i = 0; i < forgot.tags.length; i += SOURCE_CHARS) tags = withSource(tags, forgot.tags.slice(i, i + SOURCE_CHARS));
    this.uncleared.set(key, { tags, limit: forgot.limit });
  }

  /** Writes the sources of `key` a success forgot to Redis (see SUCCESS_SCRIPT); what it does not take waits again. True when it took them. */
  private async forgetIn(key: string, pending: Exclude<Pending, true>): Promise<boolean> {
    this.uncleared.delete(key);
    const reply = await this.run(SUCCESS, [this.key(key)], [pending.tags, String(pending.limit), '', '0', '0']);
    if (reply instanceof Error) this.callRefused(reply.message);
    if (Array.isArray(reply)) return true;
    this.pend(key, pending);
    return false;
  }

  /** Whether Redis knows `address` for the user keyed `user` (see succeeded()); false when it does not answer. */
  async knows(user: string, address: string): Promise<boolean> {
    const reply = await this.run(KNOWN, [this.key(user)], [address]);
    if (reply instanceof Error) this.callRefused(reply.message);
    else if (Array.isArray(reply) && reply.length > 1) this.commandRefused(String(reply[1] ?? ''), String(reply[2] ?? ''));
    return Array.isArray(reply) && Number(reply[0] ?? 0) === 1;
  }

  /**
   * Redis refused a command of the known addresses' (an ACL left out when it was written for an
   * earlier version): logged once per command at error, with the ACL to grant. Not taken as
   * refusing writes: the failures are shared still (the failure script's commands are granted,
   * or the probe says otherwise); what is lost is the known addresses' sharing, or their trim.
   */
  private commandRefused(command: string, message: string, lost = 'known addresses are not shared or not trimmed through Redis'): void {
    if (this.refusedCommands.has(command)) return;
    this.refusedCommands.add(command);
    const acl = redisAcl(this.redis);
    this.options.log.error(
      { event: 'throttle.redis_command_refused', command, ...this.where(), reason: withoutSecrets(message, this.redis), acl },
      `Redis refused ${command} to the throttle (its user's ACL leaves it out?): ${lost} until it is granted; grant the throttle's Redis user ${acl}`,
    );
  }

  /**
   * clear(), saying whether Redis deleted the keys ('redis'), or only this instance's counters
   * were cleared ('local': Redis down, late or refusing; it deletes them once it takes writes
   * again, and this instance leaves its counts of them out meanwhile).
   */
  async clearFrom(keys: readonly string[]): Promise<'redis' | 'local'> {
    await this.options.local.clear(keys);
    await this.missed.clear(keys);
    return keys.length === 0 || (await this.del(keys)) ? 'redis' : 'local';
  }

  /**
   * Deletes subjects' keys from Redis; those it did not delete (down, no answer in time, refused)
   * wait in `uncleared` for the next 'up' (sources forgotten of them waiting are then moot). A refusal counts as a refused write does (READONLY:
   * read-only). Each key leaves `uncleared` before the DEL is sent, so that a failure sent after
   * it (on the same connection, so run after it) is not deleted by a second one. True when Redis
   * deleted them.
   */
  private async del(keys: readonly string[]): Promise<boolean> {
    for (const key of keys) this.uncleared.delete(key);
    const client = this.client;
    const reply = !this.usable || client === undefined ? null : await this.guard(client, client.sendCommand(['DEL', ...keys.map((k) => this.key(k))]), true);
    if (reply instanceof Error) this.callRefused(reply.message);
    if (reply !== null && !(reply instanceof Error)) return true;
    for (const key of keys) this.uncleared.set(key, true);
    return false;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.probeTimer);
    clearTimeout(this.stateLineTimer);
    clearTimeout(this.watchTimer);
    await this.connecting;
    this.dropClient();
    await this.missed.close();
  }

  private key(subject: string): string {
    return `${this.redis.keyPrefix}${subject}`;
  }

  /** Redis answers calls ('up', or 'read-only': reads still count). */
  private get usable(): boolean {
    return this.stateNow === 'up' || this.stateNow === 'read-only';
  }

  /**
   * Redis answered a call with an error (a failure it refused is counted in `missed`). An error
   * that comes with every call (every write refused, a command refused, see ONE_KEY_REFUSED)
   * means nothing is shared: 'read-only' (the gauge at 0) until the probe or a failure is taken;
   * one key's is reported as an error reply.
   */
  private callRefused(message: string): void {
    if (this.redis.sentinel !== undefined && NOT_PRIMARY.test(message)) {
      // A primary the sentinels turned into a replica: the new one is theirs to name.
      this.markDown(`${message} (no longer the primary: asking the sentinels again)`);
    } else if (ONE_KEY_REFUSED.test(message)) {
      this.reportErrorReply(message);
    } else {
      if (this.stateNow === 'up') this.setState('read-only', message);
      this.scheduleProbe();
    }
  }

  /**
   * Redis takes writes again ('up', from any other state): the failures counted apart are written
   * to it, per key with their fingerprints, through the failure script (Redis counts a password it
   * does not hold within its own window, and starts the refusal if its count reaches the limit
   * there), and each leaves `missed` once Redis holds it, whether it took it or held it already (a
   * call that got no answer in time, which Redis ran when it resumed; another instance's). Left
   * apart until its retry on this instance, such a password counted twice at every check, and
   * could start a refusal. A refusal the counts apart started alone runs on; one Redis's count and
   * they started together ends unless they still reach the limit (see settle()). Stops once Redis
   * is down or refuses writes again: the next 'up' writes what is left. A key Redis answers with
   * an error (reported) stays apart, and the others are written. Before them, what Redis did not take
   * of clears and successes meanwhile (`uncleared`): the keys operators cleared are deleted, and
   * the sources successes forgot are forgotten in Redis.
   */
  private async replay(): Promise<void> {
    if (this.replaying) {
      this.replayAgain = true;
      return;
    }
    this.replaying = true;
    try {
      do {
        this.replayAgain = false;
        // Counts cleared, and sources successes forgot, first: failures counted apart since are written after.
        const cleared = [...this.uncleared.keys()];
        for (let i = 0; i < cleared.length && !this.closed && this.stateNow === 'up'; i += REPLAY_KEYS_AT_ONCE) {
          // Not one a failure wrote meanwhile (it wrote itself after): a DEL now would delete it.
          const still = cleared.slice(i, i + REPLAY_KEYS_AT_ONCE).filter((key) => this.uncleared.get(key) === true);
          if (still.length > 0) await this.del(still);
          for (const key of cleared.slice(i, i + REPLAY_KEYS_AT_ONCE)) {
            const pending = this.uncleared.get(key);
            if (pending !== undefined && pending !== true && !this.closed && this.stateNow === 'up') await this.forgetIn(key, pending);
          }
        }
        if (this.closed || this.stateNow !== 'up') break;
        const pending = this.missed.apart();
        for (let i = 0; i < pending.length; i += REPLAY_KEYS_AT_ONCE) {
          await Promise.all(pending.slice(i, i + REPLAY_KEYS_AT_ONCE).map((entry) => this.replayKey(entry)));
          if (this.closed || this.stateNow !== 'up') break;
        }
      } while (this.replayAgain && this.stateNow === 'up' && !this.closed);
    } finally {
      this.replaying = false;
    }
  }

  /** Writes one key's failures counted apart to Redis (see replay()), up to the first one it does not take. */
  private async replayKey({ key, limit, fingerprints, sources, refusalLeftMs }: ApartEntry): Promise<void> {
    const { policy } = this;
    let shared: SubjectState | undefined;
    // Redis held one of these passwords already: it was counted twice until now.
    let held = false;
    for (const [i, fingerprint] of fingerprints.entries()) {
      if (this.closed || this.stateNow !== 'up') return;
      // A refusal these failures started already: Redis's, if they start one there, ends with it
      // (none when it ended), rather than lasting refusal_ms again from now.
      const refusalMs = String(refusalLeftMs ?? policy.refusalMs);
      const reply = await this.run(FAILURE, [this.key(key)], [fingerprint, String(policy.failureWindowMs), refusalMs, String(policy.fingerprintsKept), String(limit), sources[i] ?? '', this.forgotten(key)]);
      if (reply instanceof Error) this.callRefused(reply.message);
      if (!Array.isArray(reply)) return;
      if (Number(reply[2] ?? 0) === -1) {
        this.callRefused(String(reply[3] ?? ''));
        return;
      }
      if (Number(reply[2] ?? 0) === 0) held = true;
      this.missed.forget(key, fingerprint);
      shared = { failures: Number(reply[0] ?? 0), refusedForMs: Number(reply[1] ?? 0) };
    }
    if (shared !== undefined) this.missed.settle(key, limit, shared, held);
  }

  /** Redis wrote a failure: it takes writes again (the failures it missed still count). */
  private writeTaken(): void {
    if (this.stateNow === 'read-only') this.setState('up');
  }

  private scheduleProbe(): void {
    if (this.closed || this.probeTimer !== undefined || this.stateNow !== 'read-only') return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = undefined;
      void this.probe();
    }, this.retryIntervalMs);
    this.probeTimer.unref();
  }

  /**
   * While 'read-only', on the retry timer: a failure written to the probe's keys (PROBE_KEYS), a
   * fresh fingerprint each time. Only a failure written ended the state, so an instance without
   * failed logins stayed read-only (the gauge at 0) for as long as it had none after Redis took
   * writes again. Refused: the next probe on the next tick; no answer in time: Redis is down, and
   * the reconnection takes over.
   */
  private async probe(): Promise<void> {
    if (this.closed || this.stateNow !== 'read-only') return;
    const fingerprint = randomBytes(FINGERPRINT_BYTES).toString('base64url');
    const ttl = String(PROBE_TTL_MS);
    const reply = await this.run(FAILURE, PROBE_KEYS.map((k) => this.key(k)), [fingerprint, ttl, ttl, '1', ...PROBE_KEYS.flatMap(() => [String(PROBE_LIMIT), '', ''])]);
    if (Array.isArray(reply) && PROBE_KEYS.every((_, i) => Number(reply[i * 3 + 2] ?? 0) === 1)) {
      this.writeTaken();
    } else if (reply !== null) {
      // Not logged again while read-only (the state line said it); one key's error is, once a minute.
      this.reportErrorReply(reply instanceof Error ? reply.message : String(reply[PROBE_KEYS.length * 3] ?? ''));
      this.scheduleProbe();
    }
  }

  /**
   * Runs a script; null when Redis is not usable (the caller answers from local counters), the
   * error when Redis answered with one (for the caller to report).
   */
  private async run(s: Script, keys: readonly string[], args: readonly string[]): Promise<unknown[] | Error | null> {
    const client = this.client;
    if (!this.usable || client === undefined) return null;
    const call = (command: 'EVALSHA' | 'EVAL'): Promise<unknown> =>
      client.sendCommand([command, command === 'EVALSHA' ? s.sha : s.body, String(keys.length), ...keys, ...args]);
    let reply = await this.guard(client, call('EVALSHA'), true);
    // Redis restarted or its script cache was flushed: send the script itself once.
    if (reply instanceof Error && /^NOSCRIPT/.test(reply.message)) reply = await this.guard(client, call('EVAL'), true);
    return Array.isArray(reply) || reply instanceof Error ? reply : null;
  }

  /**
   * Waits for a Redis reply within the deadline. A timeout or a lost connection marks Redis down;
   * with `passErrors`, an error reply (Redis answered) is returned for the caller to look at.
   */
  private async guard(client: Client, pending: Promise<unknown>, passErrors = false): Promise<unknown> {
    const { timeoutMs } = this.redis;
    try {
      // The command may still settle after we stopped waiting for it (within() waits no more).
      return await within(pending, timeoutMs, `no answer within ${timeoutMs} ms`);
    } catch (error) {
      const err = error instanceof Error ? error : new Error(String(error));
      // A client exists, so the library is loaded.
      if (err instanceof (await loadRedis()).ErrorReply) {
        // Redis is up but refuses (out of memory, read-only replica, ...): local counters answer
        // this call; the connection stays.
        if (passErrors) return err;
        this.reportErrorReply(err.message);
        return null;
      }
      if (client === this.client) this.markDown(err.message);
      return null;
    }
  }

  private reportErrorReply(message: string): void {
    // The state line said so already.
    if (this.stateNow === 'read-only' && !ONE_KEY_REFUSED.test(message)) return;
    const now = monotonic();
    if (now - this.lastErrorReplyLogAt < ERROR_REPLY_LOG_INTERVAL_MS) return;
    this.lastErrorReplyLogAt = now;
    this.options.log.warn({ event: 'throttle.redis_refused', ...this.where(), reason: withoutSecrets(message, this.redis) }, 'Redis refused a throttle call; local counters answered');
  }

  /**
   * `setup`: the reason is this instance's own (a TLS file that cannot be read, a client that
   * cannot be set up), not Redis's or the network's. While 'down', a reason of its own that comes
   * or changes is logged like a change of state (a key file gone after the first connection was
   * never named: the state was 'down' already, from the lost connection), and so is its end when
   * Redis itself fails then; a retry failing another way on the network (refused, timed out) is
   * not news, and stays quiet.
   */
  private setState(state: RedisState, given?: string, setup = false): void {
    const reason = given === undefined ? undefined : withoutSecrets(given, this.redis);
    const changed = state !== this.stateNow;
    if (!changed && (state !== 'down' || !this.newDownCause(reason, setup))) return;
    const before = this.stateNow;
    this.stateNow = state;
    this.downCause = state === 'down' ? { reason, setup } : undefined;
    const now = monotonic();
    if (now - this.lastStateChangeAt >= STATE_LOG_INTERVAL_MS) this.stateLines = 0;
    this.lastStateChangeAt = now;
    if (this.stateLines < STATE_LINES_AT_ONCE || now - this.lastStateLineAt >= STATE_LOG_INTERVAL_MS) {
      this.logState(before, reason);
    } else {
      // Flapping: the line waits for the interval's end and then gives the state in force.
      if (changed) this.unloggedChanges++;
      this.unloggedBefore = before;
      this.unloggedReason = reason;
      if (this.stateLineTimer === undefined && !this.closed) {
        this.stateLineTimer = setTimeout(() => this.logState(this.unloggedBefore, this.unloggedReason), this.lastStateLineAt + STATE_LOG_INTERVAL_MS - now);
        this.stateLineTimer.unref();
      }
    }
    if (changed) this.options.onStateChange?.(state);
    // Not on the path of the call that saw Redis come back (a login's, say): after it, and any
    // failure the replay meets is its own (nothing below throws; a catch all the same, since an
    // unhandled rejection would end the process and every spliced session).
    if (changed && state === 'up') {
      setImmediate(() => {
        this.replay().catch((error: unknown) => this.options.log.error({ event: 'throttle.redis_state', state: this.stateNow, err: withoutSecrets(error instanceof Error ? error.message : String(error), this.redis) }, 'writing the failures counted apart to Redis failed'));
      });
    }
  }

  private newDownCause(reason: string | undefined, setup: boolean): boolean {
    const cause = this.downCause;
    return cause === undefined || cause.setup !== setup || (setup && cause.reason !== reason);
  }

  /** Logs the state in force; `changes` counts the changes not logged since the line before. */
  private logState(before: RedisState, reason: string | undefined): void {
    clearTimeout(this.stateLineTimer);
    this.stateLineTimer = undefined;
    if (this.closed) return;
    this.stateLines++;
    this.lastStateLineAt = monotonic();
    const state = this.stateNow;
    const fields = { event: 'throttle.redis_state', state, before, ...this.where(), ...(this.unloggedChanges > 0 ? { changes: this.unloggedChanges } : {}) };
    this.unloggedChanges = 0;
    if (state === 'up') this.options.log.info(fields, before === 'connecting' ? 'throttle counters are shared through Redis' : before === 'read-only' ? 'Redis takes writes again; throttle counters are shared again' : 'Redis is back; throttle counters are shared again');
    else if (state === 'read-only' && reason !== undefined && !WRITES_REFUSED.test(reason)) this.options.log.warn({ ...fields, reason }, 'Redis answers throttle calls with an error; this instance counts apart the failures Redis does not take, and adds them to what Redis answers, until Redis takes them');
    else if (state === 'read-only') this.options.log.warn({ ...fields, reason }, 'Redis refuses writes; this instance adds the failures Redis refused to write to Redis\'s counts until they expire');
    else if (state === 'down') this.options.log.warn({ ...fields, reason }, 'Redis is unreachable; throttle counters are local to this instance until it is back');
  }

  /** `flap`: false for a failover the sentinels announced, which is no sign of a sick Redis (see FLAP_MS). */
  private markDown(reason: string, flap = true): void {
    if (this.closed) return;
    if (this.upSince !== undefined) {
      if (flap) this.flaps = monotonic() - this.upSince < FLAP_MS ? this.flaps + 1 : 0;
      this.upSince = undefined;
    }
    this.dropClient();
    this.setState('down', reason);
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.closed || this.retryTimer !== undefined) return;
    // After flaps, longer: a Redis that answers only some calls in time is not hammered with
    // reconnections, nor the state (the metric, the log) turned over every other second.
    const delayMs = this.flaps === 0 ? this.retryIntervalMs : Math.max(this.retryIntervalMs, Math.min(MAX_RETRY_INTERVAL_MS, this.retryIntervalMs * 2 ** Math.min(this.flaps, 16)));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.connecting = this.connect();
    }, delayMs);
    this.retryTimer.unref();
  }

  private dropClient(): void {
    clearTimeout(this.watchTimer);
    this.watchTimer = undefined;
    const watcher = this.watcher;
    this.watcher = undefined;
    destroyQuietly(watcher);
    const client = this.client;
    this.client = undefined;
    // destroy() fails every pending command at once: nothing waits on a hung Redis.
    destroyQuietly(client);
  }

  /**
   * Opens a fresh connection and proves it with PINGs (PROOF_PINGS). This runs in the background
   * (local counters answer meanwhile), so the TCP and TLS handshake get a longer deadline than a
   * call a login waits on; the PINGs do not: a Redis that answers them only after timeout_ms would
   * fail the first call again (it flapped, up and down every few seconds). With sentinel, the
   * sentinels are asked for the primary first, and the connection counts only if ROLE says it is
   * one; no sentinel naming one is Redis down.
   */
  private async connect(): Promise<void> {
    const { redis } = this;
    const { sentinel } = redis;
    const deadlineMs = Math.max(CONNECT_TIMEOUT_MIN_MS, redis.timeoutMs);
    let primary: SentinelNode | undefined;
    if (sentinel !== undefined) {
      try {
        primary = await this.askSentinels(sentinel, deadlineMs);
        this.primary = primary;
      } catch (error) {
        if (this.closed) return;
        this.setState('down', error instanceof Error ? error.message : String(error));
        this.scheduleRetry();
        return;
      }
    }
    let client: Client;
    let tls: ReturnType<typeof redisTlsOptions>;
    try {
      tls = redisTlsOptions(redis);
    } catch (error) {
      // A file gone or unreadable: local counters answer, and the next attempt reads it again.
      if (this.closed) return;
      this.setState('down', error instanceof Error ? error.message : String(error), true);
      this.scheduleRetry();
      return;
    }
    try {
      const { createClient } = await loadRedis();
      if (this.closed) return;
      client = createClient({
        ...(primary !== undefined ? {} : { url: redis.url ?? '' }),
        ...(redis.username !== undefined ? { username: redis.username } : {}),
        ...(redis.password !== undefined ? { password: redis.password } : {}),
        socket: { ...(primary !== undefined ? { host: primary.host, port: primary.port } : {}), connectTimeout: deadlineMs, reconnectStrategy: false, ...tls },
        // RESP2: the library's default, RESP3, connects with HELLO 3 AUTH <user> <password>, which
        // a Redis before 6 (or one with HELLO renamed away) refuses, and the throttle never
        // connected. The scripts' replies are arrays of integers and strings in either.
        RESP: 2,
        // Fail at once while disconnected rather than queue behind a dead connection.
        disableOfflineQueue: true,
      });
    } catch (error) {
      // A broken installation, or options the library refuses (the config check should have
      // caught them): local counters answer, as while Redis is down; never an unhandled rejection.
      if (this.closed) return;
      this.setState('down', `the Redis client could not be set up: ${error instanceof Error ? error.message : String(error)}`, true);
      this.scheduleRetry();
      return;
    }
    // An 'error' event without a listener would crash the process.
    client.on('error', (error: unknown) => {
      if (client === this.client && !this.closed) this.markDown(error instanceof Error ? error.message : String(error));
    });
    client.on('end', () => {
      if (client === this.client && !this.closed) this.markDown('connection closed');
    });
    try {
      await within(client.connect(), deadlineMs, `no connection within ${deadlineMs} ms`);
      for (let i = 0; i < PROOF_PINGS; i++) await within(client.sendCommand(['PING']), redis.timeoutMs, `PING not answered within ${redis.timeoutMs} ms`);
      if (sentinel !== undefined && primary !== undefined) {
        // A sentinel may name the old primary for a while after a failover (it is a replica
        // then, or about to be one): only the primary itself counts.
        const role: unknown = await within(client.sendCommand(['ROLE']), redis.timeoutMs, `ROLE not answered within ${redis.timeoutMs} ms`).catch(async (error: unknown) => {
          // An ACL written for a URL's Redis: answered, not unreachable, and the operator told what to grant.
          if (error instanceof (await loadRedis()).ErrorReply) {
            this.commandRefused('ROLE', error.message, `the primary the sentinels name is not used (ROLE tells it from a replica)`);
            throw new Error(`${sentinelNodeName(primary)} refused ROLE, which tells the primary from a replica: ${error.message}`);
          }
          throw error;
        });
        const said = Array.isArray(role) ? String(role[0]) : String(role);
        if (said !== 'master') throw new Error(`${sentinelNodeName(primary)}, named by the sentinels as the primary of ${sentinel.masterName}, is not one (ROLE: ${said})`);
      }
      if (this.closed) {
        client.destroy();
        return;
      }
      this.client = client;
      this.upSince = monotonic();
      if (sentinel !== undefined && primary !== undefined) this.watchSentinel(sentinel, primary, client);
      this.setState('up');
    } catch (error) {
      destroyQuietly(client);
      if (this.closed) return;
      this.setState('down', error instanceof Error ? error.message : String(error));
      this.scheduleRetry();
    }
  }

  /** A connection to a sentinel (RESP2, no reconnection, no queue: as the primary's). */
  private async sentinelClient(sentinel: ThrottleSentinelConfig, node: SentinelNode, deadlineMs: number) {
    const { createClient } = await loadRedis();
    const client = createClient({
      ...(sentinel.username !== undefined ? { username: sentinel.username } : {}),
      ...(sentinel.password !== undefined ? { password: sentinel.password } : {}),
      socket: { host: node.host, port: node.port, connectTimeout: deadlineMs, reconnectStrategy: false },
      RESP: 2,
      disableOfflineQueue: true,
    });
    // An 'error' event without a listener would crash the process; the caller sees the failure.
    client.on('error', () => undefined);
    return client;
  }

  /** The sentinels in the config's order, the one that answered last first, as Redis's guidelines for Sentinel clients say. */
  private sentinelOrder(sentinel: ThrottleSentinelConfig): readonly SentinelNode[] {
    const last = sentinel.nodes.find((node) => sentinelNodeName(node) === this.lastSentinel);
    return last === undefined ? sentinel.nodes : [last, ...sentinel.nodes.filter((node) => node !== last)];
  }

  /**
   * The primary's address, from the first sentinel that names one (SENTINEL
   * GET-MASTER-ADDR-BY-NAME), tried in the config's order but the one that answered last first,
   * as Redis's guidelines for Sentinel clients say. Throws when none does, saying what each did.
   */
  private async askSentinels(sentinel: ThrottleSentinelConfig, deadlineMs: number): Promise<SentinelNode> {
    const problems: string[] = [];
    for (const node of this.sentinelOrder(sentinel)) {
      if (this.closed) break;
      const name = sentinelNodeName(node);
      let opened: { destroy(): void } | undefined;
      try {
        const client = await this.sentinelClient(sentinel, node, deadlineMs);
        opened = client;
        await within(client.connect(), deadlineMs, `no connection within ${deadlineMs} ms`);
        const reply: unknown = await within(client.sendCommand(['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', sentinel.masterName]), deadlineMs, `no answer within ${deadlineMs} ms`);
        const port = Array.isArray(reply) ? Number(reply[1]) : NaN;
        if (Array.isArray(reply) && typeof reply[0] === 'string' && reply[0] !== '' && Number.isInteger(port) && port > 0 && port < 65536) {
          this.lastSentinel = name;
          return { host: reply[0], port };
        }
        problems.push(`${name}: knows no master named ${sentinel.masterName}`);
      } catch (error) {
        problems.push(`${name}: ${error instanceof Error ? error.message : String(error)}`);
      } finally {
        destroyQuietly(opened);
      }
    }
    throw new Error(`no sentinel named the primary of ${sentinel.masterName} (${problems.join('; ')})`);
  }

  /**
   * While `client` is the primary's connection: a connection to a sentinel (the one that named it
   * first, then the others in turn), subscribed to +switch-master, so that a failover is followed
   * within a retry interval even where the old primary stays reachable and still takes writes (cut
   * off from the sentinels only). A listener lost (a sentinel restarted) or never opened (SUBSCRIBE
   * refused, no sentinel answering) is opened again after the retry interval, doubled at each
   * failure in a row up to MAX_RETRY_INTERVAL_MS; meanwhile the sentinels are asked for the
   * primary every retry interval, and another one named is a failover. A failover would otherwise
   * be followed only once the old primary's connection is lost or it refuses writes (READONLY),
   * and the writes to it meanwhile are lost.
   */
  private watchSentinel(sentinel: ThrottleSentinelConfig, primary: SentinelNode, client: Client): void {
    this.listenFailures = 0;
    this.nextListenAt = 0;
    void this.listen(sentinel, primary, client);
  }

  /** Opens the listener of watchSentinel(); failing, logs once at warn and looks again later (see watchLater()). Never rejects. */
  private async listen(sentinel: ThrottleSentinelConfig, primary: SentinelNode, client: Client): Promise<void> {
    const deadlineMs = Math.max(CONNECT_TIMEOUT_MIN_MS, this.redis.timeoutMs);
    const problems: string[] = [];
    let refused: string | undefined;
    for (const node of this.sentinelOrder(sentinel)) {
      if (this.client !== client || this.closed) return;
      const name = sentinelNodeName(node);
      let opened: Awaited<ReturnType<RedisThrottleStore['sentinelClient']>> | undefined;
      // Only an error reply to SUBSCRIBE is the ACL's (one to the connection's AUTH is a password's).
      let subscribing = false;
      try {
        const listener = await this.sentinelClient(sentinel, node, deadlineMs);
        opened = listener;
        if (this.client !== client || this.closed) return;
        this.watcher = listener;
        await within(listener.connect(), deadlineMs, `no connection within ${deadlineMs} ms`);
        // "<master name> <old ip> <old port> <new ip> <new port>"
        subscribing = true;
        await within(
          listener.subscribe('+switch-master', (message: string) => {
            const [master, , , host, port] = message.split(' ');
            if (master !== sentinel.masterName || this.client !== client) return;
            const to = `${host ?? ''}:${port ?? ''}`;
            if (to !== `${primary.host}:${primary.port}`) this.markDown(`the sentinels moved the primary of ${master} to ${to}`, false);
          }),
          deadlineMs,
          `SUBSCRIBE not answered within ${deadlineMs} ms`,
        );
        if (this.client !== client || this.watcher !== listener) return;
        const lost = (): void => {
          if (this.watcher !== listener) return;
          this.watcher = undefined;
          destroyQuietly(listener);
          if (this.client !== client || this.closed) return;
          this.nextListenAt = monotonic() + this.retryIntervalMs;
          this.watchLater(sentinel, primary, client);
        };
        listener.on('end', lost);
        listener.on('error', lost);
        this.listenFailures = 0;
        if (this.listenerWarned) {
          this.listenerWarned = false;
          this.options.log.info({ event: 'throttle.redis_sentinel_listener', state: 'listening', ...this.where(), node: name }, 'listening on a sentinel for +switch-master again');
        }
        // A failover announced while no listener was open: the sentinels' word now.
        await this.checkPrimary(sentinel, primary, client);
        return;
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        if (subscribing && error instanceof (await loadRedis()).ErrorReply) refused ??= `${name}: ${message}`;
        problems.push(`${name}: ${message}`);
        if (opened !== undefined && this.watcher === opened) this.watcher = undefined;
        destroyQuietly(opened);
      }
    }
    if (this.client !== client || this.closed) return;
    if (refused !== undefined && !this.subscribeRefusedLogged) {
      this.subscribeRefusedLogged = true;
      this.listenerWarned = true;
      this.options.log.warn(
        { event: 'throttle.redis_sentinel_listener', state: 'refused', ...this.where(), reason: withoutSecrets(refused, this.redis), acl: SENTINEL_LISTEN_ACL },
        `a sentinel refused SUBSCRIBE +switch-master to the throttle (its user's ACL leaves it out?): a failover is followed by asking the sentinels every retry interval; grant the sentinels' user ${SENTINEL_LISTEN_ACL}`,
      );
    } else if (!this.listenerWarned) {
      this.listenerWarned = true;
      this.options.log.warn(
        { event: 'throttle.redis_sentinel_listener', state: 'lost', ...this.where(), reason: withoutSecrets(problems.join('; '), this.redis) },
        'no sentinel could be listened on for +switch-master: a failover is followed by asking the sentinels every retry interval until one can',
      );
    }
    this.listenFailures++;
    this.nextListenAt = monotonic() + Math.min(MAX_RETRY_INTERVAL_MS, this.retryIntervalMs * 2 ** Math.min(this.listenFailures, 16));
    this.watchLater(sentinel, primary, client);
  }

  /** While `client` is up without a listener: after the retry interval, asks the sentinels for the primary, and opens the listener when due. */
  private watchLater(sentinel: ThrottleSentinelConfig, primary: SentinelNode, client: Client): void {
    if (this.closed || this.watchTimer !== undefined || this.client !== client) return;
    this.watchTimer = setTimeout(() => {
      this.watchTimer = undefined;
      void (async () => {
        if (this.client !== client || this.closed || this.watcher !== undefined) return;
        await this.checkPrimary(sentinel, primary, client);
        if (this.client !== client || this.closed) return;
        if (monotonic() >= this.nextListenAt) await this.listen(sentinel, primary, client);
        else this.watchLater(sentinel, primary, client);
      })();
    }, this.retryIntervalMs);
    this.watchTimer.unref();
  }

  /** Asks the sentinels for the primary while `client` is up: another one named is a failover (Redis down, and the new one reached at the retry). No answer: nothing learnt. Never rejects. */
  private async checkPrimary(sentinel: ThrottleSentinelConfig, primary: SentinelNode, client: Client): Promise<void> {
    let named: SentinelNode;
    try {
      named = await this.askSentinels(sentinel, Math.max(CONNECT_TIMEOUT_MIN_MS, this.redis.timeoutMs));
    } catch {
      return;
    }
    if (this.client !== client || this.closed) return;
    if (named.host !== primary.host || named.port !== primary.port) this.markDown(`the sentinels name ${sentinelNodeName(named)} as the primary of ${sentinel.masterName}`, false);
  }

  /**
   * Where this store's Redis is, for log lines: the URL, or the master name and the primary the
   * sentinels named last. The URL as config issues show it (urlShown()): the client ignores a
   * query, and one written with `?password=` would have put the password in every state line.
   */
  private where(): { readonly url: string } | { readonly sentinel: string; readonly primary?: string } {
    const { sentinel } = this.redis;
    if (sentinel === undefined) return { url: urlShown(this.redis.url ?? '') };
    return { sentinel: sentinel.masterName, ...(this.primary !== undefined ? { primary: sentinelNodeName(this.primary) } : {}) };
  }
}

/** Closes a Redis connection at once, if there is one: one never opened, or already closed, throws nothing. */
function destroyQuietly(connection: { destroy(): void } | undefined): void {
  try {
    connection?.destroy();
  } catch {
    // never opened, or already closed
  }
}

/**
 * An error text as it may be logged: without the configured password. Redis answers a command it
 * does not know (AUTH or HELLO renamed away, say) with its first arguments, the password among
 * them, cut off after 128 bytes, so that only part of a password may be there: the arguments are
 * left out whole.
 */
export function withoutSecrets(text: string, redis: Pick<ThrottleRedisConfig, 'password' | 'sentinel'>): string {
  let out = text;
  const args = out.search(/with args beginning with:/i);
  if (args >= 0) out = `${out.slice(0, args)}with args beginning with: [arguments hidden]`;
  for (const password of [redis.password, redis.sentinel?.password]) if (password !== undefined && password !== '') out = out.split(password).join('[password hidden]');
  return out;
}

const NOTHING: SubjectState = Object.freeze({ failures: 0, refusedForMs: 0 });

/**
 * What a success's forgetting Redis did not take: the source tags (concatenated, each once, at
 * most KNOWN_ADDRESSES_PER_USER: the latest), and the user's limit then; `true` is an operator's
 * clear of the whole key (see RedisThrottleStore.uncleared).
 */
type Pending = true | { readonly tags: string; readonly limit: number };

/** `tags` with `tag` (each once), the latest KNOWN_ADDRESSES_PER_USER kept: a user's sources waiting are few, and bounded. */
function withSource(tags: string, tag: string): string {
  const all: string[] = [];
  for (let i = 0; i < tags.length; i += SOURCE_CHARS) if (tags.slice(i, i + SOURCE_CHARS) !== tag) all.push(tags.slice(i, i + SOURCE_CHARS));
  all.push(tag);
  return all.slice(-KNOWN_ADDRESSES_PER_USER).join('');
}

/** The source of a subject, as a spread: none for an address's count. */
function sourceOf(subject: SubjectLimit): { readonly source?: string } {
  return subject.source === undefined ? {} : { source: subject.source };
}

function pairs(reply: unknown[], count: number): SubjectState[] {
  const out: SubjectState[] = [];
  for (let i = 0; i < count; i++) out.push({ failures: Number(reply[i * 2] ?? 0), refusedForMs: Number(reply[i * 2 + 1] ?? 0) });
  return out;
}

/** Redis's state of a subject with the failures this instance counted that Redis missed. */
function plus(shared: SubjectState, missed: SubjectState | undefined): SubjectState {
  if (missed === undefined || (missed.failures === 0 && missed.refusedForMs === 0)) return shared;
  return { failures: shared.failures + missed.failures, refusedForMs: Math.max(shared.refusedForMs, missed.refusedForMs) };
}

/** A subject an operator names (whereis, unthrottle): a user (normalised), or a client address (an IP literal). */
export type ThrottleSubject = { readonly user: string } | { readonly address: string };

/**
 * Where a subject's counts were read or cleared: `memory`, this instance's counters (no
 * throttle.redis); `redis`, Redis, shared by every instance using it (with the failures this
 * instance counted that Redis did not take); `local`, this instance's counters, Redis not answering.
 */
export type ThrottleSource = 'memory' | 'redis' | 'local';

/** A subject's counts as an operator is shown them. */
export interface SubjectReport extends SubjectState {
  /** The counter's key: `u:` and the user, or `a:` and the address as counted (its IPv6 network of throttle.ipv6_prefix_bits, the IPv4 address a nat64 address embeds). */
  readonly key: string;
  /** The failures that start a refusal (failures_per_user or failures_per_address). */
  readonly limit: number;
  readonly from: ThrottleSource;
}

/** What Throttle.clear() did: the counts before, and where they were cleared (see ThrottleSource). */
export interface ThrottleRelease {
  readonly before: SubjectReport;
  readonly cleared: ThrottleSource;
}

/** Options of a Throttle. */
export interface ThrottleOptions {
  /** Key of the password fingerprints; random per process by default (see the report on fleets). */
  readonly fingerprintKey?: Uint8Array;
  /** Where refusals are logged (never with a password or fingerprint). */
  readonly log?: Logger;
}

/** Options of Throttle.fromConfig. */
export interface FromConfigOptions {
  /** Called on every change of the Redis state (turn it into a metric). */
  readonly onRedisState?: (state: RedisState) => void;
  /** A fingerprint key shared by the fleet, so that one wrong password counts once fleet-wide. */
  readonly fingerprintKey?: Uint8Array;
  /** Time between reconnection attempts while Redis is down. */
  readonly retryIntervalMs?: number;
}

const ALLOW: ThrottleVerdict = Object.freeze({ refused: false, refusedForMs: 0, delayMs: 0 });

/** How long failures and refusals of `config` last. */
function policyOf(config: ThrottleConfig): FailurePolicy {
  return { failureWindowMs: config.failureWindowMs, refusalMs: config.refusalMs, fingerprintsKept: FINGERPRINTS_KEPT };
}

/** What a reload did to the throttle (Throttle.reconfigure()), for its log line. */
export interface ThrottleChange {
  /** The config keys that changed (throttleChanges()). */
  readonly changed: readonly string[];
  /**
   * The counters: `kept` (the new values apply to them), `copied` into stores of a new
   * max_tracked, `dropped` (throttling turned off), `new` (turned on: empty), `none` (off before and after).
   */
  readonly counters: 'kept' | 'copied' | 'dropped' | 'new' | 'none';
  /** Subjects a copy into smaller stores forgot (the least recently used). */
  readonly forgotten?: number;
  /** The Redis connection, where one was or is used: `kept`; `connecting`, a new one; `closed`, the old one let go of. */
  readonly redis?: 'kept' | 'connecting' | 'closed';
}

/**
 * The throttle a session asks before authenticating (`check`) and tells after (`recordFailure`,
 * `recordSuccess`). Every method resolves, never rejects.
 */
export class Throttle {
  private readonly fingerprintKey: Uint8Array;
  private config: ThrottleConfig;
  /** Where counters live; null while throttling is off in a throttle built from its config (nothing allocated). */
  private store: ThrottleStore | null;
  /** A throttle built from its config: its local counters (behind its Redis store, if any), null while off. */
  private local: MemoryThrottleStore | null = null;
  /** A throttle built from its config: how its stores are made again at a reload (undefined for one given its store). */
  private builder: { readonly log: Logger; readonly options: FromConfigOptions } | undefined;
  /** Whether the Redis store in force may report its state: a replaced one's late reports are not passed on. */
  private redisReports = { on: true };
  /** throttle.exempt_networks. */
  private exempt: CidrSet;
  /**
   * The addresses users logged in from on this instance, for known_address_ms: per user key, up
   * to KNOWN_ADDRESSES_PER_USER address keys with when each stops being known (monotonic()), as
   * the Redis hash keeps them, so that one account's many addresses take one entry and do not
   * push other users' out; made at the first success, none while it is 0 (see recordSuccess()).
   */
  private known: LRUCache<string, Map<string, number>> | undefined;

  constructor(
    config: ThrottleConfig,
    store: ThrottleStore | null,
    private readonly options: ThrottleOptions = {},
  ) {
    this.config = config;
    this.store = store;
    this.fingerprintKey = options.fingerprintKey ?? randomBytes(32);
    this.exempt = new CidrSet(config.exemptNetworks ?? []);
  }

  /**
   * Builds the throttle a config asks for: memory counters, or Redis-shared ones with local
   * fallback; none while throttling is off (they are made when a reload turns it on).
   */
  static fromConfig(config: ThrottleConfig, log: Logger, options: FromConfigOptions = {}): Throttle {
    const throttle = new Throttle(config, null, { log, ...(options.fingerprintKey ? { fingerprintKey: options.fingerprintKey } : {}) });
    throttle.builder = { log, options };
    if (config.enabled) throttle.build(config);
    return throttle;
  }

  /** Makes the stores of `config` (throttling on): local counters, and Redis in front of them when it names one. */
  private build(config: ThrottleConfig): void {
    const local = new MemoryThrottleStore(policyOf(config), config.maxTrackedSubjects);
    this.local = local;
    this.store = config.redis === undefined ? local : this.redisStore(config, config.redis, local);
  }

  private redisStore(config: ThrottleConfig, redis: ThrottleRedisConfig, local: MemoryThrottleStore): RedisThrottleStore {
    const { log, options } = this.builder!;
    const reports = { on: true };
    this.redisReports = reports;
    const onRedisState = options.onRedisState;
    return new RedisThrottleStore({
      redis,
      policy: policyOf(config),
      local,
      log,
      ...(onRedisState
        ? {
            onStateChange: (state: RedisState) => {
              if (reports.on) onRedisState(state);
            },
          }
        : {}),
      ...(options.retryIntervalMs !== undefined ? { retryIntervalMs: options.retryIntervalMs } : {}),
    });
  }

  /**
   * A reload's new `throttle` section, applied to the counters in force rather than to empty ones:
   * an operator who tightens a limit during an attack must not hand every guesser a fresh budget
   * and lift every refusal. Delays, limits and `enabled` apply from the next login (a tightened
   * limit refuses a subject at its next counted failure); a new window or refusal time applies to
   * the failures counted and refusals started from now on (those before keep their expiry, in
   * memory and in Redis). A new max_tracked copies the counters into stores of that size; the
   * Redis connection is kept unless a setting that reaches Redis changed (all but timeout_ms).
   * Turned off, the counters are dropped (and Redis let go of); turned on, they start empty.
   * A throttle given its store only takes the new values.
   */
  reconfigure(next: ThrottleConfig): ThrottleChange {
    const previous = this.config;
    const changed = throttleChanges(previous, next);
    this.config = next;
    this.exempt = new CidrSet(next.exemptNetworks ?? []);
    this.reconfigureKnown(next);
    const policy = policyOf(next);
    if (this.builder === undefined) {
      if (this.store instanceof MemoryThrottleStore) this.store.setPolicy(policy);
      return { changed, counters: 'kept' };
    }
    const redisBefore = this.store instanceof RedisThrottleStore ? this.store : undefined;
    if (!next.enabled) {
      if (this.store === null) return { changed, counters: 'none' };
      this.dropStores();
      return { changed, counters: 'dropped', ...(redisBefore !== undefined ? { redis: 'closed' as const } : {}) };
    }
    const local = this.local;
    if (this.store === null || local === null) {
      this.build(next);
      return { changed, counters: 'new', ...(next.redis !== undefined ? { redis: 'connecting' as const } : {}) };
    }
    local.setPolicy(policy);
    const resize = next.maxTrackedSubjects !== previous.maxTrackedSubjects;
    const forgotten = resize ? local.resize(next.maxTrackedSubjects) : 0;
    let redis: ThrottleChange['redis'];
    if (redisBefore !== undefined && previous.redis !== undefined && next.redis !== undefined && sameRedisConnection(previous.redis, next.redis)) {
      redisBefore.reconfigure(policy, next.redis);
      if (resize) redisBefore.resize(next.maxTrackedSubjects);
      redis = 'kept';
    } else {
      // Another Redis, or the same reached otherwise: the local counters stand in until the new
      // connection is up (they hold every failure this instance counted).
      if (redisBefore !== undefined) {
        this.redisReports.on = false;
        redisBefore.close().catch(() => undefined);
        redis = 'closed';
      }
      this.store = local;
      if (next.redis !== undefined) {
        this.store = this.redisStore(next, next.redis, local);
        redis = 'connecting';
      }
    }
    return { changed, counters: resize ? 'copied' : 'kept', ...(forgotten > 0 ? { forgotten } : {}), ...(redis !== undefined ? { redis } : {}) };
  }

  /** A reload's known_address_ms and max_tracked, for the addresses known here (those known keep their expiry). */
  private reconfigureKnown(next: ThrottleConfig): void {
    const known = this.known;
    if (known === undefined) return;
    const ms = knownAddressMsOf(next);
    if (ms === 0 || !next.enabled) {
      this.known = undefined;
      return;
    }
    known.ttl = ms;
    if (known.max !== next.maxTrackedSubjects) this.known = resized(known, knownCache(next.maxTrackedSubjects, ms));
  }

  private dropStores(): void {
    this.redisReports.on = false;
    const store = this.store;
    this.store = null;
    this.local = null;
    store?.close().catch(() => undefined);
  }

  /** Where counters live now: 'memory', or the Redis state ('up' = shared with the fleet). */
  get sharing(): 'memory' | RedisState {
    return this.store instanceof RedisThrottleStore ? this.store.state : 'memory';
  }

  /** Resolves once the store is usable or has fallen back (the first Redis connection attempt ended). */
  async ready(): Promise<void> {
    const store = this.store;
    if (store instanceof RedisThrottleStore) await store.ready();
  }

  /**
   * Before authenticating: refused when a limit is reached; delayMs is the penalty earned so far.
   * With `addressBudget`, also the failures the address has left before its limit: the login
   * gate lets that many of the address's checks run at a time (LoginGate.checkAddress).
   */
  async check(attempt: LoginAttempt, options: { readonly addressBudget?: boolean } = {}): Promise<BudgetedVerdict> {
    const store = this.store;
    if (!this.config.enabled || store === null) return ALLOW;
    const subjects = this.subjects(attempt);
    try {
      const states = await store.read(subjects);
      const counted = this.countsAddress(attempt);
      // The address, when counted, is the last subject (subjects()).
      const at = options.addressBudget === true && counted ? subjects.length - 1 : -1;
      const addressLeft = at < 0 ? undefined : this.config.failuresPerAddress - (states[at]?.failures ?? 0);
      const verdict = this.verdict(subjects, states, addressLeft);
      // Only a login the user's limit refuses asks whether its address is known: no more work for
      // any other. Not an address counted by no one (a trusted or exempt network): the user's limit
      // is all that bounds guesses from it.
      if (verdict.refusedBy !== 'user' || !counted || attempt.user === null || !(await this.knows(store, attempt.user, attempt.address))) return verdict;
      const spared = states.map((state, i) => (subjects[i]?.by === 'user' ? { failures: state.failures, refusedForMs: 0 } : state));
      return { ...this.verdict(subjects, spared, addressLeft), knownAddress: true };
    } catch {
      return ALLOW;
    }
  }

  /** Whether a login of `attempt` is counted per address: not from a trusted or exempt network. */
  private countsAddress(attempt: LoginAttempt): boolean {
    return !attempt.trusted && !this.exempt.contains(attempt.address);
  }

  /** Whether `address` is on one of throttle.exempt_networks: not counted per address. */
  exempts(address: string): boolean {
    return this.exempt.contains(address);
  }

  /** Whether `user` logged in from `address` within known_address_ms: here, or (with Redis) on any instance sharing it. */
  private async knows(store: ThrottleStore, user: string, address: string): Promise<boolean> {
    if (knownAddressMsOf(this.config) === 0) return false;
    const pair = { user: knownKey(user), address: this.addressKey(address) };
    if ((this.known?.get(pair.user)?.get(pair.address) ?? 0) > monotonic()) return true;
    return store instanceof RedisThrottleStore && (await store.knows(pair.user, pair.address));
  }

  /**
   * After a failed login: counts it (unless this user and password already failed within the
   * window) and returns how long to wait before answering. The password is only fingerprinted.
   */
  async recordFailure(attempt: LoginAttempt, password: string): Promise<ThrottleVerdict> {
    const store = this.store;
    if (!this.config.enabled || store === null) return ALLOW;
    const subjects = this.subjects(attempt, true);
    try {
      const states = await store.addFailure(subjects, this.fingerprint(attempt.user, password));
      const verdict = this.verdict(subjects, states);
      if (verdict.refused) {
        this.options.log?.warn(
          { event: 'throttle.refusing', by: verdict.refusedBy, user: attempt.user ?? undefined, client: attempt.address, refusedForMs: verdict.refusedForMs },
          'too many failed logins: refusing logins for a while',
        );
      }
      return verdict;
    } catch {
      return ALLOW;
    }
  }

  /**
   * After a successful login: the user's failures counted from the login's address (as the
   * throttle keys it: the IPv4 address, the IPv6 network, the forwarded address; a trusted or
   * exempt network's own) are forgotten, the user's own typos there; those from elsewhere count
   * on until they expire or an operator clears them, or a guesser would get failures_per_user - 1
   * guesses again at every login of the user's phone. The address (when counted per address) is
   * known for the user for known_address_ms. The address's count is not forgotten: an attacker
   * who owns one mailbox could otherwise wipe his address's record at will. A login the check
   * spared a refusal of the user (a known address) forgets the same: the refusal ends only if the
   * failures from elsewhere are below the limit by themselves, as at any success. No more Redis
   * calls than the count's DEL before: one script call does both.
   */
  async recordSuccess(attempt: LoginAttempt): Promise<void> {
    const store = this.store;
    if (!this.config.enabled || store === null || attempt.user === null) return;
    const address = this.addressKey(attempt.address);
    const forget = { source: sourceTag(address), limit: this.config.failuresPerUser };
    const ms = knownAddressMsOf(this.config);
    try {
      if (ms === 0 || !this.countsAddress(attempt)) {
        await store.forgetSource(userKey(attempt.user), forget.source, forget.limit);
        return;
      }
      const known: KnownAddress = { user: knownKey(attempt.user), address, ms };
      this.known ??= knownCache(this.config.maxTrackedSubjects, ms);
      this.known.set(known.user, withKnown(this.known.get(known.user), known.address, monotonic() + ms));
      if (store instanceof RedisThrottleStore) await store.succeeded(userKey(attempt.user), forget, known);
      else await store.forgetSource(userKey(attempt.user), forget.source, forget.limit);
    } catch {
      // nothing to undo
    }
  }

  /**
   * The counts of `subjects` now, read as a login's check reads them (from Redis within its
   * deadline, else the local counters), for an operator (whereis); null while throttling is off.
   */
  async inspect(subjects: readonly ThrottleSubject[]): Promise<SubjectReport[] | null> {
    const store = this.store;
    if (!this.config.enabled || store === null) return null;
    const limits = subjects.map((s) => this.subjectLimit(s));
    const { states, from } = store instanceof RedisThrottleStore ? await store.readFrom(limits) : { states: await store.read(limits), from: 'memory' as const };
    return limits.map(({ key, limit }, i) => ({ key, limit, ...(states[i] ?? NOTHING), from }));
  }

  /**
   * Clears a subject's counts and refusal (mailfront unthrottle): the local counters, the failures
   * counted apart that Redis did not take, and Redis's key, which releases it on every instance
   * sharing Redis. Without Redis, or with Redis not taking the DEL, on this instance only (Redis
   * deletes it once it takes writes again). Keyed as a login counts it: an IPv6 address by its network of ipv6_prefix_bits,
   * a nat64 one by the IPv4 address it embeds. Null while throttling is off.
   */
  async clear(subject: ThrottleSubject): Promise<ThrottleRelease | null> {
    const store = this.store;
    const [before] = (await this.inspect([subject])) ?? [];
    if (store === null || before === undefined) return null;
    const cleared = store instanceof RedisThrottleStore ? await store.clearFrom([before.key]) : (await store.clear([before.key]), 'memory' as const);
    return { before, cleared };
  }

  /** The key and limit a login counts `subject` by (subjects()). */
  private subjectLimit(subject: ThrottleSubject): SubjectLimit {
    return 'user' in subject ? { key: userKey(subject.user), limit: this.config.failuresPerUser } : { key: this.addressSubjectKey(subject.address), limit: this.config.failuresPerAddress };
  }

  /** Closes the store's connections. */
  close(): Promise<void> {
    this.redisReports.on = false;
    return this.store?.close() ?? Promise.resolve();
  }

  /** The penalty after `failures` counted failures: base, doubling, capped. */
  delayFor(failures: number): number {
    if (failures <= 0) return 0;
    return Math.min(this.config.maxDelayMs, this.config.baseDelayMs * 2 ** Math.min(failures - 1, 30));
  }

  /** The subjects a login counts for; `sourced`: the user's with the address's source tag (a failure's, see recordSuccess()). */
  private subjects(attempt: LoginAttempt, sourced = false): (SubjectLimit & { readonly by: 'user' | 'address' })[] {
    const out: (SubjectLimit & { readonly by: 'user' | 'address' })[] = [];
    if (attempt.user !== null) out.push({ key: userKey(attempt.user), limit: this.config.failuresPerUser, by: 'user', ...(sourced ? { source: sourceTag(this.addressKey(attempt.address)) } : {}) });
    if (this.countsAddress(attempt)) out.push({ key: this.addressSubjectKey(attempt.address), limit: this.config.failuresPerAddress, by: 'address' });
    return out;
  }

  /** The key an address's failures are counted under: an IPv6 address by its network of throttle.ipv6_prefix_bits. */
  private addressSubjectKey(address: string): string {
    return `a:${this.addressKey(address)}`;
  }

  /**
   * The address as its failures are counted (the IPv4 address, or the IPv6 network of
   * ipv6_prefix_bits): the login gate takes an address's turns by it too.
   */
  addressKey(address: string): string {
    return addressKey(address, ipv6PrefixBitsOf(this.config));
  }

  private verdict(subjects: readonly { readonly by: 'user' | 'address' }[], states: readonly SubjectState[], addressLeft?: number): BudgetedVerdict {
    let failures = 0;
    let refusedBy: 'user' | 'address' | undefined;
    let refusedForMs = 0;
    states.forEach((state, i) => {
      failures = Math.max(failures, state.failures);
      if (state.refusedForMs > refusedForMs) {
        refusedForMs = state.refusedForMs;
        refusedBy = subjects[i]?.by;
      }
    });
    const delayMs = this.delayFor(failures);
    if (addressLeft !== undefined) return refusedBy === undefined ? { refused: false, refusedForMs: 0, delayMs, addressLeft } : { refused: true, refusedBy, refusedForMs, delayMs, addressLeft };
    return refusedBy === undefined ? { refused: false, refusedForMs: 0, delayMs } : { refused: true, refusedBy, refusedForMs, delayMs };
  }

  /**
   * HMAC of user and password together: the same password sprayed over many users counts once
   * per user, also against the address; and nothing stored can be reversed without the key.
   */
  private fingerprint(user: string | null, password: string): string {
    return createHmac('sha256', this.fingerprintKey)
      .update(user ?? '')
      .update('\0')
      .update(password)
      .digest()
      .subarray(0, FINGERPRINT_BYTES)
      .toString('base64url');
  }
}

function userKey(user: string): string {
  return `u:${user}`;
}

/** The key of a user's known addresses (in Redis, a hash: see SUCCESS_SCRIPT). */
function knownKey(user: string): string {
  return `k:${user}`;
}

/** The addresses known on this instance: at most `max` users, each forgotten `ms` after its last success. */
function knownCache(max: number, ms: number): LRUCache<string, Map<string, number>> {
  return new LRUCache<string, Map<string, number>>({ max, ttl: ms, ttlResolution: 0, perf: { now: monotonic } });
}

/**
 * A user's known addresses with `address` known until `until`: those whose time has passed
 * dropped, and the KNOWN_ADDRESSES_PER_USER latest kept (as SUCCESS_SCRIPT keeps them in Redis).
 */
function withKnown(addresses: Map<string, number> | undefined, address: string, until: number): Map<string, number> {
  const out = addresses ?? new Map<string, number>();
  const now = monotonic();
  out.delete(address);
  for (const [a, t] of out) if (t <= now) out.delete(a);
  // A map keeps its order of insertion, here the order of the last successes: the first is the least recent.
  while (out.size >= KNOWN_ADDRESSES_PER_USER) out.delete(out.keys().next().value as string);
  out.set(address, until);
  return out;
}
