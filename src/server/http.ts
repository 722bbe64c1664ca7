/**
 * The operations HTTP listener: GET /metrics (Prometheus text exposition, behind a bearer token
 * when http.metrics_token is set), /healthz (the process is alive), /readyz (ready for traffic,
 * from a readiness callback), and routes other modules add by prefix (the admin API). Bound to
 * loopback unless configured otherwise. Owns its server and its connections; it decides nothing
 * about readiness itself and never touches sessions.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import type { Socket } from 'node:net';
import { MailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { IssueList, at, int, optStr, readSection, str } from '../config/validate.js';
import { CLOSE_GRACE_MS, REFUSED_LOG_INTERVAL_MS } from '../limits.js';

/** Where the HTTP listener binds, and what /metrics asks of a scrape. */
export interface HttpConfig {
  readonly host: string;
  readonly port: number;
  /** The bearer token a scrape of /metrics must send (`http.metrics_token`); /metrics is open without it. */
  readonly metricsToken?: string;
}

/**
 * Keys of the `http` config section (`metrics_token_file` is read into `metrics_token` by the
 * config loader before the section is read).
 */
export const HTTP_KEYS = ['host', 'port', 'metrics_token'] as const;

/** The shortest bearer token the config takes (admin.token, http.metrics_token). */
export const MIN_BEARER_TOKEN_CHARS = 16;

/**
 * What a bearer token of the config (admin.token, http.metrics_token) must be: what an
 * `Authorization: Bearer` header carries as written, from any client. Whitespace around a
 * header's value is stripped on its way (node drops it before bearerCheck() sees it; Prometheus's
 * credentials_file is trimmed), so a token file holding `abc…z ` passed every check and then
 * every request got 401; a character beyond ASCII is sent as the client encodes it (curl sends
 * UTF-8, node reads latin-1), so a latin-1 one matched from mailfront's CLI only. Refused, never
 * trimmed: a token other than the one the operator wrote would be worse. Any visible ASCII is
 * taken, and spaces between (RFC 6750's b64token is narrower, but punctuation and inner spaces
 * work from curl and always were taken: refused now, a token that worked would stop a restart).
 */
export const BEARER_TOKEN_EXPECTED = 'a token of visible ASCII characters (0x21 to 0x7E: letters, digits and punctuation) and spaces between them, as an Authorization: Bearer header carries it unchanged: no whitespace at its start or end (stripped around a header\'s value on its way), no tab, line break or other control, and no character beyond ASCII (sent as each client encodes it)';

/**
 * Why `token` cannot be a bearer token (BEARER_TOKEN_EXPECTED), in words that never show it; null
 * when it can. The CLI checks a token given by --token or MAILFRONT_ADMIN_TOKEN with it too.
 */
export function bearerTokenCharsProblem(token: string): string | null {
  const chars = Array.from(token);
  // A space between visible characters reaches mailfront as it was written, and always did.
  const lastNotSpace = chars.findLastIndex((c) => c !== ' ');
  const outside = (c: string, i: number): boolean => {
    const code = c.codePointAt(0) ?? 0;
    return code === 0x20 ? i === 0 || i > lastNotSpace : code < 0x21 || code > 0x7e;
  };
  const first = chars.findIndex(outside);
  if (first < 0) return null;
  const c = chars[first]!;
  const code = c.codePointAt(0) ?? 0;
  const what =
    c === ' ' ? 'a space'
    : c === '\t' ? 'a tab'
    : c === '\r' || c === '\n' ? 'a line break'
    : c === '\ufeff' ? 'a byte order mark (U+FEFF, an editor\'s)'
    : /\s/u.test(c) ? 'a whitespace character'
    : code > 0x7f ? 'a character beyond ASCII'
    : 'a control character';
  const where = first === chars.length - 1 ? 'at its end' : first === 0 ? 'at its start' : `at character ${first + 1}`;
  const more = chars.filter(outside).length - 1;
  return `a string of ${chars.length} characters with ${what} ${where}${more > 0 ? `, and ${more} more such character${more === 1 ? '' : 's'}` : ''}`;
}

/**
 * Checks a bearer token read from the config at `path` (a key, or its `_file`: the loader tells
 * the issue by the key written): its characters (bearerTokenCharsProblem()), then its length.
 * Never shows the token; '' is left to the string's own check.
 */
