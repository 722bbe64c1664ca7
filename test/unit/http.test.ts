import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { DEFAULT_HTTP_HOST, DEFAULT_HTTP_PORT, HTTP_MAX_CONNECTIONS_PER_ADDRESS, HttpServer, READINESS_CHECK_REUSE_MS, READINESS_TIMEOUT_MS, SharedCheck, readHttpConfig, readinessOf } from '../../src/server/http.js';
import type { Readiness } from '../../src/server/http.js';

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

function call(port: number, method: string, path: string, host = '127.0.0.1', localAddress?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, method, path, agent: false, ...(localAddress !== undefined ? { localAddress } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('http listener', () => {
  const log = createLogger('silent');
  const metrics = new Metrics({ processMetrics: false, version: '9.9.9' });
  let readiness: () => Readiness | Promise<Readiness> = () => readinessOf([{ name: 'listeners', ok: true }]);
  const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log, readiness: () => readiness() });
  let port = 0;

  before(async () => {
    server.route('GET', '/api', (_req, res, url) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ path: url.pathname, q: url.searchParams.get('q') }));
    });
    server.route('POST', '/api/failover', (_req, res) => {
      res.writeHead(202);
      res.end('accepted');
    });
    server.route('*', '/any', (req, res) => {
      res.writeHead(200);
      res.end(req.method);
    });
    server.route('GET', '/broken', () => {
      throw new Error('handler bug');
    });
    await server.listen();
    port = server.address().port;
  });
  after(() => server.close());

  it('answers /healthz with 200 ok, HEAD without a body, other methods with 405', async () => {
    const get = await call(port, 'GET', '/healthz');
    assert.equal(get.status, 200);
    assert.equal(get.body, 'ok\n');
    assert.equal(get.headers['cache-control'], 'no-store');
    const head = await call(port, 'HEAD', '/healthz');
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
    const post = await call(port, 'POST', '/healthz');
    assert.equal(post.status, 405);
    assert.equal(post.headers['allow'], 'GET, HEAD');
  });

  it('answers /readyz from the readiness callback, listing what is not ready', async () => {
    const ready = await call(port, 'GET', '/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(JSON.parse(ready.body), { ready: true, checks: [{ name: 'listeners', ok: true }] });
    readiness = () => readinessOf([{ name: 'listeners', ok: true }, { name: 'store-map', ok: true }, { name: 'directory', ok: false, detail: 'no LDAP server answered' }]);
    const notReady = await call(port, 'GET', '/readyz');
    assert.equal(notReady.status, 503);
    assert.deepEqual(JSON.parse(notReady.body).notReady, [{ name: 'directory', ok: false, detail: 'no LDAP server answered' }]);
    readiness = async () => readinessOf([{ name: 'directory', ok: true }]);
    assert.equal((await call(port, 'GET', '/readyz')).status, 200);
  });

  it('answers 200 when only an advisory check fails, and lists it as degraded', async () => {
    const down = { name: 'directory', ok: false, advisory: true, detail: 'unreachable' };
    readiness = () => readinessOf([{ name: 'listeners', ok: true }, down]);
    const degraded = await call(port, 'GET', '/readyz');
    assert.equal(degraded.status, 200);
    assert.deepEqual(JSON.parse(degraded.body), { ready: true, degraded: [down], checks: [{ name: 'listeners', ok: true }, down] });
    readiness = () => readinessOf([{ name: 'listeners', ok: false, detail: 'not listening: imap' }, down]);
    const both = await call(port, 'GET', '/readyz');
    assert.equal(both.status, 503);
    assert.deepEqual(JSON.parse(both.body).notReady, [{ name: 'listeners', ok: false, detail: 'not listening: imap' }]);
    assert.deepEqual(JSON.parse(both.body).degraded, [down]);
  });

  it('is not ready when the readiness callback throws or does not answer in time', async () => {
    readiness = () => {
      throw new Error('store map holder missing');
    };
    const thrown = await call(port, 'GET', '/readyz');
    assert.equal(thrown.status, 503);
    assert.match(thrown.body, /store map holder missing/);
    readiness = () => new Promise(() => undefined);
    const started = Date.now();
    const hung = await call(port, 'GET', '/readyz');
    assert.equal(hung.status, 503);
    assert.ok(Date.now() - started >= READINESS_TIMEOUT_MS - 50);
    assert.match(hung.body, /no answer within/);
    readiness = () => readinessOf([]);
  });

  it('serves /metrics in the Prometheus text format', async () => {
    metrics.failover('store1');
    const reply = await call(port, 'GET', '/metrics');
    assert.equal(reply.status, 200);
    assert.match(String(reply.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    assert.match(reply.body, /^mailfront_failovers_total\{store="store1"\} 1$/m);
    assert.match(reply.body, /^mailfront_build_info\{version="9\.9\.9"/m);
  });

  it('hands paths under a route prefix to its handler, longest prefix first', async () => {
    const a = await call(port, 'GET', '/api/stores?q=1');
    assert.equal(a.status, 200);
    assert.deepEqual(JSON.parse(a.body), { path: '/api/stores', q: '1' });
    assert.equal((await call(port, 'GET', '/api')).status, 200);
    assert.equal((await call(port, 'POST', '/api/failover/store1')).status, 202);
    const wrongMethod = await call(port, 'DELETE', '/api/stores');
    assert.equal(wrongMethod.status, 405);
    assert.equal(wrongMethod.headers['allow'], 'GET');
    assert.equal((await call(port, 'GET', '/apis')).status, 404);
    assert.equal((await call(port, 'GET', '/')).status, 404);
    assert.equal((await call(port, 'PATCH', '/any/thing')).body, 'PATCH');
  });

  it('answers 500 when a handler fails, and keeps serving', async () => {
    const reply = await call(port, 'GET', '/broken');
    assert.equal(reply.status, 500);
    assert.doesNotMatch(reply.body, /handler bug/);
    assert.equal((await call(port, 'GET', '/healthz')).status, 200);
  });

  it('refuses routes that do not start with /', () => {
    assert.throws(() => server.route('GET', 'api', () => undefined), /must start with "\/"/);
  });
});

/** Sends `head` as the whole request (closing the connection after it) and returns the raw answer. */
function raw(port: number, head: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => socket.end(head));
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', reject);
  });
}

