/**
 * Every Prometheus metric of mailfront, defined here and nowhere else, on a registry of its own
 * (never prom-client's global one, so tests and several instances in one process do not mix).
 * Base units (seconds, bytes), `_total` on counters, names prefixed `mailfront_`, and labels
 * bounded by config (store, slot, listener names) or by the fixed unions below. Users and IP
 * addresses never become labels: they go to the logs. This module measures nothing by itself
 * (besides the standard process metrics); the session, directory and backend code call it.
 */
import { performance } from 'node:perf_hooks';
import { readdirSync, statSync } from 'node:fs';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { FailureKind } from './errors.js';
import { logLoss } from './log.js';
import { CounterFamily, HistogramFamily } from './metric-families.js';
import type { PreauthCloseReason, ProtocolName } from './protocol/types.js';
import type { SpliceEndReason } from './proxy/splice.js';

/** The phases of a session (the same words as session.ts's SessionPhase). */
export type SessionPhaseLabel = 'greeting' | 'preauth' | 'authenticating' | 'backend-login' | 'spliced' | 'closing';

/** Why a session ended (the same words as session.ts's SessionEndReason). */
export type SessionEndReasonLabel = PreauthCloseReason | SpliceEndReason | 'client-closed-preauth' | 'client-error-preauth' | 'tls-failed';

/** How a login attempt ended: `success` or the failure kind that decided the answer. */
export type LoginResult = 'success' | FailureKind;

/** Why credentials were refused (only failures of kind `auth-failed`). */
export type AuthFailureReason = 'unknown-user' | 'wrong-password' | 'account-locked' | 'bind-refused' | 'invalid-username' | 'authzid-refused' | 'invalid-token' | 'other';

/** One LDAP request as the directory code sees it. */
export type LdapOperation = 'connect' | 'service-bind' | 'search' | 'user-bind';

/** How an LDAP request ended; a refused user bind is `invalid-credentials`, not an error. */
export type LdapResult = 'success' | 'invalid-credentials' | 'timeout' | 'error';

/** How a backend connect or login ended. */
export type BackendResult = 'success' | 'timeout' | 'refused' | 'in-use' | 'login-delay' | 'limit' | 'error' | 'aborted';

/** Which way proxied bytes went. */
export type ByteDirection = 'client-to-backend' | 'backend-to-client';

/** A warning of the directory's password policy on a login it let in: the password expires soon, or expired and a grace login was used. */
export type PasswordPolicyWarning = 'expiring' | 'grace';

/** The directory's caches: `auth`, successful logins by user and password; `entry`, a user's DN and store. */
export type DirectoryCache = 'auth' | 'entry';
const DIRECTORY_CACHES: readonly DirectoryCache[] = ['auth', 'entry'];

/** The OAuth identity provider's endpoints mailfront asks (oauth2): the JWKS, the OpenID configuration document, token introspection (RFC 7662). */
export type OAuthIdpEndpoint = 'jwks' | 'discovery' | 'introspection';
const OAUTH_IDP_ENDPOINTS: readonly OAuthIdpEndpoint[] = ['jwks', 'discovery', 'introspection'];

/**
 * How a request to the IdP ended: `ok`, an answer mailfront could use (keys, a document of the
 * configured issuer, an introspection verdict, active or not); no answer within the deadline
 * (`timeout`); no connection or one lost (`connection-error`: refused, reset, TLS, a name that
 * does not resolve); an answer other than 200 by its status class (`http-4xx`: a 401 for a wrong
 * client secret among them, `http-5xx`, `http-other`: no redirect is followed); a 200 mailfront
 * cannot use (`bad-answer`: too large, not JSON, no usable key, another issuer, no boolean active).
 */
export type OAuthIdpResult = 'ok' | 'timeout' | 'connection-error' | 'http-4xx' | 'http-5xx' | 'http-other' | 'bad-answer';
const OAUTH_IDP_RESULTS: readonly OAuthIdpResult[] = ['ok', 'timeout', 'connection-error', 'http-4xx', 'http-5xx', 'http-other', 'bad-answer'];
/**
 * Two introspection results that are mailfront's load, not the IdP's failure: `not-sent`, a login
 * mailfront did not send (introspection_timeout_ms passed while all of introspection_concurrency's
 * requests were taken, or 1,000 logins waited already); `timeout-queued`, a request sent with less
 * than half of introspection_timeout_ms left (the rest spent waiting for a free one) that expired.
 */
export type OAuthIntrospectionResult = OAuthIdpResult | 'timeout-queued' | 'not-sent';

/** A spliced session's byte counts and how much of them the counter holds already (a registry entry). */
export interface SplicedTraffic {
  readonly traffic: { readonly bytesFromClient: number; readonly bytesToClient: number };
  reportedFromClient: number;
  reportedToClient: number;
}

/** How a config or store-map (re)load ended. */
export type ReloadOutcome = 'success' | 'failure';

/**
 * What became of a PROXY protocol header: from a trusted balancer `accepted` or `local`, or
 * refused as `malformed`, or not (wholly) sent before its `timeout` or the client `closed`;
 * `untrusted`, a header sent by a peer outside the trusted networks (the connection is closed).
 */
export type ProxyHeaderResult = 'accepted' | 'local' | 'untrusted' | 'malformed' | 'timeout' | 'closed';

/**
 * Why an implicit-TLS handshake came to nothing: an `error` (a client that speaks no TLS or
 * offers nothing the policy accepts), the pre-auth deadline (`timeout`), or the client `closed`
 * the connection first.
 */
export type TlsHandshakeFailureReason = 'error' | 'timeout' | 'closed';

/**
 * Where a connection closed to make room at max_connections was: an implicit-TLS handshake
 * (`tls-handshake`), a session before login (`preauth`, a STARTTLS handshake included), or one
 * whose login waited on the throttle or its turn (`authenticating`: the directory not asked yet).
 */
export type EvictedPhase = 'tls-handshake' | 'preauth' | 'authenticating';
const EVICTED_PHASES: readonly EvictedPhase[] = ['tls-handshake', 'preauth', 'authenticating'];

/** The part of a store map the metrics need (StoreMap['stores'] fits it). */
export type StoreMapShape = ReadonlyMap<string, { readonly currentMaster: string; readonly preferredMaster: string; readonly slots: ReadonlyMap<string, unknown>; readonly maintenance?: string | null }>;


/** Tracks one session's phase and end; returned by `Metrics.sessionStarted`. */
export interface SessionMetrics {
  /** Moves the session to `phase` in `mailfront_sessions_active` ('closing' is ignored: `ended` records the phase before it). */
  phase(phase: SessionPhaseLabel): void;
  /** Ends the session once (later calls do nothing): active gauge, end counter and duration, labelled with the phase it was in. */
  ended(reason: SessionEndReasonLabel): void;
}

