// /metrics behind a bearer token (http.metrics_token): an HTTP listener that must listen beyond
// loopback (Prometheus on another host) no longer tells anyone who reaches it which user names
// exist. A scrape without the token, or with another, gets 401 with WWW-Authenticate as the
// admin API answers; /healthz and /readyz stay open (balancers); a rebind (a reload) puts a
// changed token in force, whether or not the address moved.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { HttpServer, bearerCheck, readHttpConfig, readinessOf } from '../../src/server/http.js';

const TOKEN = 'metrics-token-0123456789abcdef';
const NEXT_TOKEN = 'metrics-token-after-the-reload-42';
/** Every visible ASCII character that is not a letter or a digit: each a token may hold, as curl sends it. */
const PUNCTUATION_TOKEN = 'Ab1!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
const INNER_SPACES_TOKEN = 'correct horse  battery staple';

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

function call(port: number, method: string, path: string, authorization?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, agent: false, headers: authorization === undefined ? {} : { authorization } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('http.metrics_token: the config key', () => {
  it('is read into metricsToken; absent, /metrics stays open', () => {
    const issues = new IssueList();
    assert.deepEqual(readHttpConfig({ host: '127.0.0.1', port: 0, metrics_token: TOKEN }, 'http', issues), { host: '127.0.0.1', port: 0, metricsToken: TOKEN });
    assert.deepEqual(readHttpConfig({ port: 9143 }, 'http', issues), { host: '127.0.0.1', port: 9143 });
    assert.deepEqual(issues.issues, []);
  });

  it('refuses a token under 16 characters, or no string, naming the key and never the value', () => {
    for (const [value, found] of [
      ['short-secret', 'a string of 12 characters'],
      [12345678901234567890, 'a number (not shown: a secret)'],
      ['', 'an empty string'],
    ] as const) {
      const issues = new IssueList();
      readHttpConfig({ metrics_token: value }, 'http', issues);
      assert.equal(issues.issues.length, 1, JSON.stringify(issues.issues));
      assert.equal(issues.issues[0]!.path, 'http.metrics_token');
      assert.equal(issues.issues[0]!.found, found);
      assert.ok(!JSON.stringify(issues.issues).includes(String(value)) || value === '', JSON.stringify(issues.issues));
    }
  });

  it('refuses a token with whitespace or a character beyond visible ASCII, saying where and what, never the token; takes any visible ASCII punctuation', () => {
    // HTTP strips the whitespace around a header's value (node did before bearerCheck saw it): a
    // token file holding "abc…z " passed, then every request got 401. curl sends UTF-8, node reads latin1.
    for (const [value, found] of [
      ['abcdefghijklmnopqrstuvwxyz ', 'a string of 27 characters with a space at its end'],
      ['\tabcdefghijklmnopqrstuvwxyz', 'a string of 27 characters with a tab at its start'],
      ['  abcdefghijklmnopqrstuvwxyz', 'a string of 28 characters with a space at its start'],
      ['abcdefghijklmnopqrstuvwxy\r\nz', 'a string of 28 characters with a line break at character 26, and 1 more such character'],
      ['abcdéfghijklmnopqrstuvwxyz', 'a string of 26 characters with a character beyond ASCII at character 5'],
      ['\ufeffabcdefghijklmnopqrstuvwxyz', 'a string of 27 characters with a byte order mark (U+FEFF, an editor\'s) at its start'],
      ['abcdefghijklm\u00a0nopqrstuvwxyz', 'a string of 27 characters with a whitespace character at character 14'],
      ['abcdefghijklmnopqrstuvwxyz\x7f', 'a string of 27 characters with a control character at its end'],
      ['short é ', 'a string of 8 characters with a character beyond ASCII at character 7, and 1 more such character'],
    ] as const) {
      const issues = new IssueList();
      readHttpConfig({ metrics_token: value }, 'http', issues);
      assert.equal(issues.issues.length, 1, JSON.stringify(issues.issues));
      assert.equal(issues.issues[0]!.path, 'http.metrics_token');
      assert.match(issues.issues[0]!.expected, /^a token of visible ASCII characters \(0x21 to 0x7E: letters, digits and punctuation\) and spaces between them, as an Authorization: Bearer header carries it unchanged: no whitespace at its start or end/);
      assert.equal(issues.issues[0]!.found, found, JSON.stringify(value));
      assert.ok(!JSON.stringify(issues.issues).includes('abcdefghijklm'), JSON.stringify(issues.issues));
    }
    // Spaces between visible characters reach mailfront as written, and always worked: taken.
    for (const value of [PUNCTUATION_TOKEN, INNER_SPACES_TOKEN, 'Zk8s0d9f8g7h6j5k4l3m2n1b0v9c8x7==', 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl']) {
      const issues = new IssueList();
      assert.equal(readHttpConfig({ metrics_token: value }, 'http', issues)?.metricsToken, value);
      assert.deepEqual(issues.issues, []);
    }
  });

  it('takes metrics_token_file unread only for the operator commands: elsewhere the loader has read it, and one left is refused, not taken for no token', () => {
    const issues = new IssueList();
    assert.deepEqual(readHttpConfig({ port: 9143, metrics_token_file: '/etc/mailfront/metrics-token' }, 'http', issues, true), { host: '127.0.0.1', port: 9143 });
    assert.deepEqual(issues.issues, []);
    readHttpConfig({ port: 9143, metrics_token_file: '/etc/mailfront/metrics-token' }, 'http', issues);
    assert.deepEqual(issues.issues, [{ path: 'http.metrics_token_file', expected: 'one of the known keys (host, port, metrics_token)', found: 'an unknown key "metrics_token_file"' }]);
  });
});

describe('bearerCheck', () => {
  it('reads the scheme case-insensitively after one or more spaces, as the admin API does', () => {
    assert.equal(bearerCheck(`Bearer ${TOKEN}`, TOKEN), 'ok');
    assert.equal(bearerCheck(`bearer   ${TOKEN}`, TOKEN), 'ok');
    assert.equal(bearerCheck(`BEARER ${TOKEN}`, TOKEN), 'ok');
    assert.equal(bearerCheck(undefined, TOKEN), 'missing');
    assert.equal(bearerCheck('', TOKEN), 'missing');
    assert.equal(bearerCheck(`Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}`, TOKEN), 'missing');
    assert.equal(bearerCheck('Bearer ', TOKEN), 'missing');
    assert.equal(bearerCheck(`Bearer ${TOKEN}x`, TOKEN), 'invalid');
    assert.equal(bearerCheck(`Bearer ${TOKEN.slice(0, -1)}`, TOKEN), 'invalid');
  });
});

describe('http listener with http.metrics_token', () => {
  const metrics = new Metrics({ processMetrics: false, version: '9.9.9' });
  const server = new HttpServer({ host: '127.0.0.1', port: 0, metricsToken: TOKEN }, { metrics, log: createLogger('silent'), readiness: () => readinessOf([{ name: 'listeners', ok: true }]) });
  let port = 0;

  before(async () => {
    await server.listen();
    port = server.address().port;
  });
  after(() => server.close());

  it('answers a scrape without the token 401 with WWW-Authenticate, one with another token 401 invalid_token, and one bearing it the metrics', async () => {
    const none = await call(port, 'GET', '/metrics');
    assert.equal(none.status, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="mailfront-metrics"');
    assert.equal(none.body, 'a valid bearer token is required\n');
    assert.ok(!none.body.includes('mailfront_'));
    const wrong = await call(port, 'GET', '/metrics', `Bearer ${NEXT_TOKEN}`);
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers['www-authenticate'], 'Bearer realm="mailfront-metrics", error="invalid_token"');
    const basic = await call(port, 'GET', '/metrics', `Basic ${Buffer.from(`prometheus:${TOKEN}`).toString('base64')}`);
    assert.equal(basic.status, 401);
    const head = await call(port, 'HEAD', '/metrics');
    assert.equal(head.status, 401);
    assert.equal(head.body, '');
    const right = await call(port, 'GET', '/metrics', `Bearer ${TOKEN}`);
    assert.equal(right.status, 200);
    assert.match(right.body, /^mailfront_build_info\{version="9\.9\.9"/m);
  });

  it('leaves /healthz and /readyz open: a balancer checks them without a token', async () => {
    assert.equal((await call(port, 'GET', '/healthz')).status, 200);
    assert.equal((await call(port, 'GET', '/readyz')).status, 200);
    assert.equal((await call(port, 'HEAD', '/readyz')).status, 200);
  });

  it('takes the token a rebind gives (a reload), on the same address, and opens /metrics when the token is gone', async () => {
    await server.rebind({ host: '127.0.0.1', port, metricsToken: NEXT_TOKEN });
    assert.equal(server.address().port, port, 'the same socket');
    assert.equal((await call(port, 'GET', '/metrics', `Bearer ${TOKEN}`)).status, 401);
    assert.equal((await call(port, 'GET', '/metrics', `Bearer ${NEXT_TOKEN}`)).status, 200);
    await server.rebind({ host: '127.0.0.1', port });
    assert.equal((await call(port, 'GET', '/metrics')).status, 200);
    await server.rebind({ host: '127.0.0.1', port, metricsToken: TOKEN });
    assert.equal((await call(port, 'GET', '/metrics')).status, 401);
  });

  it('matches a token of any visible ASCII punctuation as a client sends it, and never one with a space at its end: the reason the config refuses that', async () => {
    await server.rebind({ host: '127.0.0.1', port, metricsToken: PUNCTUATION_TOKEN });
    assert.equal((await call(port, 'GET', '/metrics', `Bearer ${PUNCTUATION_TOKEN}`)).status, 200);
    await server.rebind({ host: '127.0.0.1', port, metricsToken: INNER_SPACES_TOKEN });
    assert.equal((await call(port, 'GET', '/metrics', `Bearer ${INNER_SPACES_TOKEN}`)).status, 200, 'a token with spaces between its characters');
    const spaced = 'abcdefghijklmnopqrstuvwxyz ';
    await server.rebind({ host: '127.0.0.1', port, metricsToken: spaced });
    assert.equal((await call(port, 'GET', '/metrics', `Bearer ${spaced}`)).status, 401, 'the header\'s value arrives without its last space');
    await server.rebind({ host: '127.0.0.1', port, metricsToken: TOKEN });
  });
});