export function checkBearerToken(token: string | undefined, path: string, issues: IssueList): void {
  if (token === undefined || token === '') return;
  const problem = bearerTokenCharsProblem(token);
  if (problem !== null) issues.addFinding(path, BEARER_TOKEN_EXPECTED, problem);
  // Its length as a finding: issues.add would say only "a string (not shown: a secret)".
  else if (token.length < MIN_BEARER_TOKEN_CHARS) issues.addFinding(path, `a token of at least ${MIN_BEARER_TOKEN_CHARS} characters`, `a string of ${token.length} characters`);
}

/** Default bind address: metrics and the admin API are not for the Internet. */
export const DEFAULT_HTTP_HOST = '127.0.0.1';
/** Default port, in the 9100–9999 range where Prometheus exporters conventionally listen. */
export const DEFAULT_HTTP_PORT = 9143;

/** A bound on how long /readyz waits for the readiness callback (a load balancer's probe times out too). */
export const READINESS_TIMEOUT_MS = 2_000;
/** Time allowed for a request's headers: nothing served here needs longer, and slowloris needs more. */
const HEADERS_TIMEOUT_MS = 10_000;
/** Time allowed for a whole request, body included (admin requests are small). */
const REQUEST_TIMEOUT_MS = 30_000;
/**
 * How often node checks those two deadlines (its default, 30 s, would let a request that sends
 * its headers slowly hold its connection up to 30 s past HEADERS_TIMEOUT_MS).
 */
const CONNECTIONS_CHECKING_INTERVAL_MS = 1_000;
/**
 * Connections the HTTP listener holds at once, in all and from one address. Its clients are few
 * (a Prometheus or two, a balancer's probes, the admin CLI, each with a connection or two), and
 * every connection holds a file descriptor the mail listeners share: without a bound, idle
 * connections to it could take them all (1,000 under a low fd limit had new IMAP clients
 * accepted and closed at once). A connection over either bound is closed at once, unanswered.
 */
export const HTTP_MAX_CONNECTIONS = 256;
export const HTTP_MAX_CONNECTIONS_PER_ADDRESS = 32;
/**
 * /metrics may need no credentials (without http.metrics_token), and a render costs time in
 * proportion to the sessions open (each live session's bytes are read): scrapes that come while
 * one is under way, or too soon after it, wait for the next render and share it. "Too soon" is
 * in proportion to what the last render cost, so that renders take at most about a tenth of the
 * process's time whatever the number of scrapers (9,000 sessions: a render of about 30 ms, then
 * 0.3 s apart), and at most a second: with few sessions a scrape waits a few milliseconds at
 * most. Prometheus scrapes every 15 s or so, and is never kept waiting by itself.
 */
const METRICS_RENDER_SPACING = 9;
const METRICS_RENDER_INTERVAL_MAX_MS = 1_000;

/**
 * How long the answer of a costly readiness check (SharedCheck) serves later /readyz requests,
 * counted from when the check began. A load balancer probes every few seconds; a client that
 * floods /readyz gets the same answer for a second instead of a check per request.
 */
export const READINESS_CHECK_REUSE_MS = 1_000;

/**
 * A readiness check that costs something elsewhere: the directory's is a search on the LDAP
 * servers the whole fleet shares, and /readyz needs no credentials, so one keep-alive client
 * could otherwise have thousands of searches a second run there. One check runs at a time: a
 * request that comes while it runs waits for its answer (no longer than the check's own
 * deadline), and one that comes within `reuseMs` of its start gets that answer; a later one
 * starts the next check. No answer is given from a check begun more than `reuseMs` before the
 * request, except by waiting for one still under way. A rejection is shared as an answer is.
 */
export class SharedCheck<T> {
  private last: { readonly startedAt: number; readonly answer: Promise<T>; settled: boolean } | undefined;