/** What the sessions of one protocol share: their open counts and the families their ends go to. */
interface SessionFamilies {
  readonly protocol: ProtocolName;
  readonly active: Record<SessionPhaseLabel, number>;
  readonly endedTotal: CounterFamily<'protocol' | 'phase' | 'reason'>;
  readonly duration: HistogramFamily<'protocol' | 'phase'>;
  readonly nowMs: () => number;
}

/** Adds what the sessions of `protocol` share to `all`, with no session open yet; returns it. */
function addProtocolSessions(all: Map<ProtocolName, SessionFamilies>, protocol: ProtocolName, endedTotal: SessionFamilies['endedTotal'], duration: SessionFamilies['duration'], nowMs: () => number): SessionFamilies {
  const active = { greeting: 0, preauth: 0, authenticating: 0, 'backend-login': 0, spliced: 0, closing: 0 };
  const added = { protocol, active, endedTotal, duration, nowMs };
  all.set(protocol, added);
  return added;
}

/** One session's tracker. It lives as long as its session, so it is four fields and no closures. */
class SessionTracker implements SessionMetrics {
  private current: SessionPhaseLabel = 'greeting';
  private done = false;

  constructor(
    private readonly shared: SessionFamilies,
    private readonly startedMs: number,
  ) {
    shared.active.greeting++;
  }

  phase(next: SessionPhaseLabel): void {
    if (this.done || next === this.current || next === 'closing') return;
    const active = this.shared.active;
    active[this.current]--;
    this.current = next;
    active[next]++;
  }

  ended(reason: SessionEndReasonLabel): void {
    if (this.done) return;
    this.done = true;
    const { protocol, active, endedTotal, duration, nowMs } = this.shared;
    const phase = this.current;
    active[phase]--;
    endedTotal.inc({ protocol, phase, reason });
    duration.observe({ protocol, phase }, Math.max(0, nowMs() - this.startedMs) / 1000);
  }
}

export interface MetricsOptions {
  /** Register the standard process_* and nodejs_* metrics (default true). */
  readonly processMetrics?: boolean;
  /** mailfront's version, for `mailfront_build_info`. */
  readonly version?: string;
  /** Protocols whose series start at 0 instead of appearing at first use (default imap, pop3). */
  readonly protocols?: readonly ProtocolName[];
  /** Monotonic clock in milliseconds (tests); default performance.now. */
  readonly nowMs?: () => number;
  /** Longest an exposition may take (default METRICS_RENDER_DEADLINE_MS; tests shorten it). */
  readonly renderDeadlineMs?: number;
}

/**
 * Longest a render of every metric may take. /metrics shares one render among the scrapes that
 * come while it is due or under way, and the next begins only once it has ended: a render that
 * never settled (a collect function waiting on something that never comes) would keep every
 * later scrape waiting for ever. Past this the scrape fails (HTTP 500) and the next scrape renders
 * anew. Prometheus gives a scrape 10 s by default.
 */
export const METRICS_RENDER_DEADLINE_MS = 10_000;

/** The phases a session spends time in ('closing' is the instant of teardown, reported through `ended`). */
const PHASES: readonly SessionPhaseLabel[] = ['greeting', 'preauth', 'authenticating', 'backend-login', 'spliced'];
const DIRECTIONS: readonly ByteDirection[] = ['client-to-backend', 'backend-to-client'];
const THROTTLE_REDIS_UP = 'mailfront_throttle_redis_up';
const READY = 'mailfront_ready';
/** Registered once main gives the connection limiter (connectionLimits()): before, a limit of 0 would be a lie. */
const CONNECTIONS_OPEN = 'mailfront_connections_open';
const CONNECTIONS_MAX = 'mailfront_connections_max';

/** LDAP answers in milliseconds when healthy; the top buckets catch the operation timeout (5 s). */
const LDAP_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Connects are sub-millisecond on a LAN; the default connect deadline is 5 s. */
const BACKEND_CONNECT_BUCKETS_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** A login dialogue is a few round trips plus the backend's auth; the default deadline is 15 s. */
const BACKEND_LOGIN_BUCKETS_SECONDS = [0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30];
/**
 * A warm login answers in milliseconds; a slow directory or backend in seconds; a login held for
 * an unreachable master up to failover.hold_ms (15 s by default), and one the pre-auth deadline
 * cuts short when that comes first; a refusal after session.auth_failure_delay_ms (2 s).
 */
