import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { get } from 'node:http';
import { Gauge } from 'prom-client';
import { createLogger } from '../../src/log.js';
import { HttpServer, readinessOf } from '../../src/server/http.js';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { Metrics, authFailureReason, backendFailureResult } from '../../src/metrics.js';
import type { BackendResult, SessionEndReasonLabel, SessionPhaseLabel } from '../../src/metrics.js';
import type { SessionEndReason, SessionPhase } from '../../src/session/session.js';

// The metric label unions must take every phase and end reason the session uses (compile-time check).
const phaseFits: (p: SessionPhase) => SessionPhaseLabel = (p) => p;
const reasonFits: (r: SessionEndReason) => SessionEndReasonLabel = (r) => r;
void phaseFits;
void reasonFits;

/** The value of one series in the registry, or undefined when the series does not exist. */
async function value(metrics: Metrics, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const metric = metrics.registry.getSingleMetric(name);
  assert.ok(metric, `metric ${name} exists`);
  const { values } = await metric.get();
  const sameLabels = (got: Record<string, unknown>): boolean =>
    Object.keys(got).length === Object.keys(labels).length && Object.entries(labels).every(([k, l]) => String(got[k]) === l);
  const match = values.find((v) => ((v as { metricName?: string }).metricName ?? name) === name && sameLabels(v.labels));
  return match?.value;
}

/** The _count of a histogram series. */
async function count(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const metric = metrics.registry.getSingleMetric(name);
  assert.ok(metric, `metric ${name} exists`);
  const { values } = await metric.get();
  const match = values.find((v) => (v as { metricName?: string }).metricName === `${name}_count` && Object.entries(labels).every(([k, l]) => String(v.labels[k]) === l));
  return match?.value;
}

