/**
 * The OAuth identity provider's requests in the metrics: mailfront_oauth_idp_requests_total by
 * endpoint (jwks, discovery, introspection) and result, mailfront_oauth_introspection_duration_seconds
 * and mailfront_oauth_idp_last_success_timestamp_seconds, against the suite's IdP stand-in
 * (oauth-idp.ts: a node http server on 127.0.0.1) made to answer, fail with a status, stall
 * past the deadline or answer something else, and against a port nothing listens on (refused)
 * and a server that accepts and never answers. Then a running mailfront (slapd as its directory;
 * no backend is reached) exposes them on /metrics, its keys' fetch and a token's introspection
 * counted. Every series is there at 0 from the start.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { OAuthVerifier } from '../../src/auth/oauth.js';
import type { OAuthConfig } from '../../src/auth/oauth-config.js';
import { JWT_ALGORITHMS } from '../../src/auth/oauth-config.js';
import { Canceller } from '../../src/cancel.js';
import { Metrics } from '../../src/metrics.js';
import type { OAuthIdpEndpoint, OAuthIdpResult, OAuthIntrospectionResult } from '../../src/metrics.js';
import { assertNoRegisteredSecret, capturedLogger, registerSecrets, startFront } from './front.js';
import type { Front } from './front.js';
import { JwksServer, claimsFor, makeKey, signJwt } from './oauth-idp.js';
import { LineClient, refusingPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';

const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const CLIENT = { id: 'mailfront', secret: 'Idp-metrics-secret-5d7a' };
registerSecrets([CLIENT.secret]);
const key = makeKey('metrics-ec', 'ES256');

const { log, lines } = capturedLogger('debug');
const signal = new Canceller();
let idp: JwksServer;
/** Accepts connections and never answers: a hung IdP. */
let silent: Server;
const held: Socket[] = [];
/** A port nothing listens on: connections to it are refused. */
let refusedPort: number;

before(async () => {
  idp = await JwksServer.start([key]);
  idp.clients.set(CLIENT.id, CLIENT.secret);
  silent = createServer((socket) => void held.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  refusedPort = await refusingPort();
});
after(async () => {
  assertNoRegisteredSecret(lines, 'the IdP metrics tests\' log');
  for (const socket of held) socket.destroy();
  await new Promise((resolve) => silent?.close(resolve));
  await idp?.stop();
});

const silentUrl = (path: string): string => `http://127.0.0.1:${(silent.address() as { port: number }).port}${path}`;
const refusedUrl = (path: string): string => `http://127.0.0.1:${refusedPort}${path}`;

function config(overrides: { [K in keyof OAuthConfig]?: OAuthConfig[K] | undefined } = {}): OAuthConfig {
  return {
    issuers: [ISSUER],
    audiences: [AUDIENCE],
    jwksUrl: idp.url,
    jwksRefreshMs: 600_000,
    // Every unknown kid fetches the keys again: each case's fetch is one login away.
    jwksUnknownKidRefetchMs: 0,
    jwksTimeoutMs: 300,
    userClaim: 'email',
    clockSkewMs: 30_000,
    algorithms: [...JWT_ALGORITHMS],
    tokenCacheMs: 0,
    tokenCheck: 'auto',
    introspectionUrl: idp.introspectionUrl,
    clientId: CLIENT.id,
    clientSecret: CLIENT.secret,
    introspectionTimeoutMs: 300,
    introspectionConcurrency: 4,
    introspectionNegativeCacheMs: 0,
    ...overrides,
  } as OAuthConfig;
}

/** The value of mailfront_oauth_idp_requests_total for `endpoint` and `result`; undefined when the series is absent. */
async function requests(metrics: Metrics, endpoint: OAuthIdpEndpoint, result: OAuthIntrospectionResult): Promise<number | undefined> {
  const metric = metrics.registry.getSingleMetric('mailfront_oauth_idp_requests_total');
  assert.ok(metric !== undefined, 'mailfront_oauth_idp_requests_total is registered');
  const { values } = await metric.get();
  return values.find((v) => v.labels['endpoint'] === endpoint && v.labels['result'] === result)?.value;
}

/** Every mailfront_oauth_idp_requests_total series, as "endpoint result" to its value, the zeros left out. */
async function nonZero(metrics: Metrics): Promise<Record<string, number>> {
  const metric = metrics.registry.getSingleMetric('mailfront_oauth_idp_requests_total');
  assert.ok(metric !== undefined, 'mailfront_oauth_idp_requests_total is registered');
  const { values } = await metric.get();
  return Object.fromEntries(values.filter((v) => v.value !== 0).map((v) => [`${String(v.labels['endpoint'])} ${String(v.labels['result'])}`, v.value]));
}

/** Waits (at most 5 s) until `check` holds. */
async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.fail(`not within 5 s: ${what}`);
}