  constructor(
    private readonly check: () => Promise<T>,
    private readonly reuseMs = READINESS_CHECK_REUSE_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get(): Promise<T> {
    const last = this.last;
    if (last !== undefined && (!last.settled || this.now() - last.startedAt < this.reuseMs)) return last.answer;
    // Begun on the next turn, so that a check that throws at once rejects like one that fails later.
    const next = { startedAt: this.now(), answer: Promise.resolve().then(() => this.check()), settled: false };
    const settle = (): void => {
      next.settled = true;
    };
    next.answer.then(settle, settle);
    this.last = next;
    return next.answer;
  }
}

/** One thing /readyz checks, e.g. `listeners`, `store-map`, `directory`. */
export interface ReadinessCheck {
  readonly name: string;
  readonly ok: boolean;
  /** Why it is not ready (shown in the 503 body; never secrets). */
  readonly detail?: string;
  /**
   * Reported, but not a reason for a 503: the state of something every instance of a fleet
   * shares (the directory), whose failure would take them all out of service at once.
   */
  readonly advisory?: boolean;
}

/** The answer of a readiness callback; ready only when every check that is not advisory is ok. */
export interface Readiness {
  readonly ready: boolean;
  readonly checks: readonly ReadinessCheck[];
}

/** Builds a Readiness from checks (ready when all but the advisory ones are ok). */
export function readinessOf(checks: readonly ReadinessCheck[]): Readiness {
  return { ready: checks.every((c) => c.ok || c.advisory === true), checks };
}

/** Handles a request for a registered route; `url` is the parsed request URL. */
export type RouteHandler = (request: IncomingMessage, response: ServerResponse, url: URL) => void | Promise<void>;

export interface HttpServerOptions {
  readonly metrics: Metrics;
  /**
   * Called for every GET /readyz; may be async (bounded by READINESS_TIMEOUT_MS). Meant to be
   * cheap: a check that costs a server elsewhere goes through a SharedCheck.
   */
  readonly readiness: () => Readiness | Promise<Readiness>;
  readonly log: Logger;
  /** Connections held at once (HTTP_MAX_CONNECTIONS by default). */
  readonly maxConnections?: number;
  /** Connections held at once from one address (HTTP_MAX_CONNECTIONS_PER_ADDRESS by default). */
  readonly maxConnectionsPerAddress?: number;
}

/** What a render of /metrics gives. */
interface Exposition {
  readonly contentType: string;
  readonly body: string;
}

interface Route {
  readonly method: string;
  readonly prefix: string;
  readonly handler: RouteHandler;
}

/**
 * Reads the optional `http` section; undefined (no HTTP listener) when the section is absent.
 * `secretFileUnread`: the section as written, its `metrics_token_file` not read (the operator
 * commands need the address alone); otherwise such a key is unknown here, and so refused rather
 * than taken for a section without a token.
 */
export function readHttpConfig(v: unknown, path: string, issues: IssueList, secretFileUnread = false): HttpConfig | undefined {
  if (v === undefined || v === null) return undefined;
  const o = readSection(v, path, secretFileUnread ? [...HTTP_KEYS, 'metrics_token_file'] : HTTP_KEYS, issues) ?? {};
  const host = str(o, 'host', path, issues, DEFAULT_HTTP_HOST);
  if (isIP(host) === 0) issues.add(at(path, 'host'), 'an IPv4 or IPv6 address', host);
  // Port 0 binds any free port (tests); the address is then logged and available from address().
  const port = int(o, 'port', path, issues, 0, 65535, DEFAULT_HTTP_PORT);
  const metricsToken = optStr(o, 'metrics_token', path, issues);
  checkBearerToken(metricsToken, at(path, 'metrics_token'), issues);
  return { host, port, ...(metricsToken !== undefined ? { metricsToken } : {}) };
}

/**
 * Whether an Authorization header carries `expected` as its bearer token: 'missing' when it
 * carries none, 'invalid' when another. The scheme is case-insensitive (RFC 9110 §11.1), and one
 * or more spaces end it (§11.4). Compared as digests, so that neither the token's length nor its
 * content leaks through timing. The admin API's token and /metrics' are both read so.
 */
export function bearerCheck(authorization: string | undefined, expected: string): 'ok' | 'missing' | 'invalid' {
  const credentials = /^bearer +(\S.*)$/i.exec(authorization ?? '');
  if (credentials === null) return 'missing';
  return timingSafeEqual(createHash('sha256').update(credentials[1]!).digest(), createHash('sha256').update(expected).digest()) ? 'ok' : 'invalid';
}

/** True when `path` is `prefix` or below it (`/admin` matches `/admin` and `/admin/x`, not `/administrator`). */
function underPrefix(path: string, prefix: string): boolean {
  if (prefix === '/') return true;
  const base = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  return path === base || path.startsWith(`${base}/`);
}

function send(response: ServerResponse, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  response.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store', ...headers });
  response.end(response.req.method === 'HEAD' ? undefined : body);
}

function sendJson(response: ServerResponse, status: number, value: unknown): void {
  send(response, status, 'application/json; charset=utf-8', `${JSON.stringify(value)}\n`);
}

/** The HTTP listener for /metrics, /healthz, /readyz and added routes. */
export class HttpServer {
  private server: Server | undefined;
  private readonly routes: Route[] = [];
  /** The render of /metrics the scrapes that come now will share (not begun yet), if any. */
  private nextRender: Promise<Exposition> | null = null;
  /** Settles when the last render asked for has ended (one is in flight at a time). */
  private lastRender: Promise<void> = Promise.resolve();
  /** When the last render ended (performance.now()). */
  private lastRenderEndedAt = -Infinity;
  /** How long the last render took (ms). */
  private lastRenderMs = 0;
  /** Connections open, by client address (the servers of a rebind share them: the old one's drain). */
  private readonly connectionsByAddress = new Map<string, number>();
  /** Connections refused since the last line that told of them, while an interval runs. */
  private refused: { count: number; limit: 'total' | 'address'; client: string } | undefined;
  /** The token a scrape of /metrics must bear (the config's, or a reload's), if any. */
  private metricsToken: string | undefined;

