/**
 * The composition root: config → logger, directory, store-map holder and source, session
 * registry, health monitor, admin API → listeners; failover drains and shutdown. Nothing else
 * creates long-lived objects. Used by the CLI's `serve` and by tests.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readCaCertificates } from './ca-file.js';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DestinationStream } from 'pino';
import { directoryHealth } from './auth/directory.js';
import { OAuthVerifier } from './auth/oauth.js';
import type { Directory, DirectoryHealth } from './auth/directory.js';
import { CachingDirectory } from './auth/cache.js';
import { LdapDirectory, probeDirectory, refusalText } from './auth/ldap.js';
import { MAX_PROBES_IN_FLIGHT, SlotHealthMonitor } from './backend/health.js';
import { Throttle } from './auth/throttle.js';
import type { ThrottleChange } from './auth/throttle.js';
import { ConnectionLimiter } from './server/connection-limits.js';
import { backendFor, configSourceAddresses, forgetBackendCaFiles, probeProtocol, probeSlot, unusableSourceAddresses } from './backend/connect.js';
import { ConfigError, buildStoreMap, loadConfig } from './config/load.js';
import { STOP_CLOSE_MS, configWarnings } from './config/schema.js';
import type { Config } from './config/schema.js';
import { Metrics } from './metrics.js';
import { CidrSet, bindAddressesOverlap, setNat64Prefixes } from './net/cidr.js';
import { HttpServer, SharedCheck, readinessOf } from './server/http.js';
import type { Readiness } from './server/http.js';
import { encodeProxyV2Local } from './server/proxy-protocol.js';
import { MailfrontError } from './errors.js';
import { createLogger } from './log.js';
import type { Logger } from './log.js';
import { imapAdapter } from './protocol/imap/index.js';
import { managesieveAdapter } from './protocol/managesieve/index.js';
import { pop3Adapter } from './protocol/pop3/index.js';
import type { ProtocolAdapter } from './protocol/types.js';
import { DrainSchedule } from './proxy/drain-schedule.js';
import { SessionRegistry } from './proxy/registry.js';
import type { SessionEntry } from './proxy/registry.js';
import { Canceller } from './cancel.js';
import type { Cancellation } from './cancel.js';
import { StoreMapHolder } from './routing/holder.js';
import type { MaintenanceChange, MasterChange, ReloadResult, SourceRead } from './routing/holder.js';
import { ACCEPT_OLDER_TRIGGER, createStoreMapSource, sourceUnreadable } from './routing/sources.js';
import type { StoreMapSource } from './routing/sources.js';
import { sameServer } from './routing/storemap.js';
import type { Slot, StoreMap } from './routing/storemap.js';
import { createAdminHandler } from './server/admin.js';
import { Listener, needsRebind } from './server/listeners.js';
import type { Session } from './session/session.js';
import { TlsFilesError } from './server/tls-config.js';
import { LoginGate } from './auth/login-gate.js';
import { PasswordAlerts } from './auth/password-policy.js';

const ADAPTERS: Record<Config['listeners'][number]['protocol'], ProtocolAdapter> = { imap: imapAdapter, pop3: pop3Adapter, managesieve: managesieveAdapter };

export interface StartOptions {
  /** Where log lines go (stdout by default). */
  readonly logDestination?: DestinationStream;
  /** A directory to use instead of LDAP (tests that inject failures). */
  readonly directory?: Directory;
  /** An HTTP listener for metrics, health and the admin API, instead of the config's `http`. */
  readonly http?: { readonly host: string; readonly port: number };
  /** Standard process_* metrics (default true; tests running several instances turn them off). */
  readonly processMetrics?: boolean;
}

const VERSION = (JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../package.json'), 'utf8')) as { version: string }).version;

/** The LDAP directory, behind the authentication cache when it is on. */
function createDirectory(config: Config, log: Logger, metrics: Metrics, ca: CaFileRead): Directory {
  const ldap = new LdapDirectory(config.directory, log.child({ component: 'directory' }), metrics, caContent(ca));
  return config.directory.authCacheTtlMs > 0 ? new CachingDirectory(ldap, config.directory.authCacheTtlMs, config.directory.cacheMaxEntries, metrics) : ldap;
}

/**
 * Directory settings whose change leaves what the directory answers as it was: how its servers are
 * reached (deadlines, search connections, StartTLS, the CA, the service account's password: the
 * same account sees the same entries), the entry cache's time, and what users are told of the
 * password policy's warnings (password_policy's alerts, which the session reads). A reload that changes only these
 * keeps the caches (the successful logins, and the entries found unless their time changed),
 * with the new settings behind them. Any other change (urls, bind_dn, base_dn, user_filter,
 * store_attribute, login_attribute: who is found and what is read of the entry; auth_cache_ttl_ms,
 * cache_max_entries: the caches' own bounds) sets the directory up anew with empty caches.
 */
const DIRECTORY_SETTINGS_KEEPING_CACHES: ReadonlySet<string> = new Set<keyof Config['directory']>(['starttls', 'caFile', 'connectTimeoutMs', 'operationTimeoutMs', 'searchConnections', 'bindPassword', 'entryCacheTtlMs', 'passwordAlerts']);

/** How a reload changes the directory section. */
interface DirectoryChange {
  /** The config keys that changed (ca_file also when only its content did). */
  readonly changed: readonly string[];
  /** Only DIRECTORY_SETTINGS_KEEPING_CACHES changed: the LDAP directory is replaced behind the caches in force. */
  readonly behindCaches: boolean;
}

function directoryChange(previous: Config['directory'], next: Config['directory'], caRenewed: boolean): DirectoryChange {
  const fields = [...new Set([...Object.keys(previous), ...Object.keys(next)])] as (keyof Config['directory'])[];
  const differ = fields.filter((f) => JSON.stringify(previous[f]) !== JSON.stringify(next[f]));
  if (caRenewed && !differ.includes('caFile')) differ.push('caFile');
  return {
    // passwordAlerts is read from password_policy (its mapping's texts and interval).
    changed: [...new Set(differ.map((f) => (f === 'passwordAlerts' ? 'passwordPolicy' : f).replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)))].sort(),
    behindCaches: differ.every((f) => DIRECTORY_SETTINGS_KEEPING_CACHES.has(f)),
  };
}

/**
 * The directory keys (as directoryChange() names them) whose change a reload tries on a server
 * before putting it in force (testDirectorySettings()): where the service account binds, with what,
 * and under which base it searches. A server that refuses them refuses every login.
 */
const DIRECTORY_KEYS_TRIED: ReadonlySet<string> = new Set(['urls', 'bind_dn', 'bind_password', 'base_dn']);

/**
 * Tries `directory` settings on a server (probeDirectory()): throws DIRECTORY_SETTINGS_REFUSED,
 * naming the key, the server and its answer, when one refused them; when no server answered
 * (an outage, no fault of the config), says so in a warn line and lets them be put in force.
 */
async function testDirectorySettings(file: string, directory: Config['directory'], ca: Buffer | undefined, log: Logger, when: 'start' | 'reload', wait: <T>(work: Promise<T>) => Promise<T> = (work) => work): Promise<void> {
  const tried = await wait(probeDirectory(directory, ca));
  if (tried.state === 'refused') {
    throw new MailfrontError('DIRECTORY_SETTINGS_REFUSED', 'config', `${file}: ${refusalText(tried.refusal)}: the directory cannot work with these settings`);
  }
  if (tried.state === 'unreachable') {
    log.warn({ event: 'directory.settings_untried', when, err: tried.detail }, `no directory server answered the test of the directory settings; they are put in force untried (an outage is not the config's fault)`);
  }
}

/** The CA file a section names: directory.ca_file, store_map.ldap.ca_file (the directory's unless set). */
function caFileOf(config: Config, section: CaSection): string | undefined {
  return section === 'directory' ? config.directory.caFile : config.storeMap.kind === 'ldap' ? config.storeMap.caFile : undefined;
}