describe('metrics', () => {
  it('tracks a session through its phases, and ends it once', async () => {
    let now = 1_000;
    const metrics = new Metrics({ processMetrics: false, nowMs: () => now });
    const session = metrics.sessionStarted('imap');
    assert.equal(await value(metrics, 'mailfront_sessions_total', { protocol: 'imap' }), 1);
    assert.equal(await value(metrics, 'mailfront_sessions_active', { protocol: 'imap', phase: 'greeting' }), 1);
    session.phase('preauth');
    session.phase('authenticating');
    session.phase('backend-login');
    session.phase('spliced');
    assert.equal(await value(metrics, 'mailfront_sessions_active', { protocol: 'imap', phase: 'greeting' }), 0);
    assert.equal(await value(metrics, 'mailfront_sessions_active', { protocol: 'imap', phase: 'spliced' }), 1);
    now += 2_500;
    session.phase('closing');
    session.ended('client-closed');
    session.ended('shutdown');
    session.phase('preauth');
    assert.equal(await value(metrics, 'mailfront_sessions_active', { protocol: 'imap', phase: 'spliced' }), 0);
    assert.equal(await value(metrics, 'mailfront_sessions_active', { protocol: 'imap', phase: 'preauth' }), 0);
    assert.equal(await value(metrics, 'mailfront_sessions_ended_total', { protocol: 'imap', phase: 'spliced', reason: 'client-closed' }), 1);
    assert.equal(await value(metrics, 'mailfront_sessions_ended_total', { protocol: 'imap', phase: 'spliced', reason: 'shutdown' }), undefined);
    assert.equal(await count(metrics, 'mailfront_session_duration_seconds', { protocol: 'imap', phase: 'spliced' }), 1);
    const sum = (await metrics.registry.getSingleMetric('mailfront_session_duration_seconds')!.get()).values.find((v) => (v as { metricName?: string }).metricName === 'mailfront_session_duration_seconds_sum');
    assert.equal(sum?.value, 2.5);
  });

  it('starts the series of the configured protocols at 0', async () => {
    const metrics = new Metrics({ processMetrics: false, protocols: ['pop3'] });
    assert.equal(await value(metrics, 'mailfront_sessions_total', { protocol: 'pop3' }), 0);
    assert.equal(await value(metrics, 'mailfront_sessions_active', { protocol: 'pop3', phase: 'spliced' }), 0);
    assert.equal(await value(metrics, 'mailfront_sessions_total', { protocol: 'imap' }), undefined);
    assert.equal(await value(metrics, 'mailfront_proxied_bytes_total', { direction: 'client-to-backend' }), 0);
  });

  it('counts logins, auth failures, LDAP and backend timings, bytes', async () => {
    const metrics = new Metrics({ processMetrics: false });
    metrics.loginResult('pop3', 'success', 0.004);
    metrics.loginResult('pop3', 'auth-failed', 2.01);
    metrics.authFailure(authFailureReason('WRONG_PASSWORD'));
    metrics.ldapRequest('search', 'success', 0.002);
    metrics.backendConnect('store1', 'success', 0.001);
    metrics.backendLogin('store1', backendFailureResult('BACKEND_LOGIN_TIMEOUT', 'backend-login'), 15);
    metrics.bytesProxied('backend-to-client', 1234);
    metrics.bytesProxied('backend-to-client', 0);
    assert.equal(await value(metrics, 'mailfront_logins_total', { protocol: 'pop3', result: 'success' }), 1);
    assert.equal(await value(metrics, 'mailfront_logins_total', { protocol: 'pop3', result: 'auth-failed' }), 1);
    assert.equal(await count(metrics, 'mailfront_login_duration_seconds', { protocol: 'pop3', result: 'success' }), 1);
    assert.equal(await count(metrics, 'mailfront_login_duration_seconds', { protocol: 'pop3', result: 'auth-failed' }), 1);
    assert.equal(await value(metrics, 'mailfront_auth_failures_total', { reason: 'wrong-password' }), 1);
    assert.equal(await count(metrics, 'mailfront_ldap_request_duration_seconds', { operation: 'search', result: 'success' }), 1);
    assert.equal(await count(metrics, 'mailfront_backend_connect_duration_seconds', { result: 'success' }), 1);
    assert.equal(await count(metrics, 'mailfront_backend_login_duration_seconds', { result: 'timeout' }), 1);
    assert.equal(await value(metrics, 'mailfront_backend_connects_total', { store: 'store1', result: 'success' }), 1);
    assert.equal(await value(metrics, 'mailfront_backend_logins_total', { store: 'store1', result: 'timeout' }), 1);
    assert.equal(await value(metrics, 'mailfront_proxied_bytes_total', { direction: 'backend-to-client' }), 1234);
  });

  it('times backend connects and logins by result alone, so that their series do not grow with the stores, and counts them by store and result', async () => {
    /** The exposition after `stores` stores each had a connect and a login of every result in `results`. */
    const exposed = async (stores: number, results: readonly BackendResult[]): Promise<{ metrics: Metrics; body: string }> => {
      const metrics = new Metrics({ processMetrics: false });
      const names = Array.from({ length: stores }, (_, i) => `store${i}`);
      metrics.storeMapInForce(1, new Map(names.map((name) => [name, { currentMaster: `${name}m`, preferredMaster: `${name}m`, slots: new Map([[`${name}m`, {}], [`${name}r`, {}]]) }])));
      for (const store of names) {
        for (const result of results) {
          metrics.backendConnect(store, result, 0.001);
          metrics.backendLogin(store, result, 0.01);
        }
      }
      return { metrics, body: (await metrics.exposition()).body };
    };
    const seriesOf = (body: string, name: string): number => body.split('\n').filter((l) => l.startsWith(`${name}_bucket{`) || l.startsWith(`${name}_sum{`) || l.startsWith(`${name}_count{`)).length;
    const results: BackendResult[] = ['success', 'error', 'timeout'];
    const one = await exposed(1, results);
    const many = await exposed(500, results);
    for (const name of ['mailfront_backend_connect_duration_seconds', 'mailfront_backend_login_duration_seconds']) {
      assert.ok(seriesOf(one.body, name) > 0, `${name} has series`);
      assert.equal(seriesOf(many.body, name), seriesOf(one.body, name), `${name}: as many series for 500 stores as for one`);
      assert.doesNotMatch(many.body, new RegExp(`^${name}_\\w+\\{[^}]*store=`, 'm'), `${name} has no store label`);
    }
    assert.equal(await count(many.metrics, 'mailfront_backend_connect_duration_seconds', { result: 'error' }), 500);
    assert.equal(await count(many.metrics, 'mailfront_backend_login_duration_seconds', { result: 'timeout' }), 500);
    // Per store, one counter series for each result seen.
    many.metrics.backendLogin('store7', 'refused', 0.02);
    many.metrics.backendLogin('store7', 'refused', 0.03);
    assert.equal(await value(many.metrics, 'mailfront_backend_logins_total', { store: 'store7', result: 'refused' }), 2);
    assert.equal(await value(many.metrics, 'mailfront_backend_logins_total', { store: 'store7', result: 'success' }), 1);
    assert.equal(await value(many.metrics, 'mailfront_backend_logins_total', { store: 'store8', result: 'refused' }), undefined);
    assert.equal(await value(many.metrics, 'mailfront_backend_connects_total', { store: 'store499', result: 'timeout' }), 1);
    const body = (await many.metrics.exposition()).body;
    assert.equal(body.split('\n').filter((l) => l.startsWith('mailfront_backend_connects_total{')).length, 500 * results.length);
    assert.equal(body.split('\n').filter((l) => l.startsWith('mailfront_backend_logins_total{')).length, 500 * results.length + 1);
  });

  it('maps error codes to bounded reasons', () => {
    assert.equal(authFailureReason('UNKNOWN_USER'), 'unknown-user');
    assert.equal(authFailureReason('INVALID_USERNAME'), 'invalid-username');
    assert.equal(authFailureReason('SOMETHING_NEW'), 'other');
    assert.equal(backendFailureResult('BACKEND_CONNECT_TIMEOUT', 'connect'), 'timeout');
    assert.equal(backendFailureResult('BACKEND_CONNECT_FAILED', 'connect'), 'error');
    assert.equal(backendFailureResult('BACKEND_REFUSED_LOGIN', 'backend-login'), 'refused');
    assert.equal(backendFailureResult('BACKEND_MAILBOX_IN_USE', 'in-use'), 'in-use');
    assert.equal(backendFailureResult('BACKEND_LOGIN_DELAY', 'login-delay'), 'login-delay');
    assert.equal(backendFailureResult('ABORTED', 'aborted'), 'aborted');
  });

  it('follows the store map: version, masters, backwards stores, and drops slots that left it', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const slots = (...names: string[]): Map<string, unknown> => new Map(names.map((n) => [n, {}]));
    metrics.storeMapInForce(1, new Map([
      ['store1', { currentMaster: 'slot101', preferredMaster: 'slot101', slots: slots('slot101', 'slot102') }],
      ['store2', { currentMaster: 'slot202', preferredMaster: 'slot201', slots: slots('slot201', 'slot202') }],
    ]));
    metrics.storeMapLoaded();
    metrics.slotHealth('store1', 'slot102', false);
    metrics.slotHealth('store2', 'slot201', true);
    assert.equal(await value(metrics, 'mailfront_store_map_version'), 1);
    assert.equal(await value(metrics, 'mailfront_store_map_last_load_success'), 1);
    assert.equal(await value(metrics, 'mailfront_slot_current_master', { store: 'store2', slot: 'slot202' }), 1);
    assert.equal(await value(metrics, 'mailfront_slot_current_master', { store: 'store2', slot: 'slot201' }), 0);
    assert.equal(await value(metrics, 'mailfront_store_backwards', { store: 'store2' }), 1);
    assert.equal(await value(metrics, 'mailfront_slot_up', { store: 'store1', slot: 'slot102' }), 0);

    metrics.storeMapRejected();
    assert.equal(await value(metrics, 'mailfront_store_map_last_load_success'), 0);
    assert.equal(await value(metrics, 'mailfront_store_map_version'), 1);

    metrics.failover('store1');
    metrics.failover('store2');
    metrics.backendConnect('store2', 'success', 0.001);
    metrics.backendLogin('store2', 'success', 0.01);
    metrics.storeMapInForce(3, new Map([['store1', { currentMaster: 'slot102', preferredMaster: 'slot101', slots: slots('slot101', 'slot102') }]]));
    metrics.storeMapLoaded();
    // store2 left the map: none of its series is kept, nor brought back by a login to it that
    // was under way (aborted by the drain).
    metrics.backendConnect('store2', 'aborted', 0.001);
    metrics.backendLogin('store2', 'aborted', 0.01);
    assert.doesNotMatch((await metrics.exposition()).body, /store="store2"/);
    // Timed all the same: the durations are of every store together.
    assert.equal(await count(metrics, 'mailfront_backend_connect_duration_seconds', { result: 'aborted' }), 1);
    assert.equal(await count(metrics, 'mailfront_backend_login_duration_seconds', { result: 'aborted' }), 1);
    assert.equal(await value(metrics, 'mailfront_store_map_version'), 3);
    assert.equal(await value(metrics, 'mailfront_failovers_total', { store: 'store1' }), 1);
    assert.equal(await value(metrics, 'mailfront_store_map_loads_total', { result: 'success' }), 2);
    assert.equal(await value(metrics, 'mailfront_store_map_loads_total', { result: 'failure' }), 1);
    assert.equal(await value(metrics, 'mailfront_store_backwards', { store: 'store1' }), 1);
    assert.equal(await value(metrics, 'mailfront_store_backwards', { store: 'store2' }), undefined);
    assert.equal(await value(metrics, 'mailfront_slot_current_master', { store: 'store2', slot: 'slot202' }), undefined);
    assert.equal(await value(metrics, 'mailfront_slot_up', { store: 'store2', slot: 'slot201' }), undefined);
    assert.equal(await value(metrics, 'mailfront_slot_up', { store: 'store1', slot: 'slot102' }), 0);
  });

  it('names every metric by the rules: mailfront_ prefix, _total on counters only, base units, no user or address label', async () => {
    const metrics = new Metrics();
    const families = await metrics.registry.getMetricsAsJSON();
    const forbiddenLabels = /^(user|username|login|ip|address|client|client_address|remote|host|session)$/;
    for (const family of families) {
      assert.match(family.name, /^(mailfront|process|nodejs)_[a-z0-9_]+$/, family.name);
      const type = String(family.type);
      if (type === 'counter') assert.match(family.name, /_total$/, `${family.name} is a counter`);
      else assert.doesNotMatch(family.name, /_total$/, `${family.name} is a ${type}`);
      assert.doesNotMatch(family.name, /_(ms|milliseconds|kb|kilobytes|mb|minutes|hours)(_|$)/, `${family.name} uses base units`);
      if (type === 'histogram') assert.match(family.name, /_(seconds|bytes)$/, `${family.name} has a unit`);
      for (const v of family.values) for (const label of Object.keys(v.labels)) assert.doesNotMatch(label, forbiddenLabels, `${family.name} has label ${label}`);
      assert.ok(family.help.length > 0, `${family.name} has help`);
    }
    // A fresh instance has series in only some families: the labels each family declares are
    // checked too, so that a family no test has recorded into yet cannot carry a user or address.
    const declared = metrics.registry.getMetricsAsArray().filter((m) => m.name.startsWith('mailfront_'));
    assert.ok(declared.length >= 26, `${declared.length} mailfront_ families`);
    for (const family of declared) {
      const labelNames = (family as unknown as { labelNames?: unknown }).labelNames;
      assert.ok(Array.isArray(labelNames) && labelNames.every((l) => typeof l === 'string'), `${family.name} declares its label names`);
      for (const label of labelNames as string[]) assert.doesNotMatch(label, forbiddenLabels, `${family.name} declares label ${label}`);
    }
    // Process metrics are there, unprefixed, on this registry only.
    assert.ok(metrics.metricNames().includes('process_cpu_seconds_total'));
    assert.ok(metrics.metricNames().includes('nodejs_eventloop_lag_seconds'));
  });

  it('has a Redis throttle series only while the throttle uses Redis', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const exposed = async (): Promise<string> => (await metrics.exposition()).body;
    assert.doesNotMatch(await exposed(), /mailfront_throttle_redis_up/);
    metrics.throttleRedis(false);
    assert.match(await exposed(), /^mailfront_throttle_redis_up 0$/m);
    metrics.throttleRedis(true);
    assert.match(await exposed(), /^mailfront_throttle_redis_up 1$/m);
    metrics.throttleRedis(null);
    assert.doesNotMatch(await exposed(), /mailfront_throttle_redis_up/);
    metrics.throttleRedis(true);
    assert.match(await exposed(), /^# TYPE mailfront_throttle_redis_up gauge\nmailfront_throttle_redis_up 1$/m);
  });

  it('drops the PROXY header series of listeners a reload removed or renamed', async () => {
    const metrics = new Metrics({ processMetrics: false });
    metrics.proxyHeader('imap', 'accepted');
    metrics.proxyHeader('imap', 'accepted');
    metrics.proxyHeader('pop3-old', 'malformed');
    metrics.listenersInForce(['imap', 'pop3']);
    assert.equal(await value(metrics, 'mailfront_proxy_headers_total', { listener: 'imap', result: 'accepted' }), 2);
    assert.equal(await value(metrics, 'mailfront_proxy_headers_total', { listener: 'pop3-old', result: 'malformed' }), undefined);
  });

  it('counts TLS handshakes done by listener, version and resumption, and drops the series of listeners a reload removed', async () => {
    const metrics = new Metrics({ processMetrics: false });
    metrics.tlsHandshake('imaps', 'TLSv1.3', false);
    metrics.tlsHandshake('imaps', 'TLSv1.3', true);
    metrics.tlsHandshake('imaps', 'TLSv1.3', true);
    metrics.tlsHandshake('imap', 'TLSv1.2', false);
    metrics.tlsHandshake('imap', null, false);
    metrics.tlsHandshake('pop3s-old', 'TLSv1.3', false);
    metrics.listenersInForce(['imaps', 'imap']);
    assert.equal(await value(metrics, 'mailfront_tls_handshakes_total', { listener: 'imaps', version: 'TLSv1.3', resumed: 'true' }), 2);
    assert.equal(await value(metrics, 'mailfront_tls_handshakes_total', { listener: 'imaps', version: 'TLSv1.3', resumed: 'false' }), 1);
    assert.equal(await value(metrics, 'mailfront_tls_handshakes_total', { listener: 'imap', version: 'TLSv1.2', resumed: 'false' }), 1);
    assert.equal(await value(metrics, 'mailfront_tls_handshakes_total', { listener: 'imap', version: 'unknown', resumed: 'false' }), 1);
    assert.equal(await value(metrics, 'mailfront_tls_handshakes_total', { listener: 'pop3s-old', version: 'TLSv1.3', resumed: 'false' }), undefined);
  });

  it('counts failed implicit-TLS handshakes by listener and reason, and drops the series of listeners a reload removed', async () => {
    const metrics = new Metrics({ processMetrics: false });
    metrics.tlsHandshakeFailure('imaps', 'error');
    metrics.tlsHandshakeFailure('imaps', 'error');
    metrics.tlsHandshakeFailure('imaps', 'timeout');
    metrics.tlsHandshakeFailure('pop3s-old', 'closed');
    metrics.listenersInForce(['imaps']);
    assert.equal(await value(metrics, 'mailfront_tls_handshake_failures_total', { listener: 'imaps', reason: 'error' }), 2);
    assert.equal(await value(metrics, 'mailfront_tls_handshake_failures_total', { listener: 'imaps', reason: 'timeout' }), 1);
    assert.equal(await value(metrics, 'mailfront_tls_handshake_failures_total', { listener: 'pop3s-old', reason: 'closed' }), undefined);
  });

  it('keeps two instances apart', async () => {
    const a = new Metrics({ processMetrics: false });
    const b = new Metrics({ processMetrics: false });
    a.failover('store1');
    assert.equal(await value(a, 'mailfront_failovers_total', { store: 'store1' }), 1);
    assert.equal(await value(b, 'mailfront_failovers_total', { store: 'store1' }), undefined);
  });

  it('labels the build', async () => {
    const metrics = new Metrics({ processMetrics: false, version: '1.2.3' });
    assert.equal(await value(metrics, 'mailfront_build_info', { version: '1.2.3', nodejs_version: process.versions.node }), 1);
    const { body, contentType } = await metrics.exposition();
    assert.match(contentType, /^text\/plain/);
    assert.match(body, /^mailfront_build_info\{version="1.2.3",nodejs_version="[^"]+"\} 1$/m);
  });

  it('keeps the default process metrics cheap: no series listing every handle, and process_open_fds without a listing of /proc/self/fd at each scrape', async () => {
    // Every reader of node:fs (prom-client's require, this module's imports) sees the spy.
    const fs = createRequire(import.meta.url)('node:fs') as typeof import('node:fs');
    const original = fs.readdirSync;
    let listings = 0;
    fs.readdirSync = ((path: Parameters<typeof original>[0], ...rest: unknown[]) => {
      if (String(path) === '/proc/self/fd') listings++;
      return (original as (...args: unknown[]) => unknown)(path, ...rest);
    }) as typeof original;
    syncBuiltinESMExports();
    try {
      const metrics = new Metrics({ version: '1.2.3' });
      let body = '';
      for (let i = 0; i < 5; i++) body = (await metrics.exposition()).body;
      assert.ok(listings <= 1, `/proc/self/fd was listed ${listings} times for 5 scrapes`);
      for (const name of ['nodejs_active_handles', 'nodejs_active_handles_total', 'nodejs_active_resources', 'nodejs_active_resources_total']) {
        assert.doesNotMatch(body, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is left out`);
      }
      if (process.platform === 'linux') {
        const fds = Number(/^process_open_fds (\d+)$/m.exec(body)?.[1]);
        const actual = original('/proc/self/fd').length - 1;
        assert.ok(Math.abs(fds - actual) <= 5, `process_open_fds ${fds}, ${actual} descriptors open`);
      }
      assert.match(body, /^process_max_fds /m);
      assert.match(body, /^nodejs_heap_size_used_bytes /m);
    } finally {
      fs.readdirSync = original;
      syncBuiltinESMExports();
    }
    assert.equal(readdirSync, original, 'the spy is gone');
  });
});

describe('metrics: a render that never settles', () => {
  /** GET /metrics: the status, or 'no answer' within 5 s. */
  const scrape = (port: number): Promise<{ status: number | string; body: string }> =>
    new Promise((resolve) => {
      const request = get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      });
      request.setTimeout(5_000, () => {
        request.destroy();
        resolve({ status: 'no answer', body: '' });
      });
      request.on('error', (error) => resolve({ status: String(error), body: '' }));
    });

  it('fails its scrape past the render deadline (500), and the next scrape renders anew', async () => {
    const metrics = new Metrics({ processMetrics: false, renderDeadlineMs: 200 });
    let hang = true;
    new Gauge({
      name: 'test_collect_calls',
      help: 'a collect function that never settles while `hang` is set',
      registers: [metrics.registry],
      collect: () => (hang ? new Promise<void>(() => undefined) : undefined),
    });
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log: createLogger('silent'), readiness: () => readinessOf([]) });
    await server.listen();
    try {
      const port = server.address().port;
      assert.equal((await scrape(port)).status, 500);
      hang = false;
      const next = await scrape(port);
      assert.equal(next.status, 200);
      assert.match(next.body, /^test_collect_calls 0$/m);
    } finally {
      await server.close();
    }
  });
});
