/**
 * OAuth logins with opaque tokens (RFC 7662 token introspection) and OpenID discovery, end to
 * end with real slapd and Dovecot (master-user mode); the IdP is the stand-in of oauth-idp.ts
 * (a node http server on 127.0.0.1 serving the JWKS, the discovery document and the
 * introspection endpoint). An opaque token opens its user's mailbox, asked of the IdP with
 * mailfront's client credentials and then remembered; a token the IdP revoked is refused once
 * token_cache_ms has passed (OAUTH_TOKEN_INACTIVE, counted by the throttle); the IdP refusing
 * mailfront's credentials (401), failing (500), slow or answering a huge body is an outage
 * (NO [UNAVAILABLE], no challenge, not counted); a flood of made-up tokens on many connections
 * never has more than introspection_concurrency requests at the IdP. With discovery: true the
 * keys and the endpoint come from <issuer>/.well-known/openid-configuration. No log line holds
 * a token or the client secret.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import type { ImapFlowOptions } from 'imapflow';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { assertNoRegisteredSecret, makeMessage, registerPasswords, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';
import { JwksServer, claimsFor, makeKey, signJwt } from './oauth-idp.js';

const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const MASTER = { name: 'proxymaster', password: 'Proxy-master-pw-7c31' };
const CLIENT = { id: 'mailfront', secret: 'Idp-client-secret-2b8d' };
const PASSWORDS = { alice: 'Alice-intro-pw-1a2b', bob: 'Bob-intro-pw-3c4d', hank: 'Hank-intro-pw-5e6f' };
const AUTH_FAILED = 'NO [AUTHENTICATIONFAILED] Authentication failed.';
const UNAVAILABLE = /^NO \[UNAVAILABLE\] /;
const TOKEN_CACHE_MS = 1_000;
const CONCURRENCY = 4;
registerPasswords(...Object.values(PASSWORDS), MASTER.password);
registerSecrets([CLIENT.secret]);

const urlKey = makeKey('url-ec', 'ES256');

let slapd: Slapd;
let a1: Dovecot;
let idp: JwksServer;
let front: Front;

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const oauthbearer = (user: string | null, token: string): string => b64(`n,${user === null ? '' : `a=${user}`},\x01host=127.0.0.1\x01port=143\x01auth=Bearer ${token}\x01\x01`);

/** An opaque token the IdP answers for `user` (preferred_username), registered with the secret scans. */
function opaqueFor(user: string, extra: Record<string, unknown> = {}, issuer = ISSUER): string {
  const token = idp.issue({ token_type: 'Bearer', client_id: 'thunderbird', ...claimsFor(user, issuer, AUDIENCE, 300, extra), username: user });
  registerSecrets([token]);
  return token;
}