type CaSection = 'directory' | 'storeMap';
const CA_FILE_KEYS: Record<CaSection, string> = { directory: 'directory.ca_file', storeMap: 'store_map.ldap.ca_file' };

/**
 * A section's CA file, read once: `state` is what the change test compares (a CA renewed in
 * place, the same path with new content, changes its section, so that a reload sets it up
 * anew), the hash of exactly the bytes in `content`, which the section is set up with. One that
 * cannot be read, or holds no usable certificate, has `error` instead (a state of its own, so a
 * change): setting the section up with it throws that error, which rejects the reload naming the
 * file, as at start.
 */
interface CaFileRead {
  readonly state: string;
  readonly content?: Buffer;
  readonly error?: unknown;
}

function readCaFileOnce(file: string | undefined, key: string): CaFileRead {
  if (file === undefined) return { state: 'none' };
  try {
    const content = readCaCertificates(file, key);
    return { state: createHash('sha256').update(content).digest('hex'), content };
  } catch (error) {
    return { state: `unusable: ${error instanceof Error ? error.message : String(error)}`, error };
  }
}

/** The CA files of the directory and the store-map source of `config`, each read once (one file named by both: once in all). */
function readCaFiles(config: Config): Record<CaSection, CaFileRead> {
  const directory = readCaFileOnce(caFileOf(config, 'directory'), CA_FILE_KEYS.directory);
  const storeMapFile = caFileOf(config, 'storeMap');
  const storeMap = storeMapFile !== undefined && storeMapFile === caFileOf(config, 'directory') && directory.error === undefined ? directory : readCaFileOnce(storeMapFile, CA_FILE_KEYS.storeMap);
  return { directory, storeMap };
}

/** The content to set a section up with; throws the reason when its CA file cannot be used. */
function caContent(read: CaFileRead): Buffer | undefined {
  if (read.error !== undefined) throw read.error;
  return read.content;
}

/** Whether the store-map document `doc` builds with `config`. */
function buildsWith(doc: unknown, origin: string, config: Config): boolean {
  try {
    buildStoreMap(doc, origin, 0, config);
    return true;
  } catch {
    return false;
  }
}

/**
 * `error` with the listener's config path in front when its certificate is at fault, as
 * check-config names it: serve and a reload would otherwise name only the files.
 */
function atListener(error: unknown, index: number, listener: Config['listeners'][number]): unknown {
  if (!(error instanceof MailfrontError) || error.code !== 'TLS_FILES_UNUSABLE') return error;
  const key = error instanceof TlsFilesError ? error.configKey : 'certificate';
  return new MailfrontError(error.code, error.kind, `listeners[${index}] ("${listener.name}").${key}: ${error.message}`, { cause: error });
}

/**
 * LDAP results that refuse the store-map source's own settings (a bind or a search the server
 * answered): waiting does not cure them. What to look at for each.
 */
const LASTING_LDAP_RESULTS: ReadonlyMap<number, string> = new Map([
  [8, 'strongerAuthRequired: store_map.ldap.starttls or an ldaps:// URL'],
  [13, 'confidentialityRequired: store_map.ldap.starttls or an ldaps:// URL'],
  [32, 'noSuchObject: store_map.ldap.base_dn'],
  [34, 'invalidDNSyntax: store_map.ldap.base_dn or bind_dn'],
  [48, 'inappropriateAuthentication: store_map.ldap.bind_dn and bind_password'],
  [49, 'invalidCredentials: store_map.ldap.bind_dn and bind_password'],
  [50, 'insufficientAccessRights: what store_map.ldap.bind_dn may read under base_dn'],
]);

/**
 * Why a store-map source cannot be read, when waiting will not cure it; undefined for a failure
 * that may pass (an LDAP server down, unreachable or timing out, a file too many open files keep
 * from being read). A file that is not there, not readable or not a file, one that does not parse,
 * and store entries that make no map are lasting. ldapts ends a result's message with its code
 * ("Code: 0x31"): of a bind that every server refused, the source's error keeps the messages only.
 */
function lastingSourceFailure(error: unknown): string | undefined {
  const message = error instanceof Error ? error.message : String(error);
  // A file that cannot be read for now (too many open files, an interrupted read, the disk), as
  // the file source judges it, and reads again until it can be.
  if (error instanceof ConfigError) return sourceUnreadable(error) === undefined ? message : undefined;
  // A server behind the map in force (a replica that has not caught up): read again until it has.
  if (error instanceof MailfrontError && error.code === 'STOREMAP_LDAP_BEHIND') return undefined;
  if (error instanceof MailfrontError && (error.code === 'STOREMAP_LDAP_UNREACHABLE' || error.code === 'STOREMAP_LDAP_SEARCH_FAILED' || error.code === 'STOREMAP_SOURCE_CLOSED')) {
    const cause = error.cause as { code?: unknown } | undefined;
    const codes = [...(typeof cause?.code === 'number' ? [cause.code] : []), ...[...message.matchAll(/Code: 0x([0-9a-f]+)/gi)].map((m) => parseInt(m[1]!, 16))];
    const reasons = [...new Set(codes.flatMap((c) => LASTING_LDAP_RESULTS.get(c) ?? []))];
    return reasons.length === 0 ? undefined : `${message} (${reasons.join('; ')})`;
  }
  return message;
}

/** Whether a listener has the name it gets without `name:`, `<protocol>-<port>` (one written out the same way is taken as it). */
function hasDefaultName(listener: Config['listeners'][number]): boolean {
  return listener.name === `${listener.protocol}-${listener.port}`;
}

/**
 * The listener of `candidates` (listening, not kept by the reload) that `moved`, a listener of
 * the new config `next` with a default name, replaces: a default name changes with the port, so
 * the one of its name is gone. Such a listener is one of the same protocol and TLS mode, with a
 * default name that no listener of `next` has (a listener moved, not one the new config still
 * has); of several, the one on the same host, else the first (listeners of one protocol and TLS
 * mode edited in place are paired in their order).
 */
function replacedUnderDefaultName(moved: Config['listeners'][number], candidates: readonly Listener[], next: Config): Listener | undefined {
  if (!hasDefaultName(moved)) return undefined;
  const replaced = candidates.filter((l) => hasDefaultName(l.config) && l.config.protocol === moved.protocol && l.config.tls === moved.tls && !next.listeners.some((c) => c.name === l.config.name));
  return replaced.find((l) => l.config.host === moved.host) ?? replaced[0];
}

/**
 * Descriptors besides those of clients and their backends: listeners, the HTTP listener, LDAP and
 * Redis connections, the log, node's own (epoll, the signal pipe, the thread pool's): about 30 at
 * start, with room for LDAP pools and reloads.
 */
const OTHER_DESCRIPTORS = 100;

/**
 * The process's soft limit of open files (RLIMIT_NOFILE): node has no getrlimit, so it is read
 * from /proc/self/limits ("Max open files  <soft>  <hard>  files"); undefined where that cannot
 * be read (not Linux) or when unlimited.
 */
export function openFilesLimit(limits = '/proc/self/limits'): number | undefined {
  let text: string;
  try {
    text = readFileSync(limits, 'utf8');
  } catch {
    return undefined;
  }
  const soft = /^Max open files\s+(\S+)/m.exec(text)?.[1];
  const value = soft === undefined ? Number.NaN : Number(soft);
  return Number.isSafeInteger(value) ? value : undefined;
}

/**
 * The directory's check in /readyz: advisory while it answers or no server does (an outage the
 * fleet shares); failing when a server refuses the settings. Names the answer, not the server
 * (/readyz needs no credentials; the log names it).
 */