  constructor(
    private config: HttpConfig,
    private readonly options: HttpServerOptions,
  ) {
    this.metricsToken = config.metricsToken;
  }

  /**
   * Adds a handler for requests with `method` (or any method, with `*`) whose path is `pathPrefix`
   * or below it; the longest matching prefix wins. The built-in paths (/metrics, /healthz, /readyz)
   * cannot be taken.
   */
  route(method: string, pathPrefix: string, handler: RouteHandler): void {
    if (!pathPrefix.startsWith('/')) throw new Error(`http route: the path prefix must start with "/", got ${JSON.stringify(pathPrefix)}`);
    this.routes.push({ method: method.toUpperCase(), prefix: pathPrefix, handler });
    this.routes.sort((a, b) => b.prefix.length - a.prefix.length);
  }

  /** Binds the listener; rejects with a config error naming the address when it cannot. */
  listen(): Promise<void> {
    return this.bind(this.config).then((server) => {
      this.server = server;
    });
  }

  /**
   * Moves the listener to `config` (after a reload): binds the new address first, so a failure
   * leaves the old one serving, then closes the old one. Where the old socket holds the port the
   * new address needs (a wildcard on the same port), it closes first and takes the port back on
   * failure. Nothing happens to the socket when the address is unchanged. The metrics token is
   * `config`'s from now on, whether the address could be bound or not.
   */
  async rebind(config: HttpConfig): Promise<void> {
    this.metricsToken = config.metricsToken;
    if (config.host === this.config.host && config.port === this.config.port && this.server !== undefined) return;
    const previous = this.server;
    let previousClosing = false;
    let next: Server;
    try {
      next = await this.bind(config);
    } catch (error) {
      // The same port on another address where one of the two is a wildcard (0.0.0.0 and
      // 127.0.0.1, say): the old socket has to let go of the port first, and takes it back if
      // the new one still cannot bind.
      const inUse = error instanceof MailfrontError && (error.cause as NodeJS.ErrnoException | undefined)?.code === 'EADDRINUSE';
      const held = previous?.address();
      if (previous === undefined || typeof held !== 'object' || held === null || held.port !== config.port || !inUse) throw error;
      // Stops accepting at once; the request that asked for this reload still gets its answer.
      void this.closeServer(previous);
      previousClosing = true;
      try {
        next = await this.bind(config);
      } catch (second) {
        this.server = await this.bind({ host: this.config.host, port: held.port }).catch(() => undefined);
        if (this.server === undefined) this.options.log.error({ event: 'http.unbound', address: `${this.config.host}:${this.config.port}` }, 'the HTTP listener could not take its old address back');
        throw second;
      }
    }
    this.server = next;
    this.config = config;
    // Not awaited: the request that asked for this reload (the admin API's) is on the old server
    // and gets its answer there; connections still open after a second are closed.
    if (previous !== undefined && !previousClosing) void this.closeServer(previous);
  }

  /** The address actually bound (useful with port 0 in tests). */
  address(): { host: string; port: number } {
    const a = this.server?.address();
    if (a === null || a === undefined || typeof a === 'string') throw new Error('the HTTP listener is not bound');
    return { host: a.address, port: a.port };
  }