describe('http listener: malformed request targets', () => {
  const lines: Array<{ level: string; event?: string }> = [];
  const log = createLogger('debug', { write: (line: string) => void lines.push(JSON.parse(line) as { level: string; event?: string }) });
  const metrics = new Metrics({ processMetrics: false });
  const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log, readiness: () => readinessOf([]) });
  let port = 0;
  before(async () => {
    server.route('*', '/api', (_req, res) => void res.end('api'));
    await server.listen();
    port = server.address().port;
  });
  after(() => server.close());

  it('answers 400 to a target that is no URL, without an error-level log line', async () => {
    // Node's HTTP parser accepts these targets; only the URL parser refuses them.
    for (const target of ['http://[', 'http://a:99999/metrics', 'http://[::1/api/stores', 'http://%zz/healthz', 'https://']) {
      const before = lines.length;
      const answer = await raw(port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assert.match(answer, /^HTTP\/1\.1 400 /, target);
      assert.match(answer, /request target must be a path or an absolute http URL/, target);
      assert.deepEqual(lines.slice(before).filter((l) => l.level === 'error' || l.level === 'fatal' || l.event === 'http.error'), [], target);
    }
    // A valid absolute-form target is served by its path, and the listener goes on serving.
    assert.match(await raw(port, 'GET http://a:9143/healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 [^]*\r\nok\n\r\n/);
    assert.equal((await call(port, 'GET', '/healthz')).status, 200);
  });
});

describe('http listener: /metrics under many scrapers', () => {
  it('shares renders: a burst of ten scrapes soon after the last render waits for one more, whose numbers were read after they came', async () => {
    const metrics = new Metrics({ processMetrics: false });
    let renders = 0;
    // Renders of 30 ms: the next is due 270 ms after one ends (nine times its cost), a window a
    // busy machine's ten local requests fall in; a render of a few microseconds left one of a
    // few milliseconds, which a loaded machine's burst spread over.
    metrics.beforeScrape(() => {
      renders++;
      const until = performance.now() + 30;
      while (performance.now() < until);
    });
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log: createLogger('silent'), readiness: () => readinessOf([]) });
    await server.listen();
    try {
      const port = server.address().port;
      // None before it: rendered at once.
      const first = await call(port, 'GET', '/metrics');
      assert.equal(first.status, 200);
      assert.doesNotMatch(first.body, /^mailfront_failovers_total\{store="store1"\}/m);
      assert.equal(renders, 1);
      metrics.failover('store1');
      const burst = await Promise.all(Array.from({ length: 10 }, () => call(port, 'GET', '/metrics')));
      // One render for the ten (two, should one of them come while that render runs).
      assert.ok(renders - 1 <= 2, `${renders - 1} renders for a burst of 10 scrapes`);
      for (const reply of burst) {
        assert.equal(reply.status, 200);
        assert.match(reply.body, /^mailfront_failovers_total\{store="store1"\} 1$/m, 'no scrape gets numbers read before it came');
      }
    } finally {
      await server.close();
    }
  });

  it('closes a connection whose request headers do not end within 10 s, checked every second rather than every 30 s', async () => {
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics: new Metrics({ processMetrics: false }), log: createLogger('silent'), readiness: () => readinessOf([]) });
    await server.listen();
    try {
      const socket = connect(server.address().port, '127.0.0.1');
      socket.on('error', () => undefined);
      // Reads (and drops) the server's 408, so that its close is seen.
      socket.resume();
      socket.write('GET /metrics HTTP/1.1\r\nX-Slow: ');
      const started = Date.now();
      const closed = await new Promise<boolean>((resolve) => {
        socket.on('close', () => resolve(true));
        // Bounded: past 20 s the server did not keep its deadline.
        setTimeout(() => resolve(false), 20_000).unref();
      });
      const ms = Date.now() - started;
      socket.destroy();
      assert.ok(closed, 'the server closed the connection within 20 s');
      assert.ok(ms >= 9_000 && ms < 13_000, `closed after ${ms} ms`);
    } finally {
      await server.close();
    }
  });
});