function directoryReadiness(health: DirectoryHealth): { name: string; ok: boolean; advisory?: boolean; detail: string } {
  switch (health.state) {
    case 'answers':
      return { name: 'directory', ok: true, advisory: true, detail: 'reachable' };
    case 'unreachable':
      return { name: 'directory', ok: false, advisory: true, detail: 'unreachable' };
    case 'refused':
      return { name: 'directory', ok: false, detail: `${health.refusal.readiness}: ${health.refusal.name} (${health.refusal.code})` };
  }
}

/** A session's moment in a drain's spread, in ms from now: uniform over the window, 0 without one. */
function spreadMoment(spreadMs: number): number {
  return Math.floor(Math.random() * spreadMs);
}

/** The log text of a reload's change of the throttle, by what became of its counters. */
const THROTTLE_CHANGE_TEXTS: Record<ThrottleChange['counters'], string> = {
  kept: 'throttle settings changed; the counters and refusals in force are kept',
  copied: 'throttle settings changed; the counters and refusals in force are copied into stores of the new max_tracked',
  dropped: 'throttling turned off; its counters are dropped',
  new: 'throttling turned on, with empty counters',
  none: 'throttle settings changed; throttling is off',
};

/** A running mailfront process. */
export class Mailfront {
  readonly registry = new SessionRegistry();
  readonly listeners: Listener[] = [];
  readonly holder: StoreMapHolder;
  readonly health: SlotHealthMonitor;
  readonly metrics: Metrics;
  /**
   * Sessions a failover or maintenance will close, each at its moment in the drain's spread: one
   * schedule, not a timer each, closing a bounded batch per turn of the event loop.
   */
  private readonly draining = new DrainSchedule<SessionEntry>((session) => this.drained(session));
  private readonly loginGate = new LoginGate();
  /** Whom this instance told of an expiring password (directory.password_policy): kept across reloads. */
  private readonly passwordAlerts = new PasswordAlerts();
  private stopWatching: () => void = () => undefined;
  private http: HttpServer | undefined;
  /** The HTTP listener follows the config's `http` section (not an address given to start()). */
  private httpFromConfig = true;
  private trusted: CidrSet;
  private readonly throttle: Throttle;
  /** OAuth bearer-token logins' verifier, while oauth2 is configured; a reload makes a new one (the JWKS file read again). */
  private oauth: OAuthVerifier | undefined;
  readonly limiter: ConnectionLimiter;
  private stopping = false;
  /** The content of the CA files the directory and the store-map source in force were set up with (CaFileRead's state). */
  private readonly caFilesInForce: Record<CaSection, string>;

  private constructor(
    private config: Config,
    readonly log: Logger,
    private directory: Directory,
    private readonly ownsDirectory: boolean,
    metrics: Metrics,
    caFiles: Record<CaSection, CaFileRead>,
  ) {
    this.metrics = metrics;
    // Bytes of long sessions reach mailfront_proxied_bytes_total at every scrape, not only at their end.
    metrics.beforeScrape(() => {
      for (const entry of this.registry.values()) metrics.splicedTraffic(entry);
    });
    metrics.directoryCacheEntries(() => this.directory.cacheEntries());
    // mailfront_ready: what /readyz answers, at each scrape. The directory is not asked (a hung
    // one held every scrape 1.5 s): its last check for /readyz decides, as it decides /readyz.
    metrics.readiness(async () => (await this.readiness({ directory: false })).ready);
    this.caFilesInForce = { directory: caFiles.directory.state, storeMap: caFiles.storeMap.state };
    // A JWKS file that is no JWKS stops the start, as a CA file that cannot be used does.
    this.oauth = config.oauth2 === undefined ? undefined : OAuthVerifier.create(config.oauth2, log.child({ component: 'oauth' }), metrics);
    this.trusted = new CidrSet(config.trustedNetworks);
    setNat64Prefixes(config.nat64Prefixes);
    this.throttle = this.createThrottle(config);
    this.limiter = new ConnectionLimiter(config.connectionLimits);
    metrics.connectionLimits(this.limiter);
    this.holder = new StoreMapHolder(createStoreMapSource(config.storeMap, caContent(caFiles.storeMap), log), () => this.config, log, {
      changes: (changes) => this.drain(changes),
      maintenance: (changes) => this.drainMaintenance(changes),
      installed: (map) => metrics.storeMapInForce(map.version, map.stores),
      loaded: () => metrics.storeMapLoaded(),
      rejected: () => metrics.storeMapRejected(),
    });
    this.health = new SlotHealthMonitor(
      () => (this.holder.loaded ? this.holder.current : null),
      (slot, signal) => this.probe(slot, signal),
      config.health.intervalMs,
      config.health.timeoutMs,
      log,
      (slot, health) => metrics.slotHealth(slot.store, slot.name, health.up),
      () => metrics.slotHealthCleared(),
    );
  }

  /** Loads the store map, binds every listener and starts serving. */
  static async start(config: Config, options: StartOptions = {}): Promise<Mailfront> {
    // Before anything is set up: a source address the host does not have would fail every connection to a backend.
    const unusable = await unusableSourceAddresses(configSourceAddresses(config));
    if (unusable.length > 0) throw new ConfigError(config.file, unusable);
    const log = createLogger(config.logLevel, options.logDestination);
    const metrics = new Metrics({ version: VERSION, processMetrics: options.processMetrics ?? true, protocols: [...new Set(config.listeners.map((l) => l.protocol))] });
    // Read once: what the directory and the store-map source are set up with is what a reload compares.
    const caFiles = readCaFiles(config);
    const directory = options.directory ?? createDirectory(config, log, metrics, caFiles.directory);
    if (options.directory === undefined) {
      // A server that refuses the service account or base_dn would refuse every login: no start
      // (as check-config, which deploy/mailfront.service runs first, and a reload refuse it).
      try {
        await testDirectorySettings(config.file, config.directory, caContent(caFiles.directory), log, 'start');
      } catch (error) {
        log.error({ event: 'directory.settings_refused', file: config.file, err: error instanceof Error ? error.message : String(error) }, 'a directory server refused the directory settings; not starting');
        await directory.close();
        throw error;
      }
    }
    const mailfront = new Mailfront(config, log, directory, options.directory === undefined, metrics, caFiles);
    try {
      const first = await mailfront.holder.reload('start');
      if (!first.ok) throw new MailfrontError('STOREMAP_UNUSABLE', 'config', `cannot start without a store map: ${first.error ?? 'unknown error'}`);
      // Once the map is in: its slots are probed, each probe holding a descriptor.
      mailfront.checkDescriptorLimit(config);
      mailfront.logConfigWarnings(config);
      mailfront.stopWatching = mailfront.holder.source.watch(() => void mailfront.holder.reload('change'), mailfront.onSourceHealth);
      for (const [i, listenerConfig] of config.listeners.entries()) await mailfront.addListener(listenerConfig).catch((error: unknown) => Promise.reject(atListener(error, i, listenerConfig)));
      const http = options.http ?? config.http;
      mailfront.httpFromConfig = options.http === undefined;
      if (http) await mailfront.startHttp(http);
      mailfront.health.start();
    } catch (error) {
      await mailfront.stop(0, 0);
      throw error;
    }
    return mailfront;
  }