/** Verifies `token`, which must be refused or fail; the error's code. */
async function failure(verifier: OAuthVerifier, token: string): Promise<string> {
  try {
    await verifier.verify(token, signal);
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  }
  assert.fail('the token was taken');
}

function opaque(user: string, from: JwksServer = idp): string {
  const token = from.issue({ token_type: 'Bearer', client_id: 'thunderbird', ...claimsFor(user, ISSUER, AUDIENCE) });
  registerSecrets([token]);
  return token;
}

/** An IdP stand-in of a case's own: the introspection cases that run at once each set its delay. */
async function ownIdp(): Promise<JwksServer> {
  const own = await JwksServer.start([key]);
  own.clients.set(CLIENT.id, CLIENT.secret);
  return own;
}

/** A JWT naming a kid no JWKS has: its check fetches the keys again. */
function unknownKid(): string {
  const token = signJwt(key, claimsFor('ada', ISSUER, AUDIENCE), { kid: `gone-${Math.random().toString(36).slice(2)}` });
  registerSecrets([token]);
  return token;
}

describe('requests to the OAuth IdP in the metrics', () => {
  test('every endpoint and result reads 0 from the start (introspection\'s timeout-queued and not-sent too), without oauth2', async () => {
    const metrics = new Metrics({ processMetrics: false });
    for (const endpoint of ['jwks', 'discovery', 'introspection'] as const) {
      for (const result of ['ok', 'timeout', 'connection-error', 'http-4xx', 'http-5xx', 'http-other', 'bad-answer'] as const) {
        assert.equal(await requests(metrics, endpoint, result), 0, `${endpoint} ${result}`);
      }
    }
    assert.equal(await requests(metrics, 'introspection', 'not-sent'), 0, 'introspection not-sent');
    assert.equal(await requests(metrics, 'introspection', 'timeout-queued'), 0, 'introspection timeout-queued');
    assert.equal(await requests(metrics, 'jwks', 'not-sent'), undefined, 'keys and document are never left unsent');
    assert.equal(await requests(metrics, 'jwks', 'timeout-queued'), undefined, 'keys and document are never queued');
    const { body } = await metrics.exposition();
    assert.match(body, /^mailfront_oauth_introspection_duration_seconds_count\{result="ok"\} 0$/m);
    assert.doesNotMatch(body, /^mailfront_oauth_idp_last_success_timestamp_seconds\{/m, 'no success yet');
  });

  test('JWKS fetches: ok at start, an HTTP 500, a 200 that is no JWKS, a connection refused, an IdP that never answers', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const verifier = OAuthVerifier.create(config(), log, metrics);
    const refused = OAuthVerifier.create(config({ jwksUrl: refusedUrl('/certs') }), log, metrics);
    const hung = OAuthVerifier.create(config({ jwksUrl: silentUrl('/certs') }), log, metrics);
    try {
      const startedAt = Date.now() / 1000;
      await until(async () => (await requests(metrics, 'jwks', 'ok')) === 1, 'the start\'s fetch counted ok');
      await until(async () => (await requests(metrics, 'jwks', 'connection-error')) === 1, 'the refused fetch counted');
      await until(async () => (await requests(metrics, 'jwks', 'timeout')) === 1, 'the hung fetch counted');
      const { body } = await metrics.exposition();
      const stamp = Number(/^mailfront_oauth_idp_last_success_timestamp_seconds\{endpoint="jwks"\} (\S+)$/m.exec(body)?.[1]);
      assert.ok(stamp >= startedAt - 1 && stamp <= Date.now() / 1000 + 1, `the last success's time (${stamp})`);

      idp.failWith = 500;
      assert.equal(await failure(verifier, unknownKid()), 'OAUTH_UNKNOWN_KEY', 'the keys held stay in use');
      idp.heal();
      assert.equal(await requests(metrics, 'jwks', 'http-5xx'), 1);
      idp.failWith = 404;
      await failure(verifier, unknownKid());
      idp.heal();
      assert.equal(await requests(metrics, 'jwks', 'http-4xx'), 1);
      // A 200 whose keys mailfront cannot use: the answer's fault, not the connection's.
      const keys = idp.keys;
      idp.keys = [];
      await failure(verifier, unknownKid());
      idp.keys = keys;
      assert.equal(await requests(metrics, 'jwks', 'bad-answer'), 1);
      await failure(verifier, unknownKid());
      assert.deepEqual(await nonZero(metrics), { 'jwks ok': 2, 'jwks http-5xx': 1, 'jwks http-4xx': 1, 'jwks bad-answer': 1, 'jwks connection-error': 1, 'jwks timeout': 1 });
    } finally {
      verifier.close();
      refused.close();
      hung.close();
    }
  });

  test('failures in a row by endpoint: each failure adds one, an ok answer resets it, the verifier\'s close too', async () => {
    // What MailfrontOAuthIdpErrors reads for jwks and discovery: the count does not depend on
    // how often they are fetched (oauth2.jwks_refresh_ms), where a ratio over a window did.
    const metrics = new Metrics({ processMetrics: false });
    const inARow = async (endpoint: OAuthIdpEndpoint): Promise<number | undefined> => {
      const { body } = await metrics.exposition();
      const found = new RegExp(`^mailfront_oauth_idp_consecutive_failures\\{endpoint="${endpoint}"\\} (\\S+)$`, 'm').exec(body);
      return found === null ? undefined : Number(found[1]);
    };
    for (const endpoint of ['jwks', 'discovery', 'introspection'] as const) assert.equal(await inARow(endpoint), 0, `${endpoint} from the start`);
    const verifier = OAuthVerifier.create(config(), log, metrics);
    try {
      await until(async () => (await requests(metrics, 'jwks', 'ok')) === 1, 'the start\'s fetch counted ok');
      assert.equal(await inARow('jwks'), 0);
      idp.failWith = 500;
      await failure(verifier, unknownKid());
      assert.equal(await inARow('jwks'), 1, 'one failed fetch');
      idp.failWith = 404;
      await failure(verifier, unknownKid());
      assert.equal(await inARow('jwks'), 2, 'a second one in a row');
      idp.heal();
      await failure(verifier, unknownKid());
      assert.equal(await inARow('jwks'), 0, 'an ok answer resets it');
      idp.failWith = 500;
      await failure(verifier, unknownKid());
      idp.heal();
      assert.equal(await inARow('jwks'), 1);

      idp.introspectionFailWith = 500;
      assert.equal(await failure(verifier, opaque('ada')), 'OAUTH_INTROSPECTION_UNAVAILABLE');
      assert.equal(await failure(verifier, opaque('bob')), 'OAUTH_INTROSPECTION_UNAVAILABLE');
      idp.heal();
      assert.equal(await inARow('introspection'), 2);
      assert.equal((await verifier.verify(opaque('ada'), signal)).user, 'ada@example.org');
      assert.equal(await inARow('introspection'), 0);
      assert.equal(await inARow('discovery'), 0, 'no document configured, none fetched');
    } finally {
      idp.heal();
      verifier.close();
    }
    // A reload's verifier, or none (oauth2 removed), counts from 0: no alert left firing without oauth2.
    assert.equal(await inARow('jwks'), 0, 'the close resets it');
  });

  test('the OpenID configuration document: ok, another issuer\'s document, a connection refused', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const discovery = { issuers: [idp.issuer], jwksUrl: undefined, introspectionUrl: undefined, openidConfigurationUrl: idp.discoveryUrl, discoveryIssuers: [idp.issuer] };
    const verifier = OAuthVerifier.create(config(discovery), log, metrics);
    try {
      await until(async () => (await requests(metrics, 'discovery', 'ok')) === 1 && (await requests(metrics, 'jwks', 'ok')) === 1, 'the document and its keys counted ok');
      // Refetched for an unknown kid: the keys only, the document read already.
      await failure(verifier, unknownKid());
      assert.equal(await requests(metrics, 'jwks', 'ok'), 2);
      assert.equal(await requests(metrics, 'discovery', 'ok'), 1);
    } finally {
      verifier.close();
    }
    const other = new Metrics({ processMetrics: false });
    idp.discoveryDocument = { issuer: 'https://another.example.org/realms/mail', jwks_uri: idp.url };
    const mixedUp = OAuthVerifier.create(config(discovery), log, other);
    try {
      await until(async () => (await requests(other, 'discovery', 'bad-answer')) === 1, 'another issuer\'s document counted bad-answer');
    } finally {
      mixedUp.close();
      idp.heal();
    }
    const down = new Metrics({ processMetrics: false });
    const refused = OAuthVerifier.create(config({ ...discovery, openidConfigurationUrl: refusedUrl('/.well-known/openid-configuration') }), log, down);
    try {
      await until(async () => (await requests(down, 'discovery', 'connection-error')) === 1, 'a refused document fetch counted');
      assert.deepEqual(await nonZero(down), { 'discovery connection-error': 1 });
    } finally {
      refused.close();
    }
  });

  test('introspection: ok for active and inactive answers, HTTP 500 and 401, a stall past the deadline, a 200 without "active", a connection refused; durations by result', async () => {
    const metrics = new Metrics({ processMetrics: false });
    const verifier = OAuthVerifier.create(config({ jwksUrl: undefined }), log, metrics);
    const wrongSecret = OAuthVerifier.create(config({ jwksUrl: undefined, clientSecret: 'Not-the-secret-8e2f' }), log, metrics);
    registerSecrets(['Not-the-secret-8e2f']);
    const refused = OAuthVerifier.create(config({ jwksUrl: undefined, introspectionUrl: refusedUrl('/introspect') }), log, metrics);
    const hung = OAuthVerifier.create(config({ jwksUrl: undefined, introspectionUrl: silentUrl('/introspect') }), log, metrics);
    try {
      const token = opaque('ada');
      assert.equal((await verifier.verify(token, signal)).user, 'ada@example.org');
      const revoked = opaque('bob');
      idp.revoke(revoked);
      assert.equal(await failure(verifier, revoked), 'OAUTH_TOKEN_INACTIVE', 'active false is a verdict: the IdP answered');
      assert.equal(await requests(metrics, 'introspection', 'ok'), 2);

      const injected: Array<[() => void, OAuthIdpResult]> = [
        [() => (idp.introspectionFailWith = 500), 'http-5xx'],
        [() => (idp.introspectionFailWith = 302), 'http-other'],
        [() => (idp.introspectionDelayMs = 1_000), 'timeout'],
        [() => (idp.introspectionBody = '{"error":"not_found"}'), 'bad-answer'],
        [() => (idp.introspectionBody = Buffer.alloc(300 * 1024, 0x20)), 'bad-answer'],
      ];
      for (const [inject, result] of injected) {
        inject();
        const before = (await requests(metrics, 'introspection', result)) ?? 0;
        assert.equal(await failure(verifier, token), 'OAUTH_INTROSPECTION_UNAVAILABLE');
        idp.heal();
        assert.equal(await requests(metrics, 'introspection', result), before + 1, result);
      }
      assert.equal(await failure(wrongSecret, token), 'OAUTH_INTROSPECTION_UNAVAILABLE');
      assert.equal(await failure(refused, token), 'OAUTH_INTROSPECTION_UNAVAILABLE');
      assert.equal(await failure(hung, token), 'OAUTH_INTROSPECTION_UNAVAILABLE');
      assert.deepEqual(await nonZero(metrics), {
        'introspection ok': 2,
        'introspection http-5xx': 1,
        'introspection http-4xx': 1,
        'introspection http-other': 1,
        'introspection timeout': 2,
        'introspection bad-answer': 2,
        'introspection connection-error': 1,
      });

      const { body } = await metrics.exposition();
      const sample = (name: string, result: string): number => Number(new RegExp(`^mailfront_oauth_introspection_duration_seconds_${name}\\{result="${result}"\\} (\\S+)$`, 'm').exec(body)?.[1]);
      assert.equal(sample('count', 'ok'), 2);
      assert.ok(sample('sum', 'ok') < 1, `ok answers are quick (${sample('sum', 'ok')} s)`);
      assert.equal(sample('count', 'timeout'), 2);
      // Both stalls waited out introspection_timeout_ms (300 ms).
      assert.ok(sample('sum', 'timeout') >= 0.58, `the timeouts took the deadline (${sample('sum', 'timeout')} s)`);
      assert.match(body, /^mailfront_oauth_idp_last_success_timestamp_seconds\{endpoint="introspection"\} \d/m);
    } finally {
      verifier.close();
      wrongSecret.close();
      refused.close();
      hung.close();
    }
  });

  // The overload, the burst and the late request run at once: each has an IdP of its own, and
  // spends its time waiting for the IdP's answers.
  describe('introspection behind introspection_concurrency', { concurrency: true }, () => {
    test('introspection: logins beyond introspection_concurrency wait and are sent with what is left; those expiring are timeout-queued or not-sent, never the IdP\'s timeout', async () => {
      // One request at a time, each answered in 300 ms (3.3 a second), within the IdP's own
      // deadline; 8 logins a second with distinct tokens for 3 s. Before, a request sent late with
      // the last of its deadline was counted as the IdP's timeout.
      const own = await ownIdp();
      const metrics = new Metrics({ processMetrics: false });
      const verifier = OAuthVerifier.create(config({ jwksUrl: undefined, introspectionUrl: own.introspectionUrl, tokenCheck: 'introspect', introspectionTimeoutMs: 1_000, introspectionConcurrency: 1 }), log, metrics);
      own.introspectionDelayMs = 300;
      try {
        const outcomes: Array<Promise<string>> = [];
        for (let i = 0; i < 24; i++) {
          const token = opaque(`steady${i}`, own);
          outcomes.push(verifier.verify(token, signal).then(() => 'ok', (error: { code?: string; message?: string }) => `${error.code ?? '?'}: ${error.message ?? String(error)}`));
          await new Promise((resolve) => setTimeout(resolve, 125));
        }
        const codes = await Promise.all(outcomes);
        const counted = await nonZero(metrics);
        const ok = counted['introspection ok'] ?? 0;
        const queued = counted['introspection timeout-queued'] ?? 0;
        const notSent = counted['introspection not-sent'] ?? 0;
        assert.equal(counted['introspection timeout'], undefined, `no timeout: the IdP always answered in 300 ms (${JSON.stringify(counted)})`);
        assert.deepEqual(Object.keys(counted).filter((k) => !['introspection ok', 'introspection timeout-queued', 'introspection not-sent'].includes(k)), [], JSON.stringify(counted));
        assert.equal(ok + queued + notSent, 24, `every login counted once (${JSON.stringify(counted)})`);
        assert.ok(ok >= 1 && queued + notSent >= 1, `an overload: some answered, some not (${JSON.stringify(counted)})`);
        assert.equal(codes.filter((c) => c === 'ok').length, ok);
        assert.ok(codes.every((c) => c === 'ok' || /^OAUTH_INTROSPECTION_UNAVAILABLE: .* (was not asked within|did not answer: no answer within \d+ ms \(oauth2\.introspection_timeout_ms less \d+ ms spent before sending, waiting for a free request\))/.test(c)), codes.join('\n'));
        const { body } = await metrics.exposition();
        assert.match(body, /^mailfront_oauth_introspection_duration_seconds_count\{result="ok"\} \d+$/m);
        assert.doesNotMatch(body, /^mailfront_oauth_introspection_duration_seconds_count\{result="not-sent"\}/m, 'no request, no duration');
        assert.match(body, /^mailfront_oauth_idp_consecutive_failures\{endpoint="introspection"\} 0$/m, 'no failure of the IdP in a row');
      } finally {
        verifier.close();
        await own.stop();
      }
    });

    test('introspection: a burst beyond introspection_concurrency is answered within introspection_timeout_ms, every login ok', async () => {
      // 6 logins at once, one request at a time, each answered in 300 ms: the last is sent at
      // 1.5 s and answered at 1.8 s, within the default 2 s. A floor on the time left when sending
      // (half of the deadline) refused the last two unasked.
      const own = await ownIdp();
      const metrics = new Metrics({ processMetrics: false });
      const verifier = OAuthVerifier.create(config({ jwksUrl: undefined, introspectionUrl: own.introspectionUrl, tokenCheck: 'introspect', introspectionTimeoutMs: 2_000, introspectionConcurrency: 1 }), log, metrics);
      own.introspectionDelayMs = 300;
      try {
        const started = performance.now();
        const codes = await Promise.all(Array.from({ length: 6 }, (_, i) => verifier.verify(opaque(`burst${i}`, own), signal).then(() => 'ok', (error: { code?: string; message?: string }) => `${error.code ?? '?'}: ${error.message ?? String(error)}`)));
        const took = performance.now() - started;
        assert.deepEqual(codes, Array(6).fill('ok'), codes.join('\n'));
        assert.ok(took < 2_000, `within introspection_timeout_ms (${Math.round(took)} ms)`);
        assert.deepEqual(await nonZero(metrics), { 'introspection ok': 6 });
      } finally {
        verifier.close();
        await own.stop();
      }
    });

    test('introspection: a request sent with less than half of introspection_timeout_ms left that expires is timeout-queued, not the IdP\'s timeout nor a failure in a row', async () => {
      // One request at a time, the IdP taking 700 ms of a 1 s deadline: the first login's request
      // is answered; the second, sent at 700 ms with 300 ms left, expires. The IdP took no longer
      // than the first time.
      const own = await ownIdp();
      const metrics = new Metrics({ processMetrics: false });
      const verifier = OAuthVerifier.create(config({ jwksUrl: undefined, introspectionUrl: own.introspectionUrl, tokenCheck: 'introspect', introspectionTimeoutMs: 1_000, introspectionConcurrency: 1 }), log, metrics);
      own.introspectionDelayMs = 700;
      try {
        const [first, second] = await Promise.all([verifier.verify(opaque('early', own), signal).then(() => 'ok', String), failure(verifier, opaque('late', own))]);
        assert.equal(first, 'ok');
        assert.equal(second, 'OAUTH_INTROSPECTION_UNAVAILABLE');
        assert.deepEqual(await nonZero(metrics), { 'introspection ok': 1, 'introspection timeout-queued': 1 });
        const { body } = await metrics.exposition();
        assert.match(body, /^mailfront_oauth_introspection_duration_seconds_count\{result="timeout-queued"\} 1$/m, 'a request sent: its duration observed');
        assert.match(body, /^mailfront_oauth_idp_consecutive_failures\{endpoint="introspection"\} 0$/m, 'not a failure of the IdP in a row');
        // A request sent with the whole deadline that expires is the IdP's.
        own.introspectionDelayMs = 1_500;
        assert.equal(await failure(verifier, opaque('alone', own)), 'OAUTH_INTROSPECTION_UNAVAILABLE');
        assert.equal(await requests(metrics, 'introspection', 'timeout'), 1);
        assert.match((await metrics.exposition()).body, /^mailfront_oauth_idp_consecutive_failures\{endpoint="introspection"\} 1$/m);
      } finally {
        verifier.close();
        await own.stop();
      }
    });
  });
});