  /** Stops listening and closes every connection (keep-alive ones included). */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) await this.closeServer(server);
  }

  private closeServer(server: Server): Promise<void> {
    return new Promise((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
      // A scrape in progress gets a moment to finish; a stuck client does not hold up a stop.
      setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS).unref();
    });
  }

  private bind(config: HttpConfig): Promise<Server> {
    const server = createServer({ headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: CONNECTIONS_CHECKING_INTERVAL_MS }, (request, response) => {
      this.handle(request, response).catch((error: unknown) => {
        this.options.log.error({ event: 'http.error', method: request.method, path: request.url, err: error instanceof Error ? error.message : String(error) }, 'HTTP handler failed');
        if (!response.headersSent) sendJson(response, 500, { error: 'internal error' });
        else response.destroy();
      });
    });
    // Over it, node closes a connection as it is accepted and emits 'drop'.
    server.maxConnections = this.options.maxConnections ?? HTTP_MAX_CONNECTIONS;
    server.on('drop', (data?: { remoteAddress?: string }) => this.connectionRefused('total', data?.remoteAddress ?? 'unknown'));
    server.on('connection', (socket: Socket) => this.admit(socket));
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => reject(new MailfrontError('LISTEN_FAILED', 'config', `HTTP listener cannot bind ${config.host}:${config.port}: ${error.code ?? error.message}`, { cause: error }));
      server.once('error', onError);
      server.listen({ host: config.host, port: config.port }, () => {
        server.off('error', onError);
        server.on('error', (error) => this.options.log.error({ event: 'http.listener_error', err: error.message }, 'HTTP listener error'));
        const a = server.address();
        this.options.log.info({ event: 'http.bound', address: `${config.host}:${typeof a === 'object' && a !== null ? a.port : config.port}` }, 'HTTP listening');
        resolve(server);
      });
    });
  }

  /** Counts a new connection against its address's bound, or closes it when the address is at it. */
  private admit(socket: Socket): void {
    const address = socket.remoteAddress ?? 'unknown';
    const open = this.connectionsByAddress.get(address) ?? 0;
    if (open >= (this.options.maxConnectionsPerAddress ?? HTTP_MAX_CONNECTIONS_PER_ADDRESS)) {
      socket.destroy();
      return this.connectionRefused('address', address);
    }
    this.connectionsByAddress.set(address, open + 1);
    socket.once('close', () => {
      const left = (this.connectionsByAddress.get(address) ?? 1) - 1;
      if (left > 0) this.connectionsByAddress.set(address, left);
      else this.connectionsByAddress.delete(address);
    });
  }

  /**
   * Logs refused connections: the first at once, then at most one line per interval with how
   * many were refused since (a flood of connects must not become a flood of lines).
   */
  private connectionRefused(limit: 'total' | 'address', client: string): void {
    const since = this.refused;
    if (since === undefined) {
      this.writeRefused(1, limit, client);
      return this.startRefusedInterval();
    }
    // The line tells of the first refusal since the last one.
    if (since.count++ === 0) Object.assign(since, { limit, client });
  }

  private startRefusedInterval(): void {
    this.refused = { count: 0, limit: 'total', client: '' };
    // Never what keeps the process up; a quiet interval ends the count, and the next refusal is logged at once.
    setTimeout(() => {
      const since = this.refused;
      this.refused = undefined;
      if (since === undefined || since.count === 0) return;
      this.writeRefused(since.count, since.limit, since.client);
      this.startRefusedInterval();
    }, REFUSED_LOG_INTERVAL_MS).unref();
  }

  private writeRefused(refused: number, limit: 'total' | 'address', client: string): void {
    const bound = limit === 'total' ? `${this.options.maxConnections ?? HTTP_MAX_CONNECTIONS} connections` : `${this.options.maxConnectionsPerAddress ?? HTTP_MAX_CONNECTIONS_PER_ADDRESS} connections from one address`;
    this.options.log.warn({ event: 'http.connection_refused', limit, refused, client }, `HTTP listener at its bound of ${bound}: ${refused} connection(s) closed unanswered`);
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const method = request.method ?? 'GET';
    let url: URL;
    try {
      url = new URL(request.url ?? '/', 'http://localhost');
    } catch {
      // Node's parser lets through request targets that are no URL (`http://[`, a port over
      // 65535): the client's mistake, answered as one, not a handler failure logged as an error.
      return send(response, 400, 'text/plain; charset=utf-8', 'bad request: the request target must be a path or an absolute http URL\n');
    }
    const path = url.pathname;
    const builtIn = this.builtIn(path);
    if (builtIn !== undefined) {
      if (method !== 'GET' && method !== 'HEAD') return send(response, 405, 'text/plain; charset=utf-8', 'method not allowed\n', { allow: 'GET, HEAD' });
      // /metrics only: /healthz and /readyz answer a balancer's checks, which carry no token.
      if (path === '/metrics' && this.metricsToken !== undefined) {
        const check = bearerCheck(request.headers.authorization, this.metricsToken);
        // As the admin API answers (RFC 9110 §11.6.1; a wrong token: invalid_token, RFC 6750 §3.1).
        if (check !== 'ok') return send(response, 401, 'text/plain; charset=utf-8', 'a valid bearer token is required\n', { 'www-authenticate': `Bearer realm="mailfront-metrics"${check === 'invalid' ? ', error="invalid_token"' : ''}` });
      }
      return builtIn(response);
    }
    const matching = this.routes.filter((r) => underPrefix(path, r.prefix));
    if (matching.length === 0) return send(response, 404, 'text/plain; charset=utf-8', 'not found\n');
    // The longest prefix decides which handler owns the path; other methods under it are a 405, not a 404.
    const longest = matching[0]!.prefix.length;
    const owners = matching.filter((r) => r.prefix.length === longest);
    const route = owners.find((r) => r.method === method) ?? owners.find((r) => r.method === '*');
    if (route === undefined) return send(response, 405, 'text/plain; charset=utf-8', 'method not allowed\n', { allow: [...new Set(owners.map((r) => r.method))].join(', ') });
    await route.handler(request, response, url);
  }

  private builtIn(path: string): ((response: ServerResponse) => Promise<void> | void) | undefined {
    switch (path) {
      case '/metrics':
        return async (response) => {
          const { contentType, body } = await this.metricsRender();
          send(response, 200, contentType, body);
        };
      case '/healthz':
        return (response) => send(response, 200, 'text/plain; charset=utf-8', 'ok\n');
      case '/readyz':
        return async (response) => {
          const readiness = await this.readiness();
          const notReady = readiness.checks.filter((c) => !c.ok && c.advisory !== true);
          const degraded = readiness.checks.filter((c) => !c.ok && c.advisory === true);
          sendJson(response, readiness.ready ? 200 : 503, {
            ready: readiness.ready,
            ...(notReady.length > 0 ? { notReady } : {}),
            ...(degraded.length > 0 ? { degraded } : {}),
            checks: readiness.checks,
          });
        };
      default:
        return undefined;
    }
  }

  /**
   * A render of every metric that begins after this call: the one not begun yet that earlier
   * scrapes wait for, or a new one, spaced from the last one by what it cost. A scrape
   * never gets numbers read before it came, only waits for them.
   */
  private metricsRender(): Promise<Exposition> {
    if (this.nextRender === null) {
      const render = this.renderWhenDue();
      this.nextRender = render;
      this.lastRender = render.then(
        () => undefined,
        () => undefined,
      );
    }
    return this.nextRender;
  }

  private async renderWhenDue(): Promise<Exposition> {
    // Always waits at least a turn, so that metricsRender() has recorded this render by the time it begins.
    await this.lastRender;
    const wait = this.lastRenderEndedAt + Math.min(this.lastRenderMs * METRICS_RENDER_SPACING, METRICS_RENDER_INTERVAL_MAX_MS) - performance.now();
    // Not holding up a stop: closing the listener ends the connections that wait.
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait).unref());
    // Scrapes from now on wait for the next render: this one may read before they came.
    this.nextRender = null;
    const started = performance.now();
    try {
      return await this.options.metrics.exposition();
    } finally {
      this.lastRenderEndedAt = performance.now();
      this.lastRenderMs = this.lastRenderEndedAt - started;
    }
  }

  private async readiness(): Promise<Readiness> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<Readiness>((resolve) => {
      timer = setTimeout(() => resolve(readinessOf([{ name: 'readiness', ok: false, detail: `no answer within ${READINESS_TIMEOUT_MS} ms` }])), READINESS_TIMEOUT_MS);
    });
    try {
      return await Promise.race([Promise.resolve().then(() => this.options.readiness()), timeout]);
    } catch (error) {
      return readinessOf([{ name: 'readiness', ok: false, detail: error instanceof Error ? error.message : String(error) }]);
    } finally {
      clearTimeout(timer);
    }
  }
}
