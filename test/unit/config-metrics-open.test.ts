// An HTTP listener beyond loopback without http.metrics_token serves /metrics to anyone who reaches
// it, and /metrics tells whoever scrapes it while trying logins which user names exist (README,
// Security). check-config and serve now say so (config.metrics_open); nothing did.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { configWarnings } from '../../src/config/schema.js';

const BASE = { failover: { holdMs: 15_000, drainSpreadMs: 2_000 }, session: { preauthTimeoutMs: 60_000 }, shutdown: { unreadyDelayMs: 5_000, drainTimeoutMs: 10_000 } };

function openWarnings(http: { host: string; port: number; metricsToken?: string } | undefined): string[] {
  return configWarnings({ ...BASE, ...(http !== undefined ? { http } : {}) } as Parameters<typeof configWarnings>[0])
    .filter((w) => w.event === 'config.metrics_open')
    .map((w) => `${w.path}: ${w.text}`);
}

test('an HTTP listener beyond loopback without a metrics token is warned of, naming the address', () => {
  for (const host of ['0.0.0.0', '::', '10.0.0.5', 'mailfront.example.org', '[2001:db8::1]']) {
    const [warning, ...more] = openWarnings({ host, port: 9143 });
    assert.equal(more.length, 0, host);
    assert.equal(warning, `http.metrics_token: http.host ${host} is not a loopback address and http.metrics_token is not set: /metrics answers anyone who reaches ${host}:9143; set metrics_token_file (Prometheus's authorization: { credentials_file }), or listen on 127.0.0.1 behind a proxy that authenticates`);
  }
});

test('loopback, a metrics token, or no HTTP listener: no warning', () => {
  for (const host of ['127.0.0.1', '127.3.2.1', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) assert.deepEqual(openWarnings({ host, port: 9143 }), [], host);
  assert.deepEqual(openWarnings({ host: '0.0.0.0', port: 9143, metricsToken: 'a-metrics-token-of-length' }), []);
  assert.deepEqual(openWarnings(undefined), []);
});
