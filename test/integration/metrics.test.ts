// Prometheus's own linter on mailfront's real /metrics output, after every metric helper ran once.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { HttpServer, readinessOf } from '../../src/server/http.js';

const PROMTOOL = '/usr/bin/promtool';

/** Runs `promtool check metrics` on `exposition`; returns its exit code and everything it printed. */
function promtoolCheck(exposition: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PROMTOOL, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => out.push(c));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output: Buffer.concat(out).toString('utf8') }));
    child.stdin.end(exposition);
  });
}

/** Calls every helper of Metrics once; fails when Metrics gained a helper this list does not call. */
function exerciseEveryHelper(metrics: Metrics): void {
  const called = new Set<string>();
  const record = <T>(name: string, f: () => T): T => {
    called.add(name);
    return f();
  };
  const session = record('sessionStarted', () => metrics.sessionStarted('imap'));
  session.phase('preauth');
  session.phase('spliced');
  session.ended('client-closed');
  record('loginResult', () => metrics.loginResult('imap', 'auth-failed', 2.1));
  record('authFailure', () => metrics.authFailure('wrong-password'));
  record('oauthIdpFetch', () => metrics.oauthIdpFetch('jwks', 'ok'));
  record('oauthIntrospection', () => metrics.oauthIntrospection('timeout', 2.0));
  metrics.oauthIntrospection('timeout-queued', 0.3);
  record('oauthIntrospectionNotSent', () => metrics.oauthIntrospectionNotSent());
  record('oauthIdpStopped', () => metrics.oauthIdpStopped());
  record('masterLogin', () => metrics.masterLogin('imap', 'not-authorized'));
  record('oauthLogin', () => metrics.oauthLogin('imap', 'OAUTHBEARER', 'auth-failed'));
  record('passwordPolicyWarning', () => metrics.passwordPolicyWarning('expiring'));
  record('ldapRequest', () => metrics.ldapRequest('user-bind', 'invalid-credentials', 0.004));
  record('backendConnect', () => metrics.backendConnect('store1', 'success', 0.0007));
  record('backendLogin', () => metrics.backendLogin('store1', 'success', 0.02));
  record('bytesProxied', () => metrics.bytesProxied('client-to-backend', 4096));
  record('splicedTraffic', () => metrics.splicedTraffic({ traffic: { bytesFromClient: 10, bytesToClient: 900 }, reportedFromClient: 4, reportedToClient: 0 }));
  record('storeMapInForce', () => metrics.storeMapInForce(7, new Map([['store1', { currentMaster: 'slot101', preferredMaster: 'slot101', slots: new Map([['slot101', {}], ['slot102', {}]]) }]])));
  record('storeMapLoaded', () => metrics.storeMapLoaded());
  record('storeMapRejected', () => metrics.storeMapRejected());
  record('storeMapSourceHealth', () => metrics.storeMapSourceHealth(true));
  record('slotHealthCleared', () => metrics.slotHealthCleared());
  record('slotHealth', () => metrics.slotHealth('store1', 'slot102', false));
  record('failover', () => metrics.failover('store1'));
  record('throttleRedis', () => metrics.throttleRedis(false));
  record('throttleRefusal', () => metrics.throttleRefusal('address'));
  record('connectionRefused', () => metrics.connectionRefused('user'));
  record('connectionEvicted', () => metrics.connectionEvicted('preauth'));
  record('configReloaded', () => metrics.configReloaded('failure'));
  record('proxyHeader', () => metrics.proxyHeader('imap', 'untrusted'));
  record('listenersInForce', () => metrics.listenersInForce(['imap']));
  record('listenerCertificates', () => metrics.listenerCertificates('imap', [{ file: '/etc/mailfront/tls/example.org.crt', validTo: new Date('2030-01-01T00:00:00Z') }]));
  record('tlsHandshake', () => metrics.tlsHandshake('imaps', 'TLSv1.3', true));
  record('tlsHandshakeFailure', () => metrics.tlsHandshakeFailure('imaps', 'timeout'));
  record('clientIdAddress', () => metrics.clientIdAddress(true));
  record('directoryCacheLookup', () => metrics.directoryCacheLookup('auth', true));
  record('directoryCacheEntries', () => metrics.directoryCacheEntries(() => ({ auth: 3, entry: 2 })));
  record('readiness', () => metrics.readiness(async () => true));
  record('connectionLimits', () => metrics.connectionLimits({ connections: 9, maxConnections: 10 }));
  const notHelpers = new Set(['constructor', 'exposition', 'metricNames', 'beforeScrape']);
  const helpers = Object.getOwnPropertyNames(Metrics.prototype).filter((n) => !notHelpers.has(n) && typeof (metrics as unknown as Record<string, unknown>)[n] === 'function');
  assert.deepEqual(helpers.filter((h) => !called.has(h)), [], 'every metric helper is exercised before promtool looks');
}

describe('metrics exposition', () => {
  it('passes promtool check metrics with every metric in use, process metrics included', async () => {
    const metrics = new Metrics({ version: '0.0.0-test' });
    exerciseEveryHelper(metrics);
    const server = new HttpServer({ host: '127.0.0.1', port: 0 }, { metrics, log: createLogger('silent'), readiness: () => readinessOf([]) });
    await server.listen();
    let body: string;
    try {
      const response = await fetch(`http://127.0.0.1:${server.address().port}/metrics`);
      assert.equal(response.status, 200);
      body = await response.text();
    } finally {
      await server.close();
    }
    for (const name of metrics.metricNames()) assert.match(body, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is exposed`);
    assert.match(body, /^process_cpu_seconds_total /m);
    const { code, output } = await promtoolCheck(body);
    assert.equal(output, '', `promtool reported problems:\n${output}`);
    assert.equal(code, 0);
  });

  it('would notice a problem (promtool is really checking)', async () => {
    const { code, output } = await promtoolCheck('# HELP bad_total x\n# TYPE bad_total gauge\nbad_total 1\n');
    assert.notEqual(code, 0);
    assert.match(output, /_total/);
  });
});