  /**
   * Warns when connection_limits.max_connections may need more descriptors than the process may
   * open: each client connection takes one, and its backend another; each health probe in flight
   * one more (MAX_PROBES_IN_FLIGHT, or one per slot when there are fewer). At the limit, a
   * connection the kernel refuses (EMFILE) is closed by libuv as it is accepted, before mailfront
   * sees it: no log line, no metric, only process_open_fds at process_max_fds.
   */
  private checkDescriptorLimit(config: Config): void {
    const limit = openFilesLimit();
    const { maxConnections } = config.connectionLimits;
    const slots = this.holder.loaded ? [...this.holder.current.stores.values()].reduce((n, store) => n + store.slots.size, 0) : MAX_PROBES_IN_FLIGHT;
    const probes = config.health.intervalMs === 0 ? 0 : Math.min(MAX_PROBES_IN_FLIGHT, slots);
    const needed = 2 * maxConnections + probes + OTHER_DESCRIPTORS;
    if (limit === undefined || needed <= limit) return;
    this.log.warn(
      { event: 'process.descriptor_limit_low', limit, needed, maxConnections, probes },
      `the process may open ${limit} files (RLIMIT_NOFILE), and connection_limits.max_connections: ${maxConnections} may need ${needed} (a client and a backend each, ${probes} health probes at once, and ${OTHER_DESCRIPTORS} more): connections over the limit are closed unannounced; raise LimitNOFILE (ulimit -n) or lower max_connections`,
    );
  }

  /** Logs what the config sets that works against itself (configWarnings()), at start and at each reload: check-config prints the same. */
  private logConfigWarnings(config: Config): void {
    for (const { event, path, text } of configWarnings(config)) this.log.warn({ event, path }, text);
  }

  private createThrottle(config: Config): Throttle {
    this.metrics.throttleRedis(config.throttle.enabled && config.throttle.redis !== undefined ? false : null);
    // Only the Redis connection in force reports (one a reload let go of is silenced by the throttle).
    return Throttle.fromConfig(config.throttle, this.log.child({ component: 'throttle' }), {
      onRedisState: (state) => this.metrics.throttleRedis(state === 'up'),
    });
  }

  private async addListener(listenerConfig: Config['listeners'][number]): Promise<Listener> {
    return this.startListener(this.createListener(listenerConfig));
  }

  /** Binds a listener made by createListener() and keeps it. */
  private async startListener(listener: Listener): Promise<Listener> {
    await listener.listen();
    this.listeners.push(listener);
    // stop() shut the listeners while this one was binding (a reload's): it accepts nothing either.
    if (this.stopping) await listener.shutDown();
    return listener;
  }

  /** Drops a listener a reload stopped and that has nothing left (Listener.whenRetired()). */
  private forgetListener(listener: Listener): void {
    const index = this.listeners.indexOf(listener);
    if (index >= 0 && !listener.listening) this.listeners.splice(index, 1);
  }

  /** A listener for `listenerConfig`, not bound yet; throws when its certificate cannot be used. */
  private createListener(listenerConfig: Config['listeners'][number]): Listener {
    return new Listener(listenerConfig, ADAPTERS[listenerConfig.protocol], {
      config: () => this.config,
      storeMap: () => this.holder.current,
      directory: () => this.directory,
      registry: this.registry,
      metrics: this.metrics,
      trustedNetworks: () => this.trusted,
      throttle: () => this.throttle,
      oauth: () => this.oauth,
      loginGate: this.loginGate,
      passwordAlerts: this.passwordAlerts,
      limiter: this.limiter,
      log: this.log,
    }, this.log);
  }

  /** The store map in force. */
  currentStoreMap(): StoreMap {
    return this.holder.current;
  }

  /** Re-reads the store map only (tests); a broken one leaves the last good map in force. */
  reloadStoreMap(trigger = 'signal'): Promise<ReloadResult> {
    return this.holder.reload(trigger);
  }

  /**
   * SIGHUP: re-reads the config file and the store map. Spliced sessions are never dropped:
   * new settings apply to new sessions; a listener moved to a free address is bound anew and the
   * old one stops accepting; removed listeners stop accepting. A broken config is rejected whole
   * and the running one stays in force. Reloads run one at a time, in order (two SIGHUPs in a
   * row must not interleave their steps). A request made while another waits to start joins it:
   * the reload reads the files when it starts, so it sees every edit made before either request.
   * Each starts from the event loop: a reload's steps settle without I/O when nothing changed,
   * and a burst of 50 SIGHUPs at 500 stores, each run in turn as microtasks, relayed nothing and
   * answered nothing (signals included) for 18 s.
   *
   * `acceptOlderStoreMap` (`mailfront reload --accept-older-store-map`): an LDAP store map read
   * from a server behind the map in force is put in force all the same (the directory restored
   * from a backup); otherwise it is refused, as the polls refuse it. A request that joins the
   * waiting one gives it this too: the operator asked for it, and that reload has not read yet.
   */
  reload(options: { readonly acceptOlderStoreMap?: boolean } = {}): Promise<{ ok: boolean; error?: string; storeMap: ReloadResult }> {
    if (options.acceptOlderStoreMap === true) this.waitingAcceptsOlder = true;
    if (this.waitingReload !== null) return this.waitingReload;
    const run = this.reloads
      .then(() => new Promise<void>((resolve) => setImmediate(resolve)))
      .then(() => {
        this.waitingReload = null;
        const acceptOlder = this.waitingAcceptsOlder;
        this.waitingAcceptsOlder = false;
        return this.reloadNow(acceptOlder ? ACCEPT_OLDER_TRIGGER : 'signal');
      });
    this.waitingReload = run;
    this.reloads = run.catch(() => undefined);
    return run;
  }

  private reloads: Promise<unknown> = Promise.resolve();
  /** The reload requested and not started yet, which later requests join (see reload()). */
  private waitingReload: Promise<{ ok: boolean; error?: string; storeMap: ReloadResult }> | null = null;
  /** The waiting reload was asked to put an older LDAP store map in force (see reload()). */
  private waitingAcceptsOlder = false;

  /** Listeners of the config in force the last reload could not bind (readiness reports them, see readiness()). */
  private unboundByReload: ReadonlySet<string> = new Set();
  /** Listeners kept by the last reload whose new certificate files could not be used: they serve the ones they had (readiness reports them). */
  private certificatesNotReloaded: ReadonlySet<string> = new Set();