/** An idle connection from `localAddress`, and whether the server closed it within `withinMs` having sent nothing. */
function idleConnection(port: number, localAddress: string): { socket: Socket; closedUnanswered: (withinMs: number) => Promise<boolean> } {
  const socket = connect({ port, host: '127.0.0.1', localAddress });
  socket.on('error', () => undefined);
  let data = false;
  let closed = false;
  socket.on('data', () => (data = true));
  const onClose = new Promise<void>((resolve) => socket.once('close', () => resolve(void (closed = true))));
  return {
    socket,
    closedUnanswered: async (withinMs) => {
      await Promise.race([onClose, new Promise((resolve) => setTimeout(resolve, withinMs))]);
      return closed && !data;
    },
  };
}

/** Resolves once `socket` is connected. */
function connected(socket: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!socket.connecting) return resolve();
    socket.once('connect', () => resolve()).once('error', reject);
  });
}

describe('http listener: connection bounds', () => {
  it('closes a connection over the bound of one address at once, unanswered, while other addresses are served; a freed place is taken again', async () => {
    const lines: string[] = [];
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics: new Metrics({ processMetrics: false }), log: createLogger('info', { write: (l: string) => void lines.push(l) }), readiness: () => readinessOf([]) });
    await server.listen();
    const opened: Socket[] = [];
    try {
      const port = server.address().port;
      // The default bound, held by idle connections from one address.
      for (let i = 0; i < HTTP_MAX_CONNECTIONS_PER_ADDRESS; i++) {
        const { socket } = idleConnection(port, '127.0.0.1');
        opened.push(socket);
        await connected(socket);
      }
      // Past the bound from that address: closed at once.
      const over = idleConnection(port, '127.0.0.1');
      opened.push(over.socket);
      assert.ok(await over.closedUnanswered(3_000), 'a connection over the bound of its address was closed at once');
      const refused = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['event'] === 'http.connection_refused');
      assert.equal(refused.length, 1);
      assert.equal(refused[0]?.['limit'], 'address');
      // Another address is served.
      assert.equal((await call(port, 'GET', '/healthz', '127.0.0.1', '127.0.0.2')).status, 200, 'another address is served');
      // One of the first address's connections goes: its place is taken again.
      const first = opened.shift()!;
      await new Promise<void>((resolve) => {
        first.once('close', () => resolve());
        first.destroy();
      });
      // The server sees the close a moment later.
      let status = 0;
      for (let attempt = 0; attempt < 50 && status !== 200; attempt++) {
        status = await call(port, 'GET', '/healthz', '127.0.0.1').then((r) => r.status, () => 0);
        if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assert.equal(status, 200);
    } finally {
      for (const socket of opened) socket.destroy();
      await server.close();
    }
  });

  it('closes a connection over the bound of all connections at once, whatever its address', async () => {
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics: new Metrics({ processMetrics: false }), log: createLogger('silent'), readiness: () => readinessOf([]), maxConnections: 4, maxConnectionsPerAddress: 2 });
    await server.listen();
    const opened: Socket[] = [];
    try {
      const port = server.address().port;
      for (const address of ['127.0.0.1', '127.0.0.1', '127.0.0.2', '127.0.0.3']) {
        const { socket } = idleConnection(port, address);
        opened.push(socket);
        await connected(socket);
      }
      const over = idleConnection(port, '127.0.0.4');
      opened.push(over.socket);
      assert.ok(await over.closedUnanswered(3_000), 'a fifth connection was closed at once');
    } finally {
      for (const socket of opened) socket.destroy();
      await server.close();
    }
  });
});