describe('a running mailfront', () => {
  let slapd: Slapd;
  let front: Front;

  before(async () => {
    slapd = await startSlapd({ users: [{ uid: 'ada', password: 'Ada-idp-metrics-pw-3f1c', store: 'alpha' }] });
    front = await startFront({
      slapd,
      // No backend is reached: the token below is refused by the IdP.
      stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: refusedPort } } } },
      oauth2: {
        issuers: [ISSUER],
        audiences: [AUDIENCE],
        jwks_url: idp.url,
        introspection_url: idp.introspectionUrl,
        client_id: CLIENT.id,
        client_secret: CLIENT.secret,
      },
    });
  });
  after(async () => {
    if (front !== undefined) assertNoRegisteredSecret(front.rawLogs, 'the IdP metrics front\'s log');
    await front?.stop();
    await slapd?.stop();
  });

  test('exposes its keys\' fetch and a token\'s introspection on /metrics', async () => {
    const { host, port } = front.mailfront.httpAddress()!;
    const scrape = async (): Promise<string> => (await fetch(`http://${host}:${port}/metrics`)).text();
    const value = (body: string, endpoint: string, result: string): number => Number(new RegExp(`^mailfront_oauth_idp_requests_total\\{endpoint="${endpoint}",result="${result}"\\} (\\S+)$`, 'm').exec(body)?.[1]);
    let body = '';
    for (let i = 0; i < 100 && value(body, 'jwks', 'ok') !== 1; i++) {
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, 50));
      body = await scrape();
    }
    assert.equal(value(body, 'jwks', 'ok'), 1, 'the start\'s fetch of the keys');
    assert.equal(value(body, 'introspection', 'ok'), 0);
    assert.equal(value(body, 'introspection', 'http-5xx'), 0);

    const token = `opq_made_up_${Math.random().toString(36).slice(2)}`;
    registerSecrets([token]);
    const initial = Buffer.from(`n,,\x01auth=Bearer ${token}\x01\x01`).toString('base64');
    const client = await LineClient.connect(front.imapTrustedPort);
    try {
      await client.readLine();
      const tag = client.nextTag();
      client.send(`${tag} AUTHENTICATE OAUTHBEARER ${initial}`);
      // The error challenge, answered with the dummy response; then the refusal.
      assert.match(await client.readLine(), /^\+ /);
      client.send('AQ==');
      assert.match(await client.readLine(), new RegExp(`^${tag} NO `));
      idp.introspectionFailWith = 500;
      registerSecrets([`${token}x`]);
      const tag2 = client.nextTag();
      client.send(`${tag2} AUTHENTICATE OAUTHBEARER ${Buffer.from(`n,,\x01auth=Bearer ${token}x\x01\x01`).toString('base64')}`);
      assert.match(await client.readLine(), new RegExp(`^${tag2} NO \\[UNAVAILABLE\\] `));
    } finally {
      idp.heal();
      client.close();
    }
    body = await scrape();
    assert.equal(value(body, 'introspection', 'ok'), 1, 'the made-up token\'s introspection: active false');
    assert.equal(value(body, 'introspection', 'http-5xx'), 1, 'the IdP failing');
    assert.match(body, /^mailfront_oauth_introspection_duration_seconds_count\{result="ok"\} 1$/m);
  });
});