  /** `trigger`: the store map's, `signal` or ACCEPT_OLDER_TRIGGER (see reload()). */
  private async reloadNow(trigger: string): Promise<{ ok: boolean; error?: string; storeMap: ReloadResult }> {
    // A stopping server binds nothing again (a SIGHUP while it drains would reopen every listener).
    if (this.stopping) return this.refuseWhileStopping();
    const previous = this.config;
    let next: Config;
    // A changed directory section is built before anything changes: one that cannot be set up
    // (an unreadable ca_file) rejects the config whole, like a config that does not validate.
    let directory: Directory | undefined;
    // Or, when only how its servers are reached changed, an LDAP directory to put behind the caches in force.
    let directoryBehindCaches: LdapDirectory | undefined;
    let directoryChanges: DirectoryChange | undefined;
    // Likewise a changed store_map section: its new source is made first (an LDAP one reads its CA
    // file). And the store map must build with the new config (the backend profiles its stores name).
    let storeMapSource: StoreMapSource | undefined;
    // Or the source in force as the check read it: the reload puts that in force (holder.read()).
    let storeMapRead: SourceRead | undefined;
    // oauth2's verifier, its JWKS file read again (one that is no JWKS rejects the config).
    let oauth: OAuthVerifier | undefined;
    // A section changes with its settings, or with the content of the CA file it names.
    let caFiles: Record<CaSection, CaFileRead> | undefined;
    const changed = (section: 'storeMap' | 'directory' | 'throttle'): boolean =>
      JSON.stringify(next[section]) !== JSON.stringify(previous[section]) || (section !== 'throttle' && caFiles !== undefined && caFiles[section].state !== this.caFilesInForce[section]);
    try {
      next = loadConfig(previous.file);
      const unusable = await unusableSourceAddresses(configSourceAddresses(next));
      if (unusable.length > 0) throw new ConfigError(next.file, unusable);
      caFiles = readCaFiles(next);
      if (changed('storeMap')) {
        storeMapSource = createStoreMapSource(next.storeMap, caContent(caFiles.storeMap), this.log);
        // Its check read refuses a server behind the map in force, as the source in force does.
        storeMapSource.continueFrom?.(this.holder.source);
        await this.checkStoreMap(next, { source: storeMapSource });
      } else {
        storeMapRead = await this.untilStopped(this.holder.read());
        await this.checkStoreMap(next, { read: storeMapRead });
      }
      if (this.ownsDirectory && changed('directory')) {
        directoryChanges = directoryChange(previous.directory, next.directory, caFiles.directory.state !== this.caFilesInForce.directory);
        // Tried before anything is set up: a server refusing them would fail every login here.
        if (directoryChanges.changed.some((key) => DIRECTORY_KEYS_TRIED.has(key))) {
          await testDirectorySettings(next.file, next.directory, caContent(caFiles.directory), this.log, 'reload', (work) => this.untilStopped(work));
        }
        if (directoryChanges.behindCaches) directoryBehindCaches = new LdapDirectory(next.directory, this.log.child({ component: 'directory' }), this.metrics, caContent(caFiles.directory), true);
        else directory = createDirectory(next, this.log, this.metrics, caFiles.directory);
      }
      if (next.oauth2 !== undefined) oauth = OAuthVerifier.create(next.oauth2, this.log.child({ component: 'oauth' }), this.metrics, this.oauth);
    } catch (error) {
      oauth?.close();
      void storeMapSource?.close();
      void directoryBehindCaches?.close();
      // stop() gave up the store-map source's read (see untilStopped()): nothing was committed.
      if (this.stopping) return this.refuseWhileStopping();
      const message = error instanceof Error ? error.message : String(error);
      this.log.error({ event: 'config.rejected', file: previous.file, err: message }, 'config reload rejected; the running config stays in force');
      this.metrics.configReloaded('failure');
      return { ok: false, error: message, storeMap: await this.untilStopped(this.holder.reload(trigger, storeMapRead)).catch(() => this.storeMapWhileStopping()) };
    }
    if (this.stopping) {
      oauth?.close();
      void directory?.close();
      void directoryBehindCaches?.close();
      void storeMapSource?.close();
      return this.refuseWhileStopping();
    }
    // In force from here: listeners read their TLS policy from it, new logins everything else.
    this.config = next;
    this.oauth?.close();
    this.oauth = oauth;
    // A reload re-reads files: backend CA files too (certificates are re-read by the listeners).
    forgetBackendCaFiles();
    const problems: string[] = [];
    // A listener keeps its socket when the new config has one on the same address, whatever its
    // name now (a renamed listener must not be stopped as removed); the others are bound anew,
    // and those the new config no longer has stop accepting.
    const before = this.listeners.filter((l) => l.listening);
    const kept = new Set<Listener>();
    const unboundByReload = new Set<string>();
    const filesNotReloaded = new Set<string>();
    for (const [i, listenerConfig] of next.listeners.entries()) {
      const current = before.find((l) => !kept.has(l) && !needsRebind(l.config, listenerConfig));
      try {
        if (current !== undefined) {
          kept.add(current);
          current.reconfigure(listenerConfig);
          continue;
        }
        // Its address taken by listeners whose protocol or TLS mode changed, or whose addresses
        // it covers or shares on the same port (0.0.0.0 over 127.0.0.1 and 127.0.0.2, say): the
        // new one is made first (a certificate that cannot be used stops it here), then the old
        // ones let go of the port; if the new one cannot bind, they take the port back.
        const occupying = before.filter((l) => !kept.has(l) && l.config.port === listenerConfig.port && bindAddressesOverlap(l.config.host, listenerConfig.host));
        // They keep the port unless the new one takes it over.
        for (const l of occupying) kept.add(l);
        const fresh = this.createListener(listenerConfig);
        if (occupying.length === 0) {
          await this.startListener(fresh);
          continue;
        }
        for (const l of occupying) await l.stopAccepting();
        try {
          await this.startListener(fresh);
          for (const l of occupying) kept.delete(l);
        } catch (error) {
          // Not when stop() came meanwhile: it shut them, and they must not accept again.
          for (const l of occupying) if (!this.stopping) await l.listen().catch(() => undefined);
          throw error;
        }
      } catch (caught) {
        // A listener kept failed in reconfigure() alone: bound and serving, with the certificates
        // it had, not one the reload could not bind.
        (current !== undefined ? filesNotReloaded : unboundByReload).add(listenerConfig.name);
        const error = atListener(caught, i, listenerConfig);
        problems.push(error instanceof Error ? error.message : String(error));
      }
    }
    // A listener not put in force at its new address (a port in use, say): the one it replaces
    // goes on serving the address it served, unless a listener of the new config took it over.
    // After the loop: kept earlier, it would have held its address against such a listener.
    for (const listenerConfig of next.listeners.filter((c) => unboundByReload.has(c.name))) {
      const served = before.find((l) => !kept.has(l) && l.listening && l.config.name === listenerConfig.name) ?? replacedUnderDefaultName(listenerConfig, before.filter((l) => !kept.has(l) && l.listening), next);
      if (served !== undefined) kept.add(served);
    }
    for (const listener of before) if (!kept.has(listener)) await listener.stopAccepting();
    this.unboundByReload = unboundByReload;
    this.certificatesNotReloaded = filesNotReloaded;
    // Stopped listeners are let go of once their last session has ended.
    for (const listener of this.listeners) if (!listener.listening) listener.whenRetired(() => this.forgetListener(listener));
    this.metrics.listenersInForce(this.listeners.filter((l) => l.listening).map((l) => l.config.name));
    if (directory !== undefined || directoryBehindCaches !== undefined) {
      let replaced = this.directory;
      const kept: string[] = [];
      if (directoryBehindCaches !== undefined) {
        // The caches stay; the LDAP directory behind them is replaced (createDirectory() made
        // the one in force: an LdapDirectory, alone or behind a CachingDirectory).
        if (replaced instanceof CachingDirectory) {
          kept.push('auth');
          replaced = replaced.replaceInner(directoryBehindCaches);
        } else {
          this.directory = directoryBehindCaches;
        }
        if (directoryBehindCaches.takeEntries(replaced instanceof LdapDirectory ? replaced : null)) kept.push('entry');
      } else if (directory !== undefined) {
        this.directory = directory;
      }
      this.caFilesInForce.directory = caFiles!.directory.state;
      // Logins asking the old directory finish there: a search and a bind, each within its deadlines.
      const { connectTimeoutMs, operationTimeoutMs } = previous.directory;
      void replaced.close(2 * (connectTimeoutMs + operationTimeoutMs));
      this.log.info(
        { event: 'directory.reconfigured', changed: directoryChanges?.changed ?? [], kept },
        directoryBehindCaches !== undefined ? 'directory settings changed; its LDAP connections are set up anew behind the caches in force' : 'directory settings changed; the directory is set up anew with empty caches',
      );
    }
    if (storeMapSource !== undefined) {
      // The map in force stays until the new source gives a valid one (the reload at the end,
      // which the new source's watch follows).
      this.stopWatching();
      this.stopWatching = () => undefined;
      const replaced = await this.holder.replaceSource(storeMapSource);
      this.caFilesInForce.storeMap = caFiles!.storeMap.state;
      void replaced.close();
      this.log.info({ event: 'storemap.source_changed', source: storeMapSource.description }, 'store map source changed');
    }
    this.health.setTiming(next.health.intervalMs, next.health.timeoutMs);
    this.trusted = new CidrSet(next.trustedNetworks);
    setNat64Prefixes(next.nat64Prefixes);
    this.limiter.setLimits(next.connectionLimits);
    this.checkDescriptorLimit(next);
    this.logConfigWarnings(next);
    if (changed('throttle')) {
      // The counters and refusals in force stay (Throttle.reconfigure()): a limit tightened
      // during an attack must not give every guesser a fresh budget.
      const change = this.throttle.reconfigure(next.throttle);
      if (change.redis === 'connecting') this.metrics.throttleRedis(false);
      else if (change.redis === 'closed') this.metrics.throttleRedis(null);
      this.log.info({ event: 'throttle.reconfigured', ...change }, THROTTLE_CHANGE_TEXTS[change.counters]);
    }
    this.log.level = next.logLevel;
    if (this.httpFromConfig) {
      if (next.http && this.http) await this.http.rebind(next.http).catch((error: unknown) => problems.push(error instanceof Error ? error.message : String(error)));
      // Said, not passed over in silence: the operator would take the section's change as done.
      else if (next.http && !this.http) problems.push('the http section was added: the HTTP listener is started at the next restart');
      else if (!next.http && this.http) problems.push('the http section was removed: the HTTP listener stays until the next restart');
    }
    for (const p of problems) this.log.error({ event: 'config.partially_applied', err: p }, 'part of the new config could not be applied');
    this.metrics.configReloaded(problems.length === 0 ? 'success' : 'failure');
    this.log.info({ event: 'config.reloaded', file: next.file, listeners: next.listeners.length }, 'config reloaded');
    const storeMap = await this.untilStopped(this.holder.reload(trigger, storeMapRead)).catch(() => this.storeMapWhileStopping());
    // A new source is watched once it has been read. stop() may have run meanwhile: it closed
    // the holder's source; nothing is to be watched.
    if (storeMapSource !== undefined && !this.stopping) this.stopWatching = storeMapSource.watch(() => void this.holder.reload('change'), this.onSourceHealth);
    return { ok: problems.length === 0, ...(problems.length > 0 ? { error: problems.join('; ') } : {}), storeMap };
  }