describe('SharedCheck (a costly readiness check)', () => {
  it('runs one check for callers that come while it runs, reuses its answer for a second from its start, then checks again', async () => {
    let now = 0;
    let checks = 0;
    let answer = true;
    const release: Array<() => void> = [];
    const shared = new SharedCheck(
      () => {
        checks++;
        const value = answer;
        return new Promise<boolean>((resolve) => release.push(() => resolve(value)));
      },
      READINESS_CHECK_REUSE_MS,
      () => now,
    );
    const waiting = Array.from({ length: 20 }, () => shared.get());
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(checks, 1, 'twenty callers at once: one check');
    // Even past the reuse time, a caller that comes while the check runs waits for it, not for a second one.
    now = READINESS_CHECK_REUSE_MS + 500;
    waiting.push(shared.get());
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(checks, 1);
    release.shift()!();
    assert.deepEqual(await Promise.all(waiting), Array(21).fill(true));
    // Ended, but begun more than the reuse time ago: the next caller starts a check.
    answer = false;
    now = 2_000;
    const second = shared.get();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(checks, 2);
    release.shift()!();
    assert.equal(await second, false);
    // Within the reuse time of its start: the same answer, no check.
    now = 2_000 + READINESS_CHECK_REUSE_MS - 1;
    assert.equal(await shared.get(), false);
    assert.equal(checks, 2);
    now = 2_000 + READINESS_CHECK_REUSE_MS;
    answer = true;
    const third = shared.get();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(checks, 3);
    release.shift()!();
    assert.equal(await third, true);
  });

  it('shares a check that throws as a rejection, and checks again once its time is over', async () => {
    let now = 0;
    let checks = 0;
    const shared = new SharedCheck<boolean>(
      () => {
        checks++;
        throw new Error('no directory');
      },
      1_000,
      () => now,
    );
    const results = await Promise.allSettled([shared.get(), shared.get()]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'rejected'],
    );
    assert.equal(checks, 1);
    now = 1_000;
    await assert.rejects(shared.get(), /no directory/);
    assert.equal(checks, 2);
  });
});