const LOGIN_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30];
/** An IdP answers an introspection in milliseconds; oauth2.introspection_timeout_ms is 2 s by default, 30 s at most. */
const OAUTH_INTROSPECTION_BUCKETS_SECONDS = [0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Sessions last from a health check (ms) to a day of IDLE. */
const SESSION_BUCKETS_SECONDS = [0.01, 0.1, 1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600];

/**
 * prom-client default metrics left out. Its `_total` gauges, which promtool's lint rejects for
 * non-counters (`nodejs_active_requests{type}` carries the same numbers). And those whose every
 * scrape costs time in proportion to the connections open (/metrics needs no credentials): the
 * libuv handles and async resources by type, which list every socket and timer as objects or
 * strings (with 9,000 sessions they and process_open_fds made a scrape take 31 ms); and
 * prom-client's process_open_fds, which lists /proc/self/fd and which openFdCount() replaces.
 */
const DROPPED_DEFAULT_METRICS = [
  'nodejs_active_handles',
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources',
  'nodejs_active_resources_total',
  'process_open_fds',
];

/** Where the kernel cannot count them, /proc/self/fd is listed at most this often for process_open_fds. */
const OPEN_FDS_LISTING_INTERVAL_MS = 15_000;

/**
 * The process's open file descriptors, as prom-client's process_open_fds counts them, cheaply:
 * Linux 6.2 and later give the count as the size of /proc/self/fd, from the kernel's own table;
 * older kernels give 0 there, and the folder is then listed (one string per descriptor) at most
 * once per OPEN_FDS_LISTING_INTERVAL_MS. Undefined when /proc cannot be read.
 */
function openFdCount(nowMs: () => number): () => number | undefined {
  let listed: { readonly count: number; readonly atMs: number } | undefined;
  return () => {
    try {
      const { size } = statSync('/proc/self/fd');
      if (size > 0) return size;
      const now = nowMs();
      // Less one: the listing's own descriptor, closed by now.
      if (listed === undefined || now - listed.atMs >= OPEN_FDS_LISTING_INTERVAL_MS) listed = { count: readdirSync('/proc/self/fd').length - 1, atMs: now };
      return listed.count;
    } catch {
      return undefined;
    }
  };
}

/** Maps a MailfrontError code of kind `auth-failed` to its metric reason (the one place that does). */
export function authFailureReason(code: string): AuthFailureReason {
  switch (code) {
    case 'UNKNOWN_USER':
      return 'unknown-user';
    case 'WRONG_PASSWORD':
      return 'wrong-password';
    case 'ACCOUNT_LOCKED':
      return 'account-locked';
    case 'USER_BIND_REFUSED':
      return 'bind-refused';
    case 'INVALID_USERNAME':
      return 'invalid-username';
    case 'AUTHZID_REFUSED':
    case 'OAUTH_USER_MISMATCH':
      return 'authzid-refused';
    default:
      // A bearer token refused (auth/oauth.ts OAUTH_CODES: expired, wrong issuer, bad signature, …).
      return code.startsWith('OAUTH_') ? 'invalid-token' : 'other';
  }
}

/** Maps a backend failure's MailfrontError code and kind to its metric result (the one place that does). */
export function backendFailureResult(code: string, kind: FailureKind): BackendResult {
  if (kind === 'aborted') return 'aborted';
  if (kind === 'in-use') return 'in-use';
  if (kind === 'login-delay') return 'login-delay';
  // The backend's limit of the user's connections (BACKEND_USER_LIMIT): the user's, not the store's failure.
  if (kind === 'limit') return 'limit';
  if (code.endsWith('_TIMEOUT')) return 'timeout';
  if (code === 'BACKEND_REFUSED_LOGIN') return 'refused';
  return 'error';
}

/** All of mailfront's metrics on one registry; main creates one, tests create their own. */
export class Metrics {
  /** The registry `/metrics` serves. */
  readonly registry = new Registry();
  private readonly nowMs: () => number;
  private readonly renderDeadlineMs: number;
  /** Label sets set outside storeMapInForce, so that a new map can drop those of vanished slots and stores. */
  private readonly slotUpSeries = new Map<string, { store: string; slot: string }>();
  /** Stores with a failover count, so that one which left the map loses its series. */
  private readonly failoverStores = new Set<string>();
  /**
   * The stores of the map in force (null before the first). A backend connect or login that
   * ends after its store left the map (aborted by the drain) is timed but not counted by store:
   * it would bring back the series storeMapInForce dropped, for a store no longer there.
   */
  private storesInForce: ReadonlySet<string> | null = null;
  private readonly scrapeHooks: Array<() => void> = [];

  /** Client connections accepted, by protocol. */
  private readonly sessionsTotal: CounterFamily<'protocol'>;
  /**
   * What the sessions of each protocol share, among it their open counts by
   * phase, kept as plain numbers and copied into `mailfront_sessions_active` at scrape time: a
   * phase change costs an increment, not two label lookups (a session changes phase four times
   * on its way to the splice).
   */
  private readonly protocolSessions = new Map<ProtocolName, SessionFamilies>();
  /** Sessions ended, by protocol, the phase they were in and why they ended. */
  private readonly sessionsEndedTotal: CounterFamily<'protocol' | 'phase' | 'reason'>;
  /** Time from accept to close, by protocol and the phase the session ended in. */
  private readonly sessionDuration: HistogramFamily<'protocol' | 'phase'>;
  /** Login attempts, by protocol and result (`success` or the failure kind). */
  private readonly loginsTotal: CounterFamily<'protocol' | 'result'>;
  /** Master logins (a staff member into another user's mailbox: directory.master_user_filter), counted apart as well. */
  private readonly masterLoginsTotal: Counter<'protocol' | 'result'>;
  private readonly oauthLoginsTotal: Counter<'protocol' | 'mechanism' | 'result'>;
  private readonly loginDuration: HistogramFamily<'protocol' | 'result'>;
  /** Requests to the OAuth IdP (JWKS, discovery document, introspection), by endpoint and result. */
  private readonly oauthIdpRequestsTotal: Counter<'endpoint' | 'result'>;
  /** Time of an introspection request, from its sending (a free request had) to its answer or failure, by result. */
  private readonly oauthIntrospectionDuration: HistogramFamily<'result'>;
  /** Unix time of each endpoint's last `ok` answer. */
  private readonly oauthIdpLastSuccess: Gauge<'endpoint'>;
  /** Requests to each OAuth IdP endpoint that failed since its last ok answer (not-sent and timeout-queued left out): a dead IdP whatever oauth2.jwks_refresh_ms. */
  private readonly oauthIdpConsecutiveFailures: Gauge<'endpoint'>;
  /** Credentials refused, by reason (unknown user, wrong password …). */
  private readonly authFailuresTotal: Counter<'reason'>;
  /** Duration of LDAP requests, by operation and result. */
  private readonly ldapRequestDuration: HistogramFamily<'operation' | 'result'>;
  /**
   * Time to open a connection (TCP, or implicit TLS) to a slot, and of the backend login dialogue
   * after it, by result: every store together. By store too, each histogram was 17 series per
   * store and result: with 500 stores that had seen errors and timeouts, /metrics was 54,527
   * series and 4.6 MiB, and its render held every session up for about 200 ms per scrape. The
   * counters below keep the per-store outcomes at one series per store and result.
   */
  private readonly backendConnectDuration: HistogramFamily<'result'>;
  private readonly backendLoginDuration: HistogramFamily<'result'>;
  /** Connects to a store's slots, by store and result (the connect durations' counts, per store). */
  private readonly backendConnectsTotal: CounterFamily<'store' | 'result'>;
  /** Backend login dialogues on a store's slots, by store and result (the login durations' counts, per store). */
  private readonly backendLoginsTotal: CounterFamily<'store' | 'result'>;
  /** Bytes passed through spliced sessions, by direction. */
  private readonly proxiedBytesTotal: CounterFamily<'direction'>;
  /** Version of the store map in force. */
  private readonly storeMapVersion: Gauge;
  /** 1 if the last store-map load succeeded, 0 if it was rejected (the previous map stays in force). */
  private readonly storeMapLastLoadSuccess: Gauge;
  /** Unix time of the last store-map load attempt. */
  private readonly storeMapLastLoadTimestamp: Gauge;
  /** Store-map loads (start-up and reloads), by result. */
  private readonly storeMapLoadsTotal: Counter<'result'>;
  /** 1 while the store-map source can be read and watched (every LDAP poll says), 0 while it cannot. */
  private readonly storeMapSourceUp: Gauge;
  /** Unix time of the last good look at the store-map source (an LDAP poll, or the start of a file watch). */
  private readonly storeMapSourceLastSuccess: Gauge;
  /** 1 for the slot that is its store's current master, 0 for the others. */
  private readonly slotCurrentMaster: Gauge<'store' | 'slot'>;
  /** 1 when a store's current master is not its preferred master. */
  private readonly storeBackwards: Gauge<'store'>;
  private readonly storeMaintenance: Gauge<'store'>;
  /** 1 when the last health check of a slot succeeded, 0 when it failed. */
  private readonly slotUp: Gauge<'store' | 'slot'>;
  /** Changes of a store's current master, by store. */
  private readonly failoversTotal: Counter<'store'>;
  /** 1 while logins to a store's slots are held back (e.g. reconnects spread after a failover). */
  private readonly throttleRedisUp: Gauge<string>;
  private readonly throttleRefusalsTotal: Counter<'by'>;
  private readonly connectionsRefusedTotal: Counter<'limit'>;
  /** Connections not logged in closed to make room for new ones at max_connections, by where they were. */
  private readonly connectionsEvictedTotal: Counter<'phase'>;
  /** Config reloads (SIGHUP), by result. */
  private readonly configReloadsTotal: Counter<'result'>;
  /** 1 if the last config reload succeeded, 0 if it was rejected (the previous config stays in force) or applied in part. */
  private readonly configLastReloadSuccess: Gauge;
  /** PROXY protocol headers expected from trusted balancers or sent by other peers, by listener and result. */
  private readonly proxyHeadersTotal: CounterFamily<'listener' | 'result'>;
  /** Implicit-TLS handshakes that failed, before any session began, by listener and reason. */
  private readonly tlsHandshakeFailuresTotal: CounterFamily<'listener' | 'reason'>;
  private readonly tlsHandshakesTotal: CounterFamily<'listener' | 'version' | 'resumed'>;
  /** The notAfter of each client-facing certificate in force, by listener and certificate file. */
  private readonly tlsCertificateExpiry: Gauge<'listener' | 'certificate'>;
  /** The certificate files each listener's series are for, so that a listener's change or removal drops its old ones. */
  private readonly certificateSeries = new Map<string, readonly string[]>();
  /** Client addresses offered with IMAP ID before login, by whether they were honoured. */
  private readonly clientIdAddressesTotal: Counter<'result'>;
  /** Logins the directory let in with a password policy warning, by warning. */
  private readonly passwordPolicyWarningsTotal: Counter<'warning'>;
  /** Lookups in the directory's caches, by cache and result (one per login and cache it reaches). */
  private readonly directoryCacheLookupsTotal: CounterFamily<'cache' | 'result'>;
  /** 1 while /readyz answers 200, 0 while it answers 503; read at scrape time (registered once readiness() gives its source). */
  private readonly ready: Gauge;
  /** What /readyz answers, asked at each scrape for `mailfront_ready`. */
  private readySource: (() => Promise<boolean>) | undefined;
  /**
   * The client connections held and connection_limits.max_connections in force, read at each
   * scrape (registered once connectionLimits() gives their source: without one, a limit of 0
   * would be a lie to an alert).
   */
  private readonly connectionsOpen: Gauge;
  private readonly connectionsMax: Gauge;
  private connectionCounts: { readonly connections: number; readonly maxConnections: number } | undefined;
  /** Where `mailfront_directory_cache_entries` is read at scrape time (the directory in force). */
  private directoryCacheSizes: () => Partial<Record<DirectoryCache, number>> = () => ({});

  constructor(options: MetricsOptions = {}) {
    this.nowMs = options.nowMs ?? (() => performance.now());
    this.renderDeadlineMs = options.renderDeadlineMs ?? METRICS_RENDER_DEADLINE_MS;
    const registers = [this.registry];
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]): Counter<L> => new Counter({ name, help, labelNames, registers });
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[]): Gauge<L> => new Gauge({ name, help, labelNames, registers });
    // The families on every login's path are mailfront's own (see metric-families.ts); the rest are prom-client's.
    const hotCounter = <L extends string>(name: string, help: string, labelNames: readonly L[]): CounterFamily<L> => new CounterFamily(name, help, labelNames).registerOn(this.registry);
    const histogram = <L extends string>(name: string, help: string, labelNames: readonly L[], buckets: readonly number[]): HistogramFamily<L> => new HistogramFamily(name, help, labelNames, buckets).registerOn(this.registry);

    this.sessionsTotal = hotCounter('mailfront_sessions_total', 'Client connections accepted, by protocol.', ['protocol']);
    const sessionsActive = new Gauge({
      name: 'mailfront_sessions_active',
      help: 'Sessions open now, by protocol and phase.',
      labelNames: ['protocol', 'phase'] as const,
      registers,
      collect: () => {
        for (const { protocol, active } of this.protocolSessions.values()) {
          for (const phase of PHASES) sessionsActive.set({ protocol, phase }, active[phase]);
        }
      },
    });
    this.sessionsEndedTotal = hotCounter('mailfront_sessions_ended_total', 'Sessions ended, by protocol, phase at the end and reason.', ['protocol', 'phase', 'reason']);
    this.sessionDuration = histogram('mailfront_session_duration_seconds', 'Time from accept to close, by protocol and phase at the end.', ['protocol', 'phase'], SESSION_BUCKETS_SECONDS);
    this.loginsTotal = hotCounter('mailfront_logins_total', 'Login attempts, by protocol and result (success or the failure kind).', ['protocol', 'result']);
    this.loginDuration = histogram('mailfront_login_duration_seconds', 'Time from a login read to its answer sent (to its end, for a login whose client or session went first), by protocol and result as mailfront_logins_total counts it.', ['protocol', 'result'], LOGIN_BUCKETS_SECONDS);
    this.oauthLoginsTotal = counter('mailfront_oauth_logins_total', 'OAuth 2.0 bearer-token logins (SASL OAUTHBEARER, XOAUTH2), by protocol, mechanism and result as mailfront_logins_total counts them (auth-failed: a token refused, or its user unknown).', ['protocol', 'mechanism', 'result']);
    this.masterLoginsTotal = counter('mailfront_master_logins_total', 'Master logins (a staff member logging in to another user\'s mailbox with their own password), by protocol and result as mailfront_logins_total counts them (not-authorized: no master, or no such user).', ['protocol', 'result']);
    this.oauthIdpRequestsTotal = counter('mailfront_oauth_idp_requests_total', 'Requests to the OAuth identity provider (oauth2), by endpoint (jwks, discovery, introspection) and result (ok; timeout, connection-error, http-4xx, http-5xx, http-other, bad-answer: the IdP failing; introspection only, mailfront\'s queue: not-sent, a login failed without asking, every introspection_concurrency request taken until its deadline; timeout-queued, a request sent with less than half of introspection_timeout_ms left that expired).', ['endpoint', 'result']);
    this.oauthIntrospectionDuration = histogram('mailfront_oauth_introspection_duration_seconds', 'Time of a token introspection request to the OAuth IdP, from its sending to its answer or failure (the wait for a free request, oauth2.introspection_concurrency, left out), by result as mailfront_oauth_idp_requests_total counts it.', ['result'], OAUTH_INTROSPECTION_BUCKETS_SECONDS);
    this.oauthIdpConsecutiveFailures = gauge('mailfront_oauth_idp_consecutive_failures', 'Requests to each OAuth IdP endpoint (jwks, discovery, introspection) that failed in a row, since its last ok answer or the verifier\'s start (a reload starts again at 0); not-sent and timeout-queued introspections left out.', ['endpoint']);
    this.oauthIdpLastSuccess = gauge('mailfront_oauth_idp_last_success_timestamp_seconds', 'Unix time of the last ok answer of each OAuth IdP endpoint (jwks, discovery: the keys and document in use were fetched then or before; introspection), since start; absent before the first.', ['endpoint']);
    this.authFailuresTotal = counter('mailfront_auth_failures_total', 'Credentials refused, by reason.', ['reason']);
    this.ldapRequestDuration = histogram('mailfront_ldap_request_duration_seconds', 'Duration of LDAP requests, by operation and result.', ['operation', 'result'], LDAP_BUCKETS_SECONDS);
    this.backendConnectDuration = histogram('mailfront_backend_connect_duration_seconds', 'Time to connect to a slot, by result (every store together; mailfront_backend_connects_total counts them by store).', ['result'], BACKEND_CONNECT_BUCKETS_SECONDS);
    this.backendLoginDuration = histogram('mailfront_backend_login_duration_seconds', 'Time of the backend login dialogue, by result (every store together; mailfront_backend_logins_total counts them by store).', ['result'], BACKEND_LOGIN_BUCKETS_SECONDS);
    this.backendConnectsTotal = hotCounter('mailfront_backend_connects_total', 'Connects to a store\'s slots, by store and result.', ['store', 'result']);
    this.backendLoginsTotal = hotCounter('mailfront_backend_logins_total', 'Backend login dialogues on a store\'s slots, by store and result.', ['store', 'result']);
    this.proxiedBytesTotal = hotCounter('mailfront_proxied_bytes_total', 'Bytes passed through spliced sessions, by direction.', ['direction']);
    this.storeMapVersion = gauge('mailfront_store_map_version', 'Version of the store map in force.', []);
    this.storeMapLastLoadSuccess = gauge('mailfront_store_map_last_load_success', '1 if the last store-map load succeeded, 0 if it was rejected.', []);
    this.storeMapLastLoadTimestamp = gauge('mailfront_store_map_last_load_timestamp_seconds', 'Unix time of the last store-map load attempt.', []);
    this.storeMapLoadsTotal = counter('mailfront_store_map_loads_total', 'Store-map loads (start-up and reloads), by result.', ['result']);
    this.storeMapSourceUp = gauge('mailfront_store_map_source_up', '1 while the store-map source can be read and watched, 0 while it cannot (the map in force stays).', []);
    this.storeMapSourceLastSuccess = gauge('mailfront_store_map_source_last_success_timestamp_seconds', 'Unix time of the last good look at the store-map source (each LDAP poll; the start of a file watch; each read of a file that is not watched).', []);
    this.slotCurrentMaster = gauge('mailfront_slot_current_master', '1 for the slot that is its store\'s current master, 0 for the others.', ['store', 'slot']);
    this.storeBackwards = gauge('mailfront_store_backwards', '1 when a store\'s current master is not its preferred master.', ['store']);
    this.storeMaintenance = gauge('mailfront_store_maintenance', '1 while a store is in maintenance (its logins refused, its slots not probed: their mailfront_slot_up stays as last probed).', ['store']);
    this.slotUp = gauge('mailfront_slot_up', '1 when the last health check of a slot succeeded, 0 when it failed.', ['store', 'slot']);
    this.failoversTotal = counter('mailfront_failovers_total', 'Changes of a store\'s current master, by store.', ['store']);
    // Registered only while the throttle uses Redis (see throttleRedis()): a series that read 0
    // without Redis would look like an outage on a dashboard or to an alert.
    this.throttleRedisUp = new Gauge({ name: THROTTLE_REDIS_UP, help: '1 while auth-failure counters are shared through Redis, 0 while local counters stand in (present only while the throttle uses Redis).', registers: [] });
    this.throttleRefusalsTotal = counter('mailfront_throttle_refusals_total', 'Logins refused by auth-failure throttling, by what reached its limit (user or address).', ['by']);
    this.connectionsRefusedTotal = counter('mailfront_connections_refused_total', 'Connections or sessions refused by a connection limit, by limit (total, address, user).', ['limit']);
    this.connectionsEvictedTotal = counter('mailfront_connections_evicted_total', 'Connections not logged in closed to make room for new ones at connection_limits.max_connections (the oldest first), by phase (tls-handshake, preauth, authenticating).', ['phase']);
    // As process_open_fds and process_max_fds: an alert compares the two (MailfrontConnectionsNearLimit).
    this.connectionsOpen = new Gauge({
      name: CONNECTIONS_OPEN,
      help: 'Client connections held now, as connection_limits.max_connections counts them (PROXY headers read, TLS handshakes and sessions in every phase; trusted networks included).',
      registers: [],
      collect: () => {
        if (this.connectionCounts !== undefined) this.connectionsOpen.set(this.connectionCounts.connections);
      },
    });
    this.connectionsMax = new Gauge({
      name: CONNECTIONS_MAX,
      help: 'connection_limits.max_connections in force (a reload changes it): at it, a new connection closes the oldest one not logged in (mailfront_connections_evicted_total), or is refused when none can be (mailfront_connections_refused_total{limit="total"}).',
      registers: [],
      collect: () => {
        if (this.connectionCounts !== undefined) this.connectionsMax.set(this.connectionCounts.maxConnections);
      },
    });
    // Read from log.ts at each scrape: what stdout refused (the log is the audit trail).
    const logWriteErrors = new Counter({
      name: 'mailfront_log_write_errors_total',
      help: 'Errors writing log lines to stdout, by kind: closed (EPIPE, its reader gone: no line is written after it until a restart), failed (another error, ENOSPC or EIO: the lines are kept and written again, up to 16 MiB); said on stderr.',
      labelNames: ['kind'] as const,
      registers,
      collect: () => {
        logWriteErrors.reset();
        logWriteErrors.inc({ kind: 'closed' }, logLoss.writeErrors.closed);
        logWriteErrors.inc({ kind: 'failed' }, logLoss.writeErrors.failed);
      },
    });
    const logBytesDropped = new Counter({
      name: 'mailfront_log_bytes_dropped_total',
      help: 'Bytes of log lines dropped because stdout did not take them with 16 MiB pending (its reader stalled, or its writes fail); said on stderr at most once a minute.',
      registers,
      collect: () => {
        logBytesDropped.reset();
        logBytesDropped.inc(logLoss.bytesDropped);
      },
    });
    this.configReloadsTotal = counter('mailfront_config_reloads_total', 'Config reloads, by result.', ['result']);
    this.configLastReloadSuccess = gauge('mailfront_config_last_reload_success', '1 if the last config reload succeeded, 0 if it was rejected or applied in part.', []);
    this.proxyHeadersTotal = hotCounter('mailfront_proxy_headers_total', 'PROXY protocol headers, by listener and result (accepted, local, malformed, timeout, closed: from trusted balancers; untrusted: sent by another peer, connection closed; on an implicit-TLS listener such a header fails the TLS handshake instead).', ['listener', 'result']);
    this.tlsHandshakesTotal = hotCounter('mailfront_tls_handshakes_total', 'Client-facing TLS handshakes done (implicit TLS and STARTTLS), by listener, protocol version and whether the client resumed a session (resumed: true, with a ticket; false, a full handshake).', ['listener', 'version', 'resumed']);
    this.tlsHandshakeFailuresTotal = hotCounter('mailfront_tls_handshake_failures_total', 'Implicit-TLS handshakes that failed before a session began, by listener and reason (error, timeout, closed).', ['listener', 'reason']);
    this.tlsCertificateExpiry = gauge('mailfront_tls_certificate_expiry_timestamp_seconds', 'Unix time at which a client-facing certificate in force expires (its notAfter), by listener and certificate (its file).', ['listener', 'certificate']);
    this.clientIdAddressesTotal = counter('mailfront_client_id_addresses_total', 'Client addresses offered with IMAP ID before login, by whether they were honoured.', ['result']);
    this.passwordPolicyWarningsTotal = counter('mailfront_directory_password_warnings_total', 'User binds the directory took with a password policy warning (directory.password_policy), by warning: expiring (the password expires soon), grace (it expired, and a grace login was used).', ['warning']);
    this.directoryCacheLookupsTotal = hotCounter('mailfront_directory_cache_lookups_total', 'Lookups in the directory caches (auth: successful logins by user and password; entry: users\' DN and store), by cache and result (hit or miss).', ['cache', 'result']);
    const directoryCacheEntries = new Gauge({
      name: 'mailfront_directory_cache_entries',
      help: 'Entries held now by the directory caches (auth, entry); absent for a cache that is off.',
      labelNames: ['cache'] as const,
      registers,
      collect: () => {
        directoryCacheEntries.reset();
        const sizes = this.directoryCacheSizes();
        for (const cache of DIRECTORY_CACHES) {
          const size = sizes[cache];
          if (size !== undefined) directoryCacheEntries.set({ cache }, size);
        }
      },
    });
    // Registered only once readiness() says where readiness comes from: without one a label-less
    // gauge would read 0, not ready, where there is nothing to be ready.
    this.ready = new Gauge({
      name: READY,
      help: '1 while the instance is ready for traffic (/readyz answers 200), 0 while it is not (503); read at each scrape.',
      registers: [],
      collect: async () => {
        const source = this.readySource;
        if (source !== undefined) this.ready.set((await source().catch(() => false)) ? 1 : 0);
      },
    });
    const buildInfo = gauge('mailfront_build_info', 'Always 1; the labels name the running build.', ['version', 'nodejs_version']);
    buildInfo.set({ version: options.version ?? 'unknown', nodejs_version: process.versions.node }, 1);

    // Series that exist from the start read 0 instead of "no data" on dashboards and in rate().
    for (const protocol of options.protocols ?? ['imap', 'pop3']) {
      this.sessionsTotal.inc({ protocol }, 0);
      if (!this.protocolSessions.has(protocol)) addProtocolSessions(this.protocolSessions, protocol, this.sessionsEndedTotal, this.sessionDuration, this.nowMs);
      this.loginsTotal.inc({ protocol, result: 'success' }, 0);
      for (const result of ['success', 'not-authorized'] as const) this.masterLoginsTotal.inc({ protocol, result }, 0);
      this.loginDuration.declare({ protocol, result: 'success' });
    }
    for (const direction of DIRECTIONS) this.proxiedBytesTotal.inc({ direction }, 0);
    for (const phase of EVICTED_PHASES) this.connectionsEvictedTotal.inc({ phase }, 0);
    // Without oauth2 they stay 0: no request is no failure to alert on.
    for (const endpoint of OAUTH_IDP_ENDPOINTS) for (const result of OAUTH_IDP_RESULTS) this.oauthIdpRequestsTotal.inc({ endpoint, result }, 0);
    for (const result of ['timeout-queued', 'not-sent'] as const) this.oauthIdpRequestsTotal.inc({ endpoint: 'introspection', result }, 0);
    for (const endpoint of OAUTH_IDP_ENDPOINTS) this.oauthIdpConsecutiveFailures.set({ endpoint }, 0);
    this.oauthIntrospectionDuration.declare({ result: 'ok' });
    for (const warning of ['expiring', 'grace'] as const) this.passwordPolicyWarningsTotal.inc({ warning }, 0);
    for (const cache of DIRECTORY_CACHES) for (const result of ['hit', 'miss']) this.directoryCacheLookupsTotal.inc({ cache, result }, 0);
    this.configLastReloadSuccess.set(1);

    if (options.processMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry });
      for (const name of DROPPED_DEFAULT_METRICS) this.registry.removeSingleMetric(name);
      if (process.platform === 'linux') {
        const count = openFdCount(this.nowMs);
        const openFds = new Gauge({
          name: 'process_open_fds',
          help: 'Number of open file descriptors.',
          registers,
          collect: () => {
            const fds = count();
            if (fds !== undefined) openFds.set(fds);
          },
        });
      }
    }
  }

  /** Counts an accepted connection and returns the tracker the session reports its phases and end to. */
  sessionStarted(protocol: ProtocolName): SessionMetrics {
    this.sessionsTotal.inc({ protocol });
    const shared = this.protocolSessions.get(protocol) ?? addProtocolSessions(this.protocolSessions, protocol, this.sessionsEndedTotal, this.sessionDuration, this.nowMs);
    return new SessionTracker(shared, this.nowMs());
  }

  /** Counts a login attempt's outcome and records how long it took, in seconds (one label set for both). */
  loginResult(protocol: ProtocolName, result: LoginResult, seconds: number): void {
    const labels = { protocol, result };
    this.loginsTotal.inc(labels);
    this.loginDuration.observe(labels, seconds);
  }

  /** Counts a master login's outcome (it is counted by loginResult() as well). */
  masterLogin(protocol: ProtocolName, result: LoginResult): void {
    this.masterLoginsTotal.inc({ protocol, result });
  }

  /** Counts a bearer-token login's outcome (it is counted by loginResult() as well). */
  oauthLogin(protocol: ProtocolName, mechanism: 'OAUTHBEARER' | 'XOAUTH2', result: LoginResult): void {
    this.oauthLoginsTotal.inc({ protocol, mechanism, result });
  }

  /** Counts a fetch of the IdP's keys (oauth2.jwks_url or the document's jwks_uri) or of its OpenID configuration document. */
  oauthIdpFetch(endpoint: 'jwks' | 'discovery', result: OAuthIdpResult): void {
    this.oauthIdpRequestsTotal.inc({ endpoint, result });
    this.#idpAnswered(endpoint, result);
  }

  /** Counts a token introspection request and records how long it took, in seconds (timeout-queued: not the IdP's failure, so not one in a row either). */
  oauthIntrospection(result: Exclude<OAuthIntrospectionResult, 'not-sent'>, seconds: number): void {
    this.oauthIdpRequestsTotal.inc({ endpoint: 'introspection', result });
    this.oauthIntrospectionDuration.observe({ result }, seconds);
    if (result !== 'timeout-queued') this.#idpAnswered('introspection', result);
  }

  /** The verifier stopped (a reload, oauth2 removed, shutdown): its failures in a row are no longer anyone's, and would keep an alert firing without oauth2. */
  oauthIdpStopped(): void {
    for (const endpoint of OAUTH_IDP_ENDPOINTS) this.oauthIdpConsecutiveFailures.set({ endpoint }, 0);
  }

  /** An answer of `endpoint`, or a request's failure: its last success, its failures in a row. */
  #idpAnswered(endpoint: OAuthIdpEndpoint, result: OAuthIdpResult): void {
    if (result === 'ok') {
      this.oauthIdpLastSuccess.set({ endpoint }, Date.now() / 1000);
      this.oauthIdpConsecutiveFailures.set({ endpoint }, 0);
    } else this.oauthIdpConsecutiveFailures.inc({ endpoint });
  }

  /** Counts an introspection a login needed and mailfront did not send (OAuthIntrospectionResult's not-sent): no request, no duration. */
  oauthIntrospectionNotSent(): void {
    this.oauthIdpRequestsTotal.inc({ endpoint: 'introspection', result: 'not-sent' });
  }

  /** Counts refused credentials (see `authFailureReason` for error codes). */
  authFailure(reason: AuthFailureReason): void {
    this.authFailuresTotal.inc({ reason });
  }

  /** Records one LDAP request. */
  ldapRequest(operation: LdapOperation, result: LdapResult, seconds: number): void {
    this.ldapRequestDuration.observe({ operation, result }, seconds);
  }

  /** Records one connect to a slot of `store` (counted by store only while the store is in the map). */
  backendConnect(store: string, result: BackendResult, seconds: number): void {
    this.backendConnectDuration.observe({ result }, seconds);
    if (this.storesInForce?.has(store) !== false) this.backendConnectsTotal.inc({ store, result });
  }

  /** Records one backend login dialogue on a slot of `store` (counted by store only while the store is in the map). */
  backendLogin(store: string, result: BackendResult, seconds: number): void {
    this.backendLoginDuration.observe({ result }, seconds);
    if (this.storesInForce?.has(store) !== false) this.backendLoginsTotal.inc({ store, result });
  }

  /** Adds spliced bytes in one direction. */
  bytesProxied(direction: ByteDirection, bytes: number): void {
    if (bytes > 0) this.proxiedBytesTotal.inc({ direction }, bytes);
  }

  /**
   * Adds what a spliced session relayed since its last report to mailfront_proxied_bytes_total.
   * Called for every live session before each scrape and once more when a session ends, so that
   * the counter follows long sessions (IDLE) instead of jumping when they end.
   */
  splicedTraffic(session: SplicedTraffic): void {
    const { bytesFromClient, bytesToClient } = session.traffic;
    this.bytesProxied('client-to-backend', bytesFromClient - session.reportedFromClient);
    this.bytesProxied('backend-to-client', bytesToClient - session.reportedToClient);
    session.reportedFromClient = bytesFromClient;
    session.reportedToClient = bytesToClient;
  }

  /** Runs `hook` at the start of every scrape (exposition), to bring counters kept elsewhere up to date. */
  beforeScrape(hook: () => void): void {
    this.scrapeHooks.push(hook);
  }

  /**
   * A store map is in force (loaded, or the map in force built again with a reloaded config):
   * version, per-store and per-slot gauges, and each store's failover count (0 until its first);
   * series of stores and slots it no longer has are dropped. Whether the source's last load succeeded is storeMapLoaded's and storeMapRejected's.
   */
  storeMapInForce(version: number, stores: StoreMapShape): void {
    this.storeMapVersion.set(version);
    const slotKeys = new Set<string>();
    this.slotCurrentMaster.reset();
    this.storeBackwards.reset();
    this.storeMaintenance.reset();
    for (const [storeName, store] of stores) {
      // A 0 before the store's first failover: born at 1, the series would lose that change to
      // increase(), which reads three changes in an hour as about two.
      this.failoversTotal.inc({ store: storeName }, 0);
      this.failoverStores.add(storeName);
      this.storeBackwards.set({ store: storeName }, store.currentMaster === store.preferredMaster ? 0 : 1);
      this.storeMaintenance.set({ store: storeName }, store.maintenance === undefined || store.maintenance === null ? 0 : 1);
      for (const slotName of store.slots.keys()) {
        slotKeys.add(`${storeName}\0${slotName}`);
        this.slotCurrentMaster.set({ store: storeName, slot: slotName }, slotName === store.currentMaster ? 1 : 0);
      }
    }
    for (const [key, labels] of this.slotUpSeries) {
      if (!slotKeys.has(key)) {
        this.slotUp.remove(labels);
        this.slotUpSeries.delete(key);
      }
    }
    // A store that left the map keeps no series: the label sets stay as many as the stores.
    this.storesInForce = new Set(stores.keys());
    const known = (store: string): boolean => stores.has(store);
    this.backendConnectsTotal.retain('store', known);
    this.backendLoginsTotal.retain('store', known);
    for (const store of this.failoverStores) {
      if (!known(store)) {
        this.failoversTotal.remove({ store });
        this.failoverStores.delete(store);
      }
    }
  }

  /** Whether the store-map source could be read or watched just now. */
  storeMapSourceHealth(up: boolean): void {
    this.storeMapSourceUp.set(up ? 1 : 0);
    if (up) this.storeMapSourceLastSuccess.set(Date.now() / 1000);
  }

  /** A store-map load succeeded, whether or not it changed the map in force. */
  storeMapLoaded(): void {
    this.storeMapLoadsTotal.inc({ result: 'success' });
    this.storeMapLastLoadSuccess.set(1);
    this.storeMapLastLoadTimestamp.set(Date.now() / 1000);
  }

  /** A store-map load was rejected; the previous map stays in force. */
  storeMapRejected(): void {
    this.storeMapLoadsTotal.inc({ result: 'failure' });
    this.storeMapLastLoadSuccess.set(0);
    this.storeMapLastLoadTimestamp.set(Date.now() / 1000);
  }

  /** Records a slot health check. */
  slotHealth(store: string, slot: string, up: boolean): void {
    this.slotUpSeries.set(`${store}\0${slot}`, { store, slot });
    this.slotUp.set({ store, slot }, up ? 1 : 0);
  }

  /** Health probes were turned off: every slot's result is dropped (one no probe renews would stand for good). */
  slotHealthCleared(): void {
    for (const labels of this.slotUpSeries.values()) this.slotUp.remove(labels);
    this.slotUpSeries.clear();
  }

  /** Counts a change of `store`'s current master. */
  failover(store: string): void {
    this.failoversTotal.inc({ store });
    this.failoverStores.add(store);
  }

  /** Whether throttle counters are shared through Redis now (false: local fallback); null when the throttle does not use Redis (no series). */
  throttleRedis(up: boolean | null): void {
    const registered = this.registry.getSingleMetric(THROTTLE_REDIS_UP) !== undefined;
    if (up === null) {
      if (registered) this.registry.removeSingleMetric(THROTTLE_REDIS_UP);
      return;
    }
    if (!registered) this.registry.registerMetric(this.throttleRedisUp);
    this.throttleRedisUp.set(up ? 1 : 0);
  }

  /** Counts a login refused by the throttle. */
  throttleRefusal(by: 'user' | 'address'): void {
    this.throttleRefusalsTotal.inc({ by });
  }

  /** Counts a connection (or, for 'user', a login) refused by a connection limit. */
  connectionRefused(limit: 'total' | 'address' | 'user'): void {
    this.connectionsRefusedTotal.inc({ limit });
  }

  /** Counts a connection not logged in closed to make room for a new one at max_connections. */
  connectionEvicted(phase: EvictedPhase): void {
    this.connectionsEvictedTotal.inc({ phase });
  }

  /** Counts a config reload's outcome. */
  configReloaded(result: ReloadOutcome): void {
    this.configReloadsTotal.inc({ result });
    this.configLastReloadSuccess.set(result === 'success' ? 1 : 0);
  }

  /** The listeners in force after a reload: the series of listeners it removed or renamed are dropped. */
  listenersInForce(names: readonly string[]): void {
    this.proxyHeadersTotal.retain('listener', (name) => names.includes(name));
    this.tlsHandshakeFailuresTotal.retain('listener', (name) => names.includes(name));
    this.tlsHandshakesTotal.retain('listener', (name) => names.includes(name));
    for (const listener of [...this.certificateSeries.keys()]) if (!names.includes(listener)) this.listenerCertificates(listener, []);
  }

  /** The certificates `listener` serves from now on (none: its series are dropped), each by its file and notAfter. */
  listenerCertificates(listener: string, certificates: ReadonlyArray<{ readonly file: string; readonly validTo: Date }>): void {
    const files = certificates.map((c) => c.file);
    for (const file of this.certificateSeries.get(listener) ?? []) if (!files.includes(file)) this.tlsCertificateExpiry.remove({ listener, certificate: file });
    for (const { file, validTo } of certificates) this.tlsCertificateExpiry.set({ listener, certificate: file }, validTo.getTime() / 1000);
    if (files.length > 0) this.certificateSeries.set(listener, files);
    else this.certificateSeries.delete(listener);
  }

  /** Counts what became of a PROXY protocol header (one a trusted balancer owed included, when it sent none). */
  proxyHeader(listener: string, result: ProxyHeaderResult): void {
    this.proxyHeadersTotal.inc({ listener, result });
  }

  /** Counts a TLS handshake done with a client on `listener`: its version (TLSSocket.getProtocol()) and whether it resumed a session. */
  tlsHandshake(listener: string, version: string | null, resumed: boolean): void {
    this.tlsHandshakesTotal.inc({ listener, version: version ?? 'unknown', resumed: resumed ? 'true' : 'false' });
  }

  /** Counts an implicit-TLS handshake that failed on `listener` (no session began). */
  tlsHandshakeFailure(listener: string, reason: TlsHandshakeFailureReason): void {
    this.tlsHandshakeFailuresTotal.inc({ listener, reason });
  }

  /** Counts a client address offered with IMAP ID before login (honoured only from trusted networks). */
  clientIdAddress(honoured: boolean): void {
    this.clientIdAddressesTotal.inc({ result: honoured ? 'honoured' : 'ignored' });
  }

  /** Counts a user bind the directory took with a password policy warning. */
  passwordPolicyWarning(warning: PasswordPolicyWarning): void {
    this.passwordPolicyWarningsTotal.inc({ warning });
  }

  /** Counts a lookup in one of the directory's caches. */
  directoryCacheLookup(cache: DirectoryCache, hit: boolean): void {
    this.directoryCacheLookupsTotal.inc({ cache, result: hit ? 'hit' : 'miss' });
  }

  /**
   * Where `mailfront_connections_open` and `mailfront_connections_max` are read at each scrape:
   * the connection limiter, whose limits a reload replaces. Registers them, once.
   */
  connectionLimits(source: { readonly connections: number; readonly maxConnections: number }): void {
    if (this.connectionCounts === undefined) {
      this.registry.registerMetric(this.connectionsOpen);
      this.registry.registerMetric(this.connectionsMax);
    }
    this.connectionCounts = source;
  }

  /** Where the directory caches' sizes are read at each scrape (the directory in force, which a reload may replace). */
  directoryCacheEntries(sizes: () => Partial<Record<DirectoryCache, number>>): void {
    this.directoryCacheSizes = sizes;
  }

  /**
   * Where `mailfront_ready` is read at each scrape: the readiness /readyz answers with (its
   * `ready`; a readiness that throws is not ready, as /readyz then answers 503). No timer: the
   * value is as fresh as the scrape.
   */
  readiness(source: () => Promise<boolean>): void {
    this.readySource = source;
    if (this.registry.getSingleMetric(READY) === undefined) this.registry.registerMetric(this.ready);
  }

  /** The text exposition of every metric, and its content type; rejects past the render deadline (METRICS_RENDER_DEADLINE_MS). */
  async exposition(): Promise<{ contentType: string; body: string }> {
    for (const hook of this.scrapeHooks) hook();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      // Not holding up a stop.
      timer = setTimeout(() => reject(new Error(`the metrics were not rendered within ${this.renderDeadlineMs} ms`)), this.renderDeadlineMs).unref();
    });
    try {
      return { contentType: this.registry.contentType, body: await Promise.race([this.registry.metrics(), deadline]) };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Names of every metric family mailfront can expose, those registered only at times included (for consistency checks such as the dashboard's). */
  metricNames(): string[] {
    const names = this.registry.getMetricsAsArray().map((m) => m.name);
    return [...names, ...[THROTTLE_REDIS_UP, READY, CONNECTIONS_OPEN, CONNECTIONS_MAX].filter((name) => !names.includes(name))];
  }
}