function madeUp(): string {
  const token = `opq_${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
  registerSecrets([token]);
  return token;
}

before(async () => {
  slapd = await startSlapd({
    users: Object.entries(PASSWORDS).map(([uid, password]) => ({ uid, password, store: 'alpha' })),
  });
  const users = Object.keys(PASSWORDS).map((name) => ({ name, password: `${name}-backend-only-pw` }));
  registerPasswords(...users.map((u) => u.password));
  [a1, idp] = await Promise.all([startDovecot({ name: 'intro-a1', users, masterUser: MASTER }), JwksServer.start([urlKey])]);
  idp.clients.set(CLIENT.id, CLIENT.secret);
  await a1.deliver('alice', makeMessage('for alice via an opaque token'));
  await a1.deliver('bob', makeMessage('for bob via discovery'));
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port } } } },
    backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
    // Three distinct refused tokens naming a user refuse the user: a refusal not counted would show.
    throttle: { enabled: true, failures_per_user: 3, failures_per_address: 1000, base_delay_ms: 10, max_delay_ms: 10 },
    oauth2: {
      issuers: [ISSUER],
      audiences: [AUDIENCE],
      jwks_url: idp.url,
      introspection_url: idp.introspectionUrl,
      client_id: CLIENT.id,
      client_secret: CLIENT.secret,
      user_claim: 'preferred_username',
      token_cache_ms: TOKEN_CACHE_MS,
      introspection_timeout_ms: 500,
      introspection_concurrency: CONCURRENCY,
      clock_skew_ms: 5_000,
    },
  });
});

after(async () => {
  if (front !== undefined) assertNoRegisteredSecret(front.rawLogs, 'the introspection logins\' log');
  await front?.stop();
  await Promise.all([slapd?.stop(), a1?.stop(), idp?.stop()]);
});

async function imapClient(on: Front = front): Promise<LineClient> {
  const c = await LineClient.connect(on.imapTrustedPort);
  await c.readLine();
  return c;
}

/** Sends `AUTHENTICATE <mechanism> <initial>`; on the error challenge answers AQ==: the challenge (if any) and the tagged line. */
async function authenticate(c: LineClient, mechanism: string, initial: string): Promise<{ challenge: string | null; line: string }> {
  const tag = c.nextTag();
  c.send(`${tag} AUTHENTICATE ${mechanism} ${initial}`);
  let challenge: string | null = null;
  for (;;) {
    const line = await c.readLine();
    if (line.startsWith('+ ')) {
      challenge = Buffer.from(line.slice(2), 'base64').toString('utf8');
      c.send('AQ==');
      continue;
    }
    if (line.startsWith(`${tag} `)) return { challenge, line: line.slice(tag.length + 1) };
  }
}

/** One OAUTHBEARER login on a connection of its own: its challenge and answer. */
async function login(user: string | null, token: string, on: Front = front): Promise<{ challenge: string | null; line: string }> {
  const c = await imapClient(on);
  try {
    return await authenticate(c, 'OAUTHBEARER', oauthbearer(user, token));
  } finally {
    c.close();
  }
}

function loginLine(mark: number, event = 'session.login_failed', on: Front = front): Promise<Record<string, unknown>> {
  return waitForLog(on, (l) => l['event'] === event, 5_000, mark);
}

describe('OAuth logins with token introspection', () => {
  test('imapflow with an opaque token opens its user\'s mailbox on Dovecot; the IdP was asked once, with mailfront\'s client credentials', async () => {
    const token = opaqueFor('alice');
    const before = idp.introspectionRequests;
    const mark = front.logs.length;
    const client = new ImapFlow({ host: '127.0.0.1', port: front.imapPort, secure: false, doSTARTTLS: true, tls: { ca: front.caPem, servername: 'localhost' }, auth: { user: 'alice', accessToken: token }, logger: false } as ImapFlowOptions);
    await client.connect();
    try {
      const lock = await client.getMailboxLock('INBOX');
      try {
        const found: string[] = [];
        for await (const message of client.fetch('1:*', { envelope: true })) found.push(message.envelope?.subject ?? '');
        assert.deepEqual(found, ['for alice via an opaque token']);
      } finally {
        lock.release();
      }
    } finally {
      await client.logout();
    }
    const spliced = await loginLine(mark, 'session.spliced');
    assert.equal(spliced['user'], 'alice');
    assert.equal(spliced['mechanism'], 'OAUTHBEARER');
    assert.equal(idp.introspectionRequests, before + 1);
    const seen = idp.introspectionsSeen.at(-1)!;
    assert.equal(seen.authorization, `Basic ${b64(`${CLIENT.id}:${CLIENT.secret}`)}`);
    assert.equal(seen.form['token'], token);
    // Within token_cache_ms the answer is remembered: a webmail's next page view does not ask.
    assert.match((await login('alice', token)).line, /^OK /);
    assert.equal(idp.introspectionRequests, before + 1);
  });

  test('a token the IdP revokes is refused once token_cache_ms has passed (OAUTH_TOKEN_INACTIVE): the challenge, then AUTHENTICATIONFAILED', async () => {
    const token = opaqueFor('alice');
    assert.match((await login('alice', token)).line, /^OK /);
    idp.revoke(token);
    await new Promise((r) => setTimeout(r, TOKEN_CACHE_MS + 100));
    const mark = front.logs.length;
    const { challenge, line } = await login('alice', token);
    assert.ok(challenge !== null && challenge.includes('"status":"invalid_token"'), String(challenge));
    assert.equal(line, AUTH_FAILED);
    const failed = await loginLine(mark);
    assert.equal(failed['code'], 'OAUTH_TOKEN_INACTIVE');
    assert.equal(failed['kind'], 'auth-failed');
    assert.equal(failed['level'], 'info');
  });

  test('the IdP refusing mailfront\'s credentials (401), failing (500), slow, or answering 1 MiB: NO [UNAVAILABLE] without the challenge, logged at error, not counted by the throttle', async () => {
    const token = opaqueFor('bob');
    const outages: Array<[string, () => void, RegExp]> = [
      ['wrong client secret', () => idp.clients.set(CLIENT.id, 'Another-secret-at-the-idp-9d0e'), /HTTP 401.*client_id and client_secret_file/],
      ['500', () => (idp.introspectionFailWith = 500), /answered HTTP 500/],
      ['slow', () => (idp.introspectionDelayMs = 2_000), /no answer within \d+ ms \(oauth2\.introspection_timeout_ms\)/],
      ['huge body', () => (idp.introspectionBody = Buffer.alloc(2 * 1024 * 1024, 0x20)), /more than \d+ bytes/],
    ];
    registerSecrets(['Another-secret-at-the-idp-9d0e']);
    for (const [name, inject, message] of outages) {
      inject();
      const mark = front.logs.length;
      const started = performance.now();
      const { challenge, line } = await login('bob', token);
      idp.heal();
      idp.clients.set(CLIENT.id, CLIENT.secret);
      assert.equal(challenge, null, `${name}: an outage is no refused token`);
      assert.match(line, UNAVAILABLE, name);
      assert.ok(performance.now() - started < 1_500, `${name}: within introspection_timeout_ms (and the failure delay)`);
      const failed = await loginLine(mark);
      assert.equal(failed['code'], 'OAUTH_INTROSPECTION_UNAVAILABLE', name);
      assert.equal(failed['kind'], 'auth-tempfail');
      assert.equal(failed['level'], 'error');
      assert.match(String(failed['reason']), message, name);
    }
    // Four outages naming bob, and bob (failures_per_user 3) is not throttled: the IdP's fault is not his.
    assert.match((await login('bob', token)).line, /^OK /);
  });

  test('inactive tokens naming a user are counted by the throttle: the fourth login of the user is THROTTLED', async () => {
    for (let i = 0; i < 3; i++) {
      const mark = front.logs.length;
      assert.equal((await login('hank', madeUp())).line, AUTH_FAILED);
      assert.equal((await loginLine(mark))['code'], 'OAUTH_TOKEN_INACTIVE');
    }
    const mark = front.logs.length;
    const before = idp.introspectionRequests;
    const { challenge, line } = await login('hank', opaqueFor('hank'));
    assert.equal(challenge, null);
    assert.match(line, /^NO \[LIMIT\]/);
    assert.equal((await loginLine(mark))['code'], 'THROTTLED');
    assert.equal(idp.introspectionRequests, before, 'a throttled login asks the IdP nothing');
  });

  test('a flood of 60 made-up tokens on 60 connections at once: never more than introspection_concurrency requests at the IdP; a good login right after is let in', async () => {
    idp.introspectionDelayMs = 100;
    idp.introspectionsPeak = 0;
    const before = idp.introspectionRequests;
    try {
      const answers = await Promise.all(Array.from({ length: 60 }, () => login(null, madeUp())));
      for (const { line } of answers) assert.ok(line === AUTH_FAILED || UNAVAILABLE.test(line), line);
      assert.ok(idp.introspectionsPeak <= CONCURRENCY, `peak ${idp.introspectionsPeak}`);
      assert.ok(idp.introspectionRequests - before <= 60);
      // 500 ms at 4 requests of 100 ms: about 20 asked; the rest answered as an outage at the deadline.
      assert.ok(answers.some(({ line }) => UNAVAILABLE.test(line)), 'the deadline cut the queue');
    } finally {
      idp.heal();
    }
    assert.match((await login('alice', opaqueFor('alice'))).line, /^OK /);
  });
});

describe('OpenID discovery', () => {
  let discovering: Front;
  before(async () => {
    discovering = await startFront({
      slapd,
      stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port } } } },
      backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
      oauth2: { issuers: [idp.issuer], audiences: [AUDIENCE], discovery: true, token_check: 'auto', client_id: CLIENT.id, client_secret: CLIENT.secret, user_claim: 'preferred_username' },
    });
  });
  after(async () => {
    if (discovering !== undefined) assertNoRegisteredSecret(discovering.rawLogs, 'the discovery front\'s log');
    await discovering?.stop();
  });

  test('discovery: true reads the keys\' URL and the introspection endpoint from <issuer>/.well-known/openid-configuration: a JWT and an opaque token both open bob\'s mailbox', async () => {
    const loaded = await waitForLog(discovering, (l) => l['event'] === 'oauth.discovery_loaded', 5_000, 0);
    assert.equal(loaded['issuer'], idp.issuer);
    assert.equal(loaded['jwksUri'], idp.url);
    assert.equal(loaded['introspectionEndpoint'], idp.introspectionUrl);
    const jwt = signJwt(urlKey, claimsFor('bob', idp.issuer, AUDIENCE));
    registerSecrets([jwt, jwt.split('.')[2]!]);
    const before = idp.introspectionRequests;
    let mark = discovering.logs.length;
    assert.match((await login('bob', jwt, discovering)).line, /^OK /);
    assert.equal((await loginLine(mark, 'session.spliced', discovering))['user'], 'bob');
    assert.equal(idp.introspectionRequests, before, 'a JWT is checked locally (token_check auto)');
    mark = discovering.logs.length;
    assert.match((await login('bob', opaqueFor('bob', {}, idp.issuer), discovering)).line, /^OK /);
    assert.equal((await loginLine(mark, 'session.spliced', discovering))['user'], 'bob');
    assert.equal(idp.introspectionRequests, before + 1);
  });
});