describe('http listener: binding', () => {
  const log = createLogger('silent');
  const metrics = new Metrics({ processMetrics: false });

  it('moves to a new address on rebind, keeping the old one when the new one cannot be bound', async () => {
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log, readiness: () => readinessOf([]) });
    const other = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log, readiness: () => readinessOf([]) });
    await server.listen();
    await other.listen();
    try {
      const first = server.address().port;
      await assert.rejects(server.rebind({ host: '127.0.0.1', port: other.address().port }), (e: Error & { code?: string }) => e.code === 'LISTEN_FAILED');
      assert.equal((await call(first, 'GET', '/healthz')).status, 200);
      await server.rebind({ host: '127.0.0.2', port: first });
      assert.equal(server.address().host, '127.0.0.2');
      await assert.rejects(call(first, 'GET', '/healthz'));
      await server.rebind({ host: '127.0.0.2', port: first });
      assert.equal(server.address().port, first);
    } finally {
      await server.close();
      await other.close();
    }
  });
  it('moves between addresses that share a port when one of them covers the other', async () => {
    // ::ffff:127.0.0.1 and 127.0.0.1 are one address to the kernel, as a wildcard and a host
    // address on one port are: the new socket cannot bind while the old one holds the port.
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log, readiness: () => readinessOf([]) });
    await server.listen();
    const port = server.address().port;
    const blocker = createNetServer();
    try {
      await server.rebind({ host: '::ffff:127.0.0.1', port });
      assert.equal(server.address().host, '::ffff:127.0.0.1');
      assert.equal((await call(port, 'GET', '/healthz')).status, 200);
      await server.rebind({ host: '127.0.0.1', port });
      assert.equal(server.address().host, '127.0.0.1');
      assert.equal((await call(port, 'GET', '/healthz')).status, 200);
      // A new address that cannot be bound even with the port free: the old one takes it back.
      await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.3', resolve));
      const taken = (blocker.address() as AddressInfo).port;
      await server.rebind({ host: '127.0.0.2', port: taken });
      await assert.rejects(server.rebind({ host: '::ffff:127.0.0.3', port: taken }), (e: Error & { code?: string }) => e.code === 'LISTEN_FAILED');
      assert.equal(server.address().host, '127.0.0.2');
      assert.equal((await call(taken, 'GET', '/healthz', '127.0.0.2')).status, 200);
    } finally {
      blocker.close();
      await server.close();
    }
  });
});

describe('http config', () => {
  it('is off when the section is absent, and defaults to loopback port 9143', () => {
    const issues = new IssueList();
    assert.equal(readHttpConfig(undefined, 'http', issues), undefined);
    assert.deepEqual(readHttpConfig({}, 'http', issues), { host: DEFAULT_HTTP_HOST, port: DEFAULT_HTTP_PORT });
    assert.deepEqual(readHttpConfig({ host: '::1', port: 9200 }, 'http', issues), { host: '::1', port: 9200 });
    assert.deepEqual(issues.issues, []);
    assert.equal(DEFAULT_HTTP_HOST, '127.0.0.1');
  });

  it('reports every problem with its path', () => {
    const issues = new IssueList();
    readHttpConfig({ host: 'localhost', port: 70000, tls: true }, 'http', issues);
    assert.deepEqual(issues.issues.map((i) => i.path).sort(), ['http.host', 'http.port', 'http.tls']);
    const notMapping = new IssueList();
    readHttpConfig('127.0.0.1:9143', 'http', notMapping);
    assert.deepEqual(notMapping.issues.map((i) => i.path), ['http']);
  });
});