  /**
   * Throws when the store map would not build with `next` (a store naming a backend profile it
   * drops, say): the store map the reload leaves in force, that is what the source (the new one,
   * or the one in force as `read` read it) gives now when it can be read, else the map in force.
   * Committed, such a config would have every later version of the map rejected, and failovers
   * written to the source but never put in force. The source in force is read as it is now, not
   * as its map in force was: a profile renamed in the config and the store map at once builds
   * with the new config only from the new map.
   */
  private async checkStoreMap(next: Config, from: { readonly source: StoreMapSource } | { readonly read: SourceRead }): Promise<void> {
    const source = 'source' in from ? from.source : undefined;
    const reading = source ?? this.holder.source;
    let doc: unknown;
    let readable = true;
    try {
      doc = 'read' in from ? from.read.document() : await this.untilStopped(from.source.load());
    } catch (error) {
      if (this.stopping) throw error;
      // A new (or set up anew) source that cannot be read for a reason waiting does not cure is
      // the config's fault, as check-config and serve take it: committed, it would hold the map
      // in force for ever (edits of the real file unseen, failovers written nowhere), and the
      // next start would fail.
      const lasting = source === undefined ? undefined : lastingSourceFailure(error);
      if (lasting !== undefined) {
        const key = next.storeMap.kind === 'file' ? 'store_map.file' : 'store_map.ldap';
        throw new MailfrontError('STOREMAP_SOURCE_UNUSABLE', 'config', `${next.file}: ${key}: the new store-map source cannot be read (${reading.description}): ${lasting}`, { cause: error });
      }
      // Unreadable now (LDAP down or timing out; the source in force, whatever the reason: the
      // config did not change it): the map in force stays until the source gives a valid one,
      // so it must build.
      readable = false;
    }
    let against = readable ? reading.description : 'the map in force';
    try {
      if (readable) {
        try {
          // The map built from the source in force is the one its reload puts in force, if `next` is in force by then.
          if ('read' in from) from.read.build(next);
          else buildStoreMap(doc, reading.description, 0, next);
          return;
        } catch (error) {
          // The source in force giving a map that builds with no config (one broken on its own)
          // is rejected by the reload whatever the config: the map in force stays, and must build.
          if (source !== undefined || buildsWith(doc, reading.description, this.config)) throw error;
          against = 'the map in force';
        }
      }
      this.holder.check(next);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      throw new MailfrontError('STOREMAP_CONFLICT', 'config', `${next.file}: the store map does not build with it (${against}): ${message}`, { cause: error });
    }
  }

  /** The store-map source's health was last reported as failing (logged once per outage). */
  private sourceFailing = false;

  /**
   * Makes the store-map source's health visible: a metric always, a log line when it starts
   * failing and when it recovers (an LDAP poll runs every few seconds; one line per outage).
   */
  private readonly onSourceHealth = (error: Error | null): void => {
    this.metrics.storeMapSourceHealth(error === null);
    const source = this.holder.source.description;
    if (error !== null && !this.sourceFailing) {
      this.sourceFailing = true;
      this.log.error({ event: 'storemap.source_failed', source, err: error.message }, 'the store-map source cannot be read or watched; the map in force stays');
    } else if (error === null && this.sourceFailing) {
      this.sourceFailing = false;
      this.log.info({ event: 'storemap.source_recovered', source }, 'the store-map source can be read again');
    }
  };

  private refuseWhileStopping(): { ok: false; error: string; storeMap: ReloadResult } {
    const error = 'the server is stopping';
    this.log.warn({ event: 'config.reload_refused', err: error }, 'config reload refused: the server is stopping');
    return { ok: false, error, storeMap: this.storeMapWhileStopping() };
  }

  /** What a reload reports of the store map when stop() came before the source answered it: the last outcome. */
  private storeMapWhileStopping(): ReloadResult {
    return this.holder.last ?? { ok: false, version: 0, changes: [], error: 'the server is stopping' };
  }

  /** Told by stop(): a reload's wait on the store-map source ends then (untilStopped()). */
  private readonly stopRequested = new Canceller();

  /**
   * `work`, or a rejection as soon as stop() is called: a reload waits on the store-map source
   * (an LDAP server that accepts and never answers: up to every URL's operation timeout), and a
   * stop must neither wait for it nor let the reload commit what it read meanwhile. The read
   * itself goes on unheard; stop() closes its source.
   */
  private untilStopped<T>(work: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const stopped = (): void => reject(new MailfrontError('SERVER_STOPPING', 'aborted', 'the server is stopping'));
      if (this.stopRequested.aborted) stopped();
      else this.stopRequested.addEventListener('abort', stopped);
      work.then(resolve, reject).finally(() => this.stopRequested.removeEventListener('abort', stopped));
    });
  }

  /** The HTTP address of metrics, health and the admin API, when it listens. */
  httpAddress(): { host: string; port: number } | undefined {
    return this.http?.address();
  }

  /** The directory's readiness check, for the directory in force (a reload may replace it). */
  private directoryCheck: { readonly directory: Directory; readonly check: SharedCheck<DirectoryHealth> } | undefined;
  /** What the directory's last readiness check found, for the directory it checked (mailfront_ready reads it). */
  private directoryLastHealth: { readonly directory: Directory; readonly health: DirectoryHealth } | undefined;

  /**
   * Whether the directory answers, and takes its settings, through a SharedCheck: each check is
   * a search on the directory servers the whole fleet shares, and /readyz is open to anyone who
   * reaches the HTTP listener. The other checks of readiness() cost nothing and are read afresh
   * for every request.
   */
  private directoryHealthNow(): Promise<DirectoryHealth> {
    const directory = this.directory;
    if (this.directoryCheck?.directory !== directory) {
      const check = new SharedCheck(async () => {
        const health = await directoryHealth(directory, AbortSignal.timeout(1_500)).catch((error: unknown): DirectoryHealth => ({ state: 'unreachable', detail: error instanceof Error ? error.message : String(error) }));
        this.directoryLastHealth = { directory, health };
        return health;
      });
      this.directoryCheck = { directory, check };
    }
    return this.directoryCheck.check.get();
  }

  /**
   * Ready: the listeners bound, a store map in force, not stopping, and no directory server
   * refusing the directory's own settings (the service bind, base_dn: this instance's config,
   * which waiting does not cure). Whether the directory answers is reported, not required: it is
   * shared by the fleet, and a 503 from every instance at once would turn its outage into refused
   * connections for everyone, cached logins included, where mailfront answers a temporary failure.
   * A listener a reload could not bind (a port in use) is reported too: the instance serves what
   * it served before, and a config pushed to a fleet must not take every instance out of service
   * for one new port (unless it serves none of a protocol: protocolsNotServed()); so is a
   * listener kept whose new certificate files could not be used (it serves the ones it had). `directory:
   * false` asks the directory nothing and goes by its last check (mailfront_ready at each scrape).
   */
  async readiness(options: { readonly directory?: boolean } = {}): Promise<Readiness> {
    const last = this.directoryLastHealth?.directory === this.directory ? this.directoryLastHealth.health : undefined;
    const health = options.directory === false ? last : await this.directoryHealthNow();
    const unbound = this.config.listeners.filter((c) => !this.listeners.some((l) => l.listening && l.config.name === c.name)).map((c) => c.name);
    // By the names of the config in force that the reload could not bind, listening or not: a
    // listener moved to a port in use keeps its name, and the old one of that name serves on.
    const byReload = this.config.listeners.filter((c) => this.unboundByReload.has(c.name)).map((c) => c.name);
    const lost = unbound.filter((name) => !this.unboundByReload.has(name));
    const bound = `${this.listeners.filter((l) => l.listening).length} bound`;
    const unserved = this.protocolsNotServed();
    return readinessOf([
      { name: 'listeners', ok: lost.length === 0 && unserved.length === 0, detail: [bound, ...(lost.length > 0 ? [`not listening: ${lost.join(', ')}`] : []), ...unserved.map((p) => `no ${p} listener bound`)].join('; ') },
      ...(byReload.length > 0 ? [{ name: 'listeners_not_bound_by_reload', ok: false, advisory: true, detail: byReload.join(', ') }] : []),
      ...(this.certificatesNotReloaded.size > 0 ? [{ name: 'listener_certificates_not_reloaded', ok: false, advisory: true, detail: [...this.certificatesNotReloaded].join(', ') }] : []),
      { name: 'store_map', ok: this.holder.loaded, detail: this.holder.loaded ? `version ${this.holder.current.version}` : 'not loaded' },
      ...(health === undefined ? [] : [directoryReadiness(health)]),
      { name: 'accepting', ok: !this.stopping, detail: this.stopping ? 'stopping' : 'accepting' },
    ]);
  }

  /**
   * The protocols of the config in force that no listener serves: a listener a reload could not
   * bind is no reason to be unready while the instance serves its protocol (the one it replaces,
   * another one), but with none left the balancer would send its clients to a closed port.
   */
  private protocolsNotServed(): string[] {
    const served = new Set(this.listeners.filter((l) => l.listening).map((l) => l.config.protocol));
    return [...new Set(this.config.listeners.map((c) => c.protocol))].filter((p) => !served.has(p));
  }

  private async startHttp(address: { host: string; port: number }): Promise<void> {
    const http = new HttpServer(address, {
      metrics: this.metrics,
      log: this.log,
      // /readyz's answers (nothing else asks this): a balancer gating on it has seen the instance ready once it said so.
      readiness: async () => {
        const readiness = await this.readiness();
        if (readiness.ready) this.saidReady = true;
        return readiness;
      },
    });
    const admin = createAdminHandler({
      token: () => this.config.admin.token,
      holder: this.holder,
      registry: this.registry,
      health: this.health,
      directory: () => this.directory,
      usernames: () => this.config.usernames,
      log: this.log,
      throttle: this.throttle,
      reload: (options) => this.reload(options),
    });
    http.route('*', '/api', async (req, res) => {
      if (!(await admin(req, res))) {
        res.writeHead(404);
        res.end();
      }
    });
    await http.listen();
    this.http = http;
  }

  /** Probes a slot with the first protocol it has a port for under its store's TLS mode (probeProtocol()). */
  private probe(slot: Slot, signal: Cancellation): Promise<void> {
    const store = this.holder.current.stores.get(slot.store);
    if (store === undefined) return Promise.reject(new Error('store left the map'));
    const protocol = probeProtocol(slot, store.backend);
    const { probeUser, probePassword } = this.config.health;
    const backend = backendFor(protocol, store.backend);
    const login =
      probeUser !== undefined && probePassword !== undefined
        ? ADAPTERS[protocol].createBackendLogin({ mode: 'replay', user: probeUser, password: probePassword, starttls: backend.tls === 'starttls', implicitTls: backend.tls === 'implicit' })
        : undefined;
    // A slot behind a PROXY-protocol port expects a header; LOCAL says "a check, no client".
    const header = backend.proxyProtocol === 'v2' ? encodeProxyV2Local() : backend.proxyProtocol === 'v1' ? Buffer.from('PROXY UNKNOWN\r\n') : null;
    return probeSlot(slot, protocol, backend, signal, login, header);
  }

  /**
   * Closes every session spliced to a demoted master, each at a random moment within the
   * spread window, so that thousands of clients do not reconnect in the same millisecond.
   */
  private drain(changes: readonly MasterChange[]): void {
    const spreadMs = this.config.failover.drainSpreadMs;
    for (const change of changes) {
      // A store that left the map had no failover: its sessions go, but counting one would
      // bring back the series its removal dropped, for a store no longer there.
      if (change.to !== null) this.metrics.failover(change.store);
      // Logins connecting or logging in to the old master go on with the new one at once.
      const logins = this.registry.masterMoved(change.store, change.from, change.protocols);
      const sessions = this.registry.splicedToMoved(change.store, change.from, change.protocols);
      const fields = { event: 'failover.drain', store: change.store, from: change.from, to: change.to, ...(change.protocols !== undefined ? { protocols: change.protocols } : {}), sessions: sessions.length, logins, spreadMs };
      // A store that left the map is no failover: a warning only when it had sessions or logins
      // (removing 200 empty stores made 200 "master changed" warnings).
      if (change.to === null && sessions.length === 0 && logins === 0) this.log.info(fields, 'store left the store map; nothing was on it');
      else this.log.warn(fields, change.to === null ? 'store left the store map; draining its sessions' : 'master changed; draining sessions on the old master');
      for (const session of sessions) {
        // Already on its way out: another change of the same store in the spread (A → B → A → B).
        if (this.draining.has(session)) continue;
        this.drainLater(session, spreadMs);
      }
    }
  }

  /**
   * Closes `session` at a random moment within `spreadMs`, unless by then it is on its store's
   * current master again (a failover undone: A → B → A) and the store is not in maintenance.
   */
  private drainLater(session: SessionEntry, spreadMs: number): void {
    this.draining.add(session, spreadMoment(spreadMs));
  }

  /** A drained session's moment has come: it is closed unless it is on its store's current master again, out of maintenance. */
  private drained(session: SessionEntry): void {
    if (this.onCurrentMaster(session) && this.holder.current.stores.get(session.store)?.maintenance === null) return;
    session.close('drained');
  }

  /**
   * A store went into maintenance: its logins under way (held while its master is down, say) are
   * refused at once, and its spliced sessions are closed over the spread window as a failover's
   * are, told the store's reason. One that came out of it is only logged: nothing to drain.
   */
  private drainMaintenance(changes: readonly MaintenanceChange[]): void {
    const spreadMs = this.config.failover.drainSpreadMs;
    for (const change of changes) {
      if (change.reason === null) {
        this.log.info({ event: 'storemap.maintenance', store: change.store, maintenance: false }, 'store out of maintenance; logins are routed to it again');
        continue;
      }
      const store = this.holder.current.stores.get(change.store);
      const slots = store === undefined ? [] : [...store.slots.keys()];
      // Told as a move off each slot: the login reads the map again, and is refused.
      const logins = slots.reduce((n, slot) => n + this.registry.masterMoved(change.store, slot), 0);
      const sessions = slots.flatMap((slot) => this.registry.splicedToMoved(change.store, slot));
      this.log.warn({ event: 'storemap.maintenance', store: change.store, maintenance: true, reason: change.reason, sessions: sessions.length, logins, spreadMs }, 'store in maintenance; its logins are refused and its sessions drained');
      for (const session of sessions) if (!this.draining.has(session)) this.drainLater(session, spreadMs);
    }
  }

  /** Whether `session` is spliced to the server its store's current master is now (for its protocol). */
  private onCurrentMaster(session: SessionEntry): boolean {
    const store = this.holder.current.stores.get(session.store);
    const master = store === undefined ? undefined : store.slots.get(store.currentMaster);
    return master !== undefined && sameServer(master, session.server, session.protocol);
  }

  /**
   * Answers /readyz with 503 at once; with an HTTP listener, keeps accepting and serving for
   * `unreadyDelayMs` (default: shutdown.unready_delay_ms) so that a balancer checking /readyz
   * takes the instance out before its ports close; then stops accepting, says BYE to sessions
   * before login, and gives spliced sessions up to `drainMs` (default: shutdown.drain_timeout_ms)
   * to end on their own before closing them.
   */
  stop(drainMs = this.config.shutdown.drainTimeoutMs, unreadyDelayMs = this.unreadyDelayMs()): Promise<void> {
    // One stop: a second call (a second SIGTERM, or SIGINT after SIGTERM) waits for the one under
    // way. It returned at once, and the CLI exited while spliced sessions drained: no BYE, no
    // session.finished, no server.stopped.
    this.stopped ??= this.stopNow(drainMs, unreadyDelayMs);
    return this.stopped;
  }

  /**
   * shutdown.unready_delay_ms when something can see readiness (an HTTP listener serves
   * /readyz) and /readyz has said ready (saidReady), else 0: without one, no balancer learns of
   * the stop from /readyz, and waiting would only keep the ports open longer.
   */
  private unreadyDelayMs(): number {
    return this.http === undefined || !this.saidReady ? 0 : this.config.shutdown.unreadyDelayMs;
  }

  /**
   * Whether /readyz has answered 200: until it has, no balancer gating on it sends this instance
   * clients, and a stop (one during start, say) has no one to wait for.
   */
  private saidReady = false;

  private stopped: Promise<void> | undefined;

  /** Set by endDrain(): the unready delay and the drain end without waiting for their time. */
  private drainEnded = false;
  private endDrainWait: () => void = () => undefined;

  /**
   * A repeated stop signal: the rest of the unready delay is skipped (the listeners close now)
   * and the drain of spliced sessions ends now, each told BYE as at the drain deadline; the stop
   * goes on as usual (its log lines, server.stopped). Logged each time.
   */
  endDrain(signal: string): void {
    const text = this.drainEnded ? 'stop signal repeated; the drain has already ended' : this.unready ? 'stop signal repeated; the listeners close now, before the end of the unready delay, and spliced sessions are told BYE' : 'stop signal repeated; spliced sessions are told BYE now';
    this.log.warn({ event: 'server.drain_ended', signal, sessions: this.registry.size }, text);
    this.drainEnded = true;
    this.endDrainWait();
  }

  /** Resolves at `until` (performance.now()), once no session is spliced, or at a repeated stop signal (endDrain()). */
  private async drainWait(until: number): Promise<void> {
    while (this.registry.size > 0 && performance.now() < until && !this.drainEnded) {
      await new Promise<void>((r) => {
        const timer = setTimeout(r, Math.min(100, Math.max(0, until - performance.now())));
        this.endDrainWait = () => {
          clearTimeout(timer);
          r();
        };
      });
    }
    this.endDrainWait = () => undefined;
  }

  /** True during the unready delay: /readyz answers 503 while the listeners still accept. */
  private unready = false;

  private async stopNow(drainMs: number, unreadyDelayMs: number): Promise<void> {
    this.stopping = true;
    // A reload under way gives up its wait on the store-map source, and commits nothing it had
    // not committed; a listener it binds meanwhile is shut at once (startListener()). It finishes
    // before the sources and the directory are closed; later ones are refused.
    this.stopRequested.abort();
    // /readyz answers 503 from now on, but the listeners go on accepting until the balancer has
    // seen it: closed at once, they refused (or reset, from the kernel's accept queue) the
    // connections a balancer sent in the seconds its checks took to mark the instance down
    // (77 of 155 logins failed behind HAProxy's inter 2s fall 2). Logins are served as usual.
    if (unreadyDelayMs > 0 && !this.drainEnded) {
      this.unready = true;
      this.log.info({ event: 'server.unready', delayMs: unreadyDelayMs, sessions: this.registry.size }, `stopping: /readyz answers 503; still accepting for ${unreadyDelayMs} ms, for balancers to take the instance out`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, unreadyDelayMs);
        this.endDrainWait = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.endDrainWait = () => undefined;
      this.unready = false;
    }
    // Accepting stops.
    await Promise.all(this.listeners.map((l) => l.shutDown()));
    await this.reloads;
    this.log.info({ event: 'server.stopping', sessions: this.registry.size, drainMs }, 'stopping');
    // The store-map source is still watched while sessions are spliced: a failover written meanwhile
    // (by another instance, an operator, ldapmodify) drains the demoted master's sessions within the
    // spread, as it would have before the stop, not at the drain's deadline (up to
    // shutdown.drain_timeout_ms later).
    this.health.stop();
    this.oauth?.close();
    const sessions = () => this.listeners.flatMap((l) => [...l.sessions]);
    for (const session of sessions()) session.shutdownIfNotSpliced();
    // The monotonic clock: a step of the wall clock (NTP) during the drain must neither keep
    // spliced sessions open past it (a step back: the stop never ended, and systemd killed the
    // process unlogged) nor cut them all at once (a step forward).
    const deadline = performance.now() + drainMs;
    await this.drainWait(deadline);
    // The sessions still spliced at the deadline (IDLE never ends on its own) are told BYE at
    // random moments over the next failover.drain_spread_ms, as a failover's are: told all at
    // once, ten thousand clients came back to the other instances (and their directory) in the
    // same millisecond. Each has had its drain_timeout_ms. A repeated stop signal tells the rest
    // BYE at once.
    const spreadMs = this.config.failover.drainSpreadMs;
    const told = new DrainSchedule<Session>((session) => session.shutdown());
    if (!this.drainEnded && spreadMs > 0 && this.registry.size > 0) {
      for (const session of sessions()) told.add(session, spreadMoment(spreadMs));
      await this.drainWait(performance.now() + spreadMs);
    }
    // The rest are told now (the spread's end, a repeated stop signal, or no spread), still a
    // batch a turn: in one turn, 30,000 held the loop some 3 s, the HTTP listener's too.
    told.clear();
    for (const session of sessions()) told.add(session, 0);
    await told.idle();
    // Handshakes still under way (one that finished during the drain was told BYE, see Listener.shutDown()).
    for (const listener of this.listeners) listener.closeHandshakes();
    // Two seconds to close, from the last BYE (the spread's end, or the drain's, whichever came first).
    const closedBy = performance.now() + STOP_CLOSE_MS;
    while (sessions().length > 0 && performance.now() < closedBy) await new Promise((r) => setTimeout(r, 20));
    this.stopWatching();
    this.draining.clear();
    await this.http?.close();
    await this.holder.source.close();
    await this.throttle.close();
    await this.directory.close();
    this.log.info({ event: 'server.stopped' }, 'stopped');
  }
}
