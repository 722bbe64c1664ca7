/**
 * OAuth 2.0 bearer-token logins (oauth2; SASL OAUTHBEARER and XOAUTH2) end to end, with real
 * servers: slapd, store alpha on Dovecot in master-user mode (with ManageSieve), store gamma on
 * Cyrus in sasl-authzid mode, store delta in replay mode. Keys are made in the test: an RSA key in
 * a JWKS file, an EC key behind a JWKS URL served by a node http server on 127.0.0.1 (the IdP's
 * stand-in: only its JWKS endpoint). imapflow logs in with `auth: { user, accessToken }` (and
 * picks OAUTHBEARER); raw sockets send XOAUTH2, POP3 and ManageSieve, and the hostile inputs:
 * bad base64, a huge token, a user other than the token's, alg none, HS256 keyed with the public
 * key, expired and not-yet-valid tokens, a cancel with "*". Each refusal is logged with its own
 * code, counted by the throttle and towards the connection's three failed logins; no log line
 * holds a token.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import type { ImapFlowOptions } from 'imapflow';
import { LineClient, startCyrus, startDovecot, startSlapd } from './servers/index.js';
import type { Cyrus, Dovecot, Slapd } from './servers/index.js';
import { assertNoRegisteredSecret, makeMessage, registerPasswords, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';
import { JwksServer, claimsFor, hs256WithPublicKey, jwks, makeKey, signJwt, unsignedJwt } from './oauth-idp.js';
import { MAX_AUTHENTICATE_LINE_BYTES, MAX_OAUTH_TOKEN_BYTES } from '../../src/limits.js';

const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const MASTER = { name: 'proxymaster', password: 'Proxy-master-pw-61d2' };
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-proxy-pw-93c1' };
const PASSWORDS = { alice: 'Alice-oauth-pw-1f2e', bob: 'Bob-oauth-pw-3a4b', carol: 'Carol-oauth-pw-5c6d', hank: 'Hank-oauth-pw-7e8f', rita: 'Rita-oauth-pw-9a0b' };
const AUTH_FAILED = 'NO [AUTHENTICATIONFAILED] Authentication failed.';
registerPasswords(...Object.values(PASSWORDS), MASTER.password, CYRUS_PROXY.password);

const fileKey = makeKey('file-rsa', 'RS256');
const urlKey = makeKey('url-ec', 'ES256');
const dir = mkdtempSync(join(tmpdir(), 'oauth-login-'));
const jwksFile = join(dir, 'jwks.json');
writeFileSync(jwksFile, jwks([fileKey]));

/** A token for `user` (preferred_username), registered with the secret scans: the whole and its signature. */
function tokenFor(user: string, options: { key?: typeof fileKey; seconds?: number; claims?: Record<string, unknown> } = {}): string {
  const jwt = signJwt(options.key ?? fileKey, claimsFor(user, ISSUER, AUDIENCE, options.seconds ?? 300, options.claims ?? {}));
  return registered(jwt);
}
/**
 * A signed token for `user` of `bytes` bytes or up to 3 more, registered with the secret scans: a
 * groups claim as Keycloak's or Entra's with a user's many groups.
 */
function longTokenFor(user: string, bytes: number): string {
  const groups = Array.from({ length: Math.floor(bytes / 40) }, (_, i) => `/org/unit-${i % 17}/team-${i}`);
  const sign = (filler: string): string => signJwt(fileKey, claimsFor(user, ISSUER, AUDIENCE, 300, { groups: [...groups, filler] }));
  let filler = '';
  let jwt = sign(filler);
  // base64url: 3 bytes of the claims' JSON are 4 characters of the token.
  for (let i = 0; i < 8 && jwt.length < bytes; i++) {
    filler += 'g'.repeat(Math.max(1, Math.floor(((bytes - jwt.length) * 3) / 4)));
    jwt = sign(filler);
  }
  assert.ok(jwt.length >= bytes && jwt.length <= bytes + 3, `a token of ${jwt.length} bytes for ${bytes}`);
  return registered(jwt);
}
function registered(jwt: string): string {
  const signature = jwt.split('.')[2] ?? '';
  registerSecrets(signature.length >= 6 ? [jwt, signature] : [jwt]);
  return jwt;
}

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const oauthbearer = (user: string | null, token: string): string => b64(`n,${user === null ? '' : `a=${user}`},\x01host=127.0.0.1\x01port=143\x01auth=Bearer ${token}\x01\x01`);
const xoauth2 = (user: string, token: string): string => b64(`user=${user}\x01auth=Bearer ${token}\x01\x01`);

let slapd: Slapd;
let a1: Dovecot;
let cyrus: Cyrus;
let idp: JwksServer;
let front: Front;

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'alice', password: PASSWORDS.alice, store: 'alpha' },
      { uid: 'bob', password: PASSWORDS.bob, store: 'alpha' },
      { uid: 'hank', password: PASSWORDS.hank, store: 'alpha' },
      { uid: 'carol', password: PASSWORDS.carol, store: 'gamma' },
      { uid: 'rita', password: PASSWORDS.rita, store: 'delta' },
    ],
  });
  const users = ['alice', 'bob', 'hank', 'rita'].map((name) => ({ name, password: `${name}-backend-only-pw` }));
  registerPasswords(...users.map((u) => u.password), 'carol-backend-only-pw');
  [a1, cyrus, idp] = await Promise.all([
    startDovecot({ name: 'oauth-a1', users, masterUser: MASTER, sieve: true }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only-pw' }], proxyAdmin: CYRUS_PROXY }),
    JwksServer.start([urlKey]),
  ]);
  await a1.deliver('alice', makeMessage('for alice via oauth'));
  await a1.deliver('bob', makeMessage('for bob via oauth'));
  await cyrus.deliver('carol', makeMessage('for carol on cyrus via oauth'));
  front = await startFront({
    slapd,
    sieve: true,
    stores: {
      alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } },
      gamma: { currentMaster: 'c1', slots: { c1: { imapPort: cyrus.imapPort, pop3Port: cyrus.pop3Port } }, backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password } },
      delta: { currentMaster: 'd1', slots: { d1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port } }, backend: { login_mode: 'replay' } },
    },
    backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
    // The cache of entries as in production (the harness turns it off): a token login's entry comes from it.
    directory: { login_attribute: 'uid', entry_cache_ttl_ms: 30_000 },
    // Three distinct refused tokens naming a user refuse the user: a refusal not counted would show.
    throttle: { enabled: true, failures_per_user: 3, failures_per_address: 1000, base_delay_ms: 10, max_delay_ms: 10 },
    oauth2: { issuers: [ISSUER], audiences: [AUDIENCE], jwks_file: jwksFile, jwks_url: idp.url, jwks_unknown_kid_refetch_ms: 1_000, user_claim: 'preferred_username', clock_skew_ms: 5_000 },
  });
});

after(async () => {
  if (front !== undefined) assertNoRegisteredSecret(front.rawLogs, 'the OAuth logins\' log');
  await front?.stop();
  await Promise.all([slapd?.stop(), a1?.stop(), cyrus?.stop(), idp?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

async function metric(name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

/** An IMAP client past the greeting on the plaintext-allowed listener. */
async function imapClient(): Promise<LineClient> {
  const c = await LineClient.connect(front.imapTrustedPort);
  await c.readLine();
  return c;
}

/** The subjects in the INBOX of the session `c` is logged in to. */
async function subjects(c: LineClient): Promise<string[]> {
  await c.imapOk('SELECT INBOX');
  const fetched = await c.imapOk('FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])');
  return fetched.untagged.filter((l) => l.startsWith('Subject: ')).map((l) => l.slice('Subject: '.length));
}

/** Sends `AUTHENTICATE <mechanism> <initial>`; on the error challenge answers `dummy`: the challenge (if any) and the tagged line. */
async function authenticate(c: LineClient, mechanism: string, initial: string, dummy = 'AQ=='): Promise<{ challenge: string | null; line: string }> {
  const tag = c.nextTag();
  c.send(`${tag} AUTHENTICATE ${mechanism} ${initial}`);
  let challenge: string | null = null;
  for (;;) {
    const line = await c.readLine();
    if (line.startsWith('+ ')) {
      challenge = Buffer.from(line.slice(2), 'base64').toString('utf8');
      c.send(dummy);
      continue;
    }
    if (line.startsWith(`${tag} `)) return { challenge, line: line.slice(tag.length + 1) };
  }
}

/** The login lines since `mark` (the session's refusal or splice). */
function loginLine(mark: number, event = 'session.login_failed'): Promise<Record<string, unknown>> {
  return waitForLog(front, (l) => l['event'] === event, 5_000, mark);
}

describe('OAuth logins, oauth2 set', () => {
  test('imapflow with { user, accessToken } over STARTTLS picks OAUTHBEARER and opens the token user\'s mailbox on Dovecot (master-user)', async () => {
    const mark = front.logs.length;
    const before = await metric('mailfront_oauth_logins_total', 'protocol="imap",mechanism="OAUTHBEARER",result="success"');
    const client = new ImapFlow({ host: '127.0.0.1', port: front.imapPort, secure: false, doSTARTTLS: true, tls: { ca: front.caPem, servername: 'localhost' }, auth: { user: 'alice', accessToken: tokenFor('alice') }, logger: false } as ImapFlowOptions);
    await client.connect();
    try {
      const lock = await client.getMailboxLock('INBOX');
      try {
        const found: string[] = [];
        for await (const message of client.fetch('1:*', { envelope: true })) found.push(message.envelope?.subject ?? '');
        assert.deepEqual(found, ['for alice via oauth']);
      } finally {
        lock.release();
      }
    } finally {
      await client.logout();
    }
    const spliced = await loginLine(mark, 'session.spliced');
    assert.equal(spliced['user'], 'alice');
    assert.equal(spliced['mechanism'], 'OAUTHBEARER');
    assert.equal(spliced['store'], 'alpha');
    assert.equal(await metric('mailfront_oauth_logins_total', 'protocol="imap",mechanism="OAUTHBEARER",result="success"'), before + 1);
    // Dovecot logged alice in on the proxy account's word (its master passdb): no password of alice's.
    const deadline = Date.now() + 3_000;
    while (!(await a1.readLog()).includes(`session=<${String(spliced['session'])}>`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.match(await a1.readLog(), new RegExp(`imap-login: Info: Login: user=<alice>.*session=<${String(spliced['session'])}>`));
  });

  test('XOAUTH2 with and without SASL-IR, an EC key from the JWKS URL; CAPABILITY offers both, only where PLAIN is', async () => {
    const c = await imapClient();
    try {
      const caps = await c.imapOk('CAPABILITY');
      assert.match(caps.untagged.join(' '), /AUTH=PLAIN AUTH=LOGIN AUTH=OAUTHBEARER AUTH=XOAUTH2/);
      const tag = c.nextTag();
      c.send(`${tag} AUTHENTICATE XOAUTH2`);
      assert.equal(await c.readLine(), '+ ');
      c.send(xoauth2('bob', tokenFor('bob', { key: urlKey })));
      const result = await c.imapResult(tag);
      assert.equal(result.status, 'OK', result.text);
      assert.deepEqual(await subjects(c), ['for bob via oauth']);
    } finally {
      c.close();
    }
    const plain = await LineClient.connect(front.imapPort);
    try {
      assert.doesNotMatch(await plain.readLine(), /OAUTHBEARER|XOAUTH2/, 'before STARTTLS on a listener that requires TLS: not offered');
      const refused = await plain.imap(`AUTHENTICATE OAUTHBEARER ${oauthbearer('bob', tokenFor('bob'))}`);
      assert.match(refused.text, /^\[PRIVACYREQUIRED\]/);
    } finally {
      plain.close();
    }
  });

  test('a user\'s entry comes from the cache of entries: a second token login searches the directory no more', async () => {
    const searches = (): Promise<number> => metric('mailfront_ldap_request_duration_seconds_count', 'operation="search",result="success"');
    const entryHits = (): Promise<number> => metric('mailfront_directory_cache_lookups_total', 'cache="entry",result="hit"');
    const login = async (): Promise<void> => {
      const c = await imapClient();
      try {
        const result = await c.imap(`AUTHENTICATE XOAUTH2 ${xoauth2('bob', tokenFor('bob'))}`);
        assert.equal(result.status, 'OK', result.text);
      } finally {
        c.close();
      }
    };
    await login();
    const [searchesBefore, hitsBefore] = [await searches(), await entryHits()];
    await login();
    assert.equal(await searches(), searchesBefore, 'the second login searched the directory again');
    assert.equal(await entryHits(), hitsBefore + 1);
  });

  test('Cyrus in sasl-authzid mode opens the token user\'s mailbox', async () => {
    const c = await imapClient();
    try {
      const { line } = await authenticate(c, 'OAUTHBEARER', oauthbearer(null, tokenFor('carol')));
      assert.match(line, /^OK /);
      assert.deepEqual(await subjects(c), ['for carol on cyrus via oauth']);
    } finally {
      c.close();
    }
  });

  test('POP3 AUTH XOAUTH2 and OAUTHBEARER; a refused token gets "+ <challenge>", then -ERR [AUTH]', async () => {
    const c = await LineClient.connect(front.pop3TrustedPort);
    try {
      await c.readLine();
      const capa = await c.pop3Multi('CAPA');
      assert.ok(capa.includes('SASL PLAIN LOGIN OAUTHBEARER XOAUTH2'), capa.join('|'));
      c.send(`AUTH OAUTHBEARER ${oauthbearer('alice', tokenFor('alice', { seconds: -600 }))}`);
      const challenge = await c.readLine();
      assert.ok(challenge.startsWith('+ '), challenge);
      assert.deepEqual(JSON.parse(Buffer.from(challenge.slice(2), 'base64').toString()), { status: 'invalid_token', schemes: 'bearer' });
      c.send('AQ==');
      assert.equal(await c.readLine(), '-ERR [AUTH] Authentication failed.');
      assert.match(await c.pop3(`AUTH XOAUTH2 ${xoauth2('alice', tokenFor('alice'))}`), /^\+OK/);
      const top = await c.pop3Multi('TOP 1 0');
      assert.ok(top.includes('Subject: for alice via oauth'), top.join('|'));
    } finally {
      c.close();
    }
  });

  test('ManageSieve AUTHENTICATE "OAUTHBEARER" logs in to the user\'s Sieve; a refusal is a challenge string, then NO', async () => {
    const c = await LineClient.connect(front.sieveTrustedPort!);
    try {
      let sasl = '';
      for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine()) if (line.startsWith('"SASL"')) sasl = line;
      assert.equal(sasl, '"SASL" "PLAIN LOGIN OAUTHBEARER XOAUTH2"');
      c.send(`AUTHENTICATE "XOAUTH2" "${xoauth2('alice', tokenFor('bob'))}"`);
      const challenge = await c.readLine();
      assert.deepEqual(JSON.parse(Buffer.from(challenge.slice(1, -1), 'base64').toString()), { status: '401', schemes: 'bearer' });
      c.send('"AQ=="');
      assert.equal(await c.readLine(), 'NO "Authentication failed."');
      c.send(`AUTHENTICATE "OAUTHBEARER" "${oauthbearer('alice', tokenFor('alice'))}"`);
      assert.match(await c.readLine(), /^OK/);
      c.send('LISTSCRIPTS');
      assert.match(await c.readLine(), /^OK/);
    } finally {
      c.close();
    }
  });

  test('hostile input: each refusal its own code in the log, the challenge, the NO; the third closes the connection', async () => {
    const key = fileKey;
    const cases: Array<{ name: string; mechanism: string; initial: string; code: string }> = [
      { name: 'alg none', mechanism: 'OAUTHBEARER', initial: oauthbearer('alice', registered(unsignedJwt(claimsFor('alice', ISSUER, AUDIENCE), key.kid) + 'x')), code: 'OAUTH_ALGORITHM_REFUSED' },
      { name: 'HS256 keyed with the public key', mechanism: 'OAUTHBEARER', initial: oauthbearer('alice', registered(hs256WithPublicKey(key, claimsFor('alice', ISSUER, AUDIENCE)))), code: 'OAUTH_ALGORITHM_REFUSED' },
      { name: 'expired', mechanism: 'XOAUTH2', initial: xoauth2('alice', tokenFor('alice', { seconds: -600 })), code: 'OAUTH_TOKEN_EXPIRED' },
      { name: 'not yet valid', mechanism: 'OAUTHBEARER', initial: oauthbearer(null, tokenFor('alice', { claims: { nbf: Math.floor(Date.now() / 1000) + 3600 } })), code: 'OAUTH_TOKEN_NOT_YET_VALID' },
      { name: 'another user\'s token', mechanism: 'OAUTHBEARER', initial: oauthbearer('alice', tokenFor('bob')), code: 'OAUTH_USER_MISMATCH' },
      { name: 'wrong issuer', mechanism: 'XOAUTH2', initial: xoauth2('alice', registered(signJwt(key, claimsFor('alice', 'https://elsewhere.example.net/', AUDIENCE)))), code: 'OAUTH_WRONG_ISSUER' },
      { name: 'wrong audience', mechanism: 'XOAUTH2', initial: xoauth2('alice', registered(signJwt(key, claimsFor('alice', ISSUER, 'account')))), code: 'OAUTH_WRONG_AUDIENCE' },
      { name: 'bad signature', mechanism: 'XOAUTH2', initial: xoauth2('alice', registered(signJwt(makeKey(key.kid, 'RS256'), claimsFor('alice', ISSUER, AUDIENCE)))), code: 'OAUTH_BAD_SIGNATURE' },
      { name: 'user not in the directory', mechanism: 'OAUTHBEARER', initial: oauthbearer(null, tokenFor('ghost')), code: 'UNKNOWN_USER' },
    ];
    for (let i = 0; i < cases.length; i += 3) {
      const c = await imapClient();
      try {
        for (const [j, each] of cases.slice(i, i + 3).entries()) {
          const mark = front.logs.length;
          // The cancel, "*", is as good an answer to the challenge as AQ==.
          const { challenge, line } = await authenticate(c, each.mechanism, each.initial, j === 1 ? '*' : each.mechanism === 'XOAUTH2' ? '' : 'AQ==');
          assert.ok(challenge !== null && /"status":"(invalid_token|401)"/.test(challenge), `${each.name}: ${String(challenge)}`);
          assert.equal(line, AUTH_FAILED, each.name);
          const failed = await loginLine(mark);
          assert.equal(failed['code'], each.code, `${each.name}: ${String(failed['reason'])}`);
          assert.equal(failed['kind'], 'auth-failed');
          assert.equal(failed['level'], 'info');
        }
        assert.equal(await c.readLine(), '* BYE Too many failed login attempts', 'three refusals close the connection');
        assert.ok(await c.waitClosed(2_000));
      } finally {
        c.close();
      }
    }
    const refused = await metric('mailfront_oauth_logins_total', 'protocol="imap",mechanism="OAUTHBEARER",result="auth-failed"');
    assert.ok(refused >= 5, String(refused));
    assert.ok((await metric('mailfront_auth_failures_total', 'reason="invalid-token"')) >= 7);
  });

  test('a claim that normalising would make another name than the IdP\'s (fullwidth, spaces) is refused (OAUTH_USER_UNUSABLE); letter case is not', async () => {
    // Each is an identity the IdP tells from alice; normalised as a typed name, each was alice.
    for (const claim of ['\uff41\uff4c\uff49\uff43\uff45', ' alice ', 'alice\u3000', 'al\u2002ice']) {
      const mark = front.logs.length;
      const c = await imapClient();
      try {
        const { challenge, line } = await authenticate(c, 'OAUTHBEARER', oauthbearer(null, tokenFor(claim)));
        assert.ok(challenge !== null, JSON.stringify(claim));
        assert.equal(line, AUTH_FAILED, JSON.stringify(claim));
      } finally {
        c.close();
      }
      const failed = await loginLine(mark);
      assert.equal(failed['code'], 'OAUTH_USER_UNUSABLE', `${JSON.stringify(claim)}: ${String(failed['reason'])}`);
      assert.ok(!front.logs.slice(mark).some((l) => l['event'] === 'session.spliced'), JSON.stringify(claim));
    }
    const c = await imapClient();
    try {
      const { line } = await authenticate(c, 'OAUTHBEARER', oauthbearer(null, tokenFor('ALICE')));
      assert.match(line, /^OK /, 'the directory matches names without regard to case');
      assert.deepEqual(await subjects(c), ['for alice via oauth']);
    } finally {
      c.close();
    }
  });

  test(`malformed input: bad base64 is a BAD; a signed token over ${MAX_OAUTH_TOKEN_BYTES} bytes the challenge with no login; a line over ${MAX_AUTHENTICATE_LINE_BYTES} closes`, async () => {
    const c = await imapClient();
    try {
      const mark = front.logs.length;
      assert.equal((await c.imap('AUTHENTICATE OAUTHBEARER %%%notbase64')).status, 'BAD');
      const over = longTokenFor('alice', MAX_OAUTH_TOKEN_BYTES + 1);
      for (const [mechanism, response] of [['OAUTHBEARER', oauthbearer('alice', over)], ['XOAUTH2', xoauth2('alice', over)]] as const) {
        const { challenge, line } = await authenticate(c, mechanism, response);
        assert.ok(challenge !== null, mechanism);
        assert.equal(line, AUTH_FAILED, mechanism);
      }
      assert.ok(!front.logs.slice(mark).some((l) => l['event'] === 'session.login_failed'), 'refused before any login');
      const tooLong = `x AUTHENTICATE OAUTHBEARER ${oauthbearer('alice', registered(`${tokenFor('alice')}${'B'.repeat(MAX_AUTHENTICATE_LINE_BYTES)}`))}`;
      c.send(tooLong);
      assert.match(await c.readLine(), /^x BAD \[TOOBIG\]|^\* BYE/);
      assert.ok(await c.waitClosed(2_000));
    } finally {
      c.close();
    }
  });

  // Dovecot 2.3 itself takes a SASL response of up to 8191 base64 characters (IMAP, POP3; 8192 in
  // ManageSieve): a token of about 6.1 KB. Such a token (a user's many groups) was refused by
  // mailfront's bounds (4096 bytes of token; a ManageSieve literal of 4096).
  const SIX_KB = 6 * 1024;

  test('a 6 KB token logs in over IMAP, with SASL-IR and without, on Dovecot (master-user) and Cyrus (sasl-authzid); no backend is sent the token', async () => {
    const forAlice = longTokenFor('alice', SIX_KB);
    const forBob = longTokenFor('bob', SIX_KB);
    const forCarol = longTokenFor('carol', SIX_KB);
    let c = await imapClient();
    try {
      const { line } = await authenticate(c, 'OAUTHBEARER', oauthbearer('alice', forAlice));
      assert.match(line, /^OK /);
      assert.deepEqual(await subjects(c), ['for alice via oauth']);
    } finally {
      c.close();
    }
    c = await imapClient();
    try {
      const tag = c.nextTag();
      c.send(`${tag} AUTHENTICATE XOAUTH2`);
      assert.equal(await c.readLine(), '+ ');
      c.send(xoauth2('bob', forBob));
      const result = await c.imapResult(tag);
      assert.equal(result.status, 'OK', result.text);
      assert.deepEqual(await subjects(c), ['for bob via oauth']);
    } finally {
      c.close();
    }
    c = await imapClient();
    try {
      const { line } = await authenticate(c, 'OAUTHBEARER', oauthbearer(null, forCarol));
      assert.match(line, /^OK /);
      assert.deepEqual(await subjects(c), ['for carol on cyrus via oauth']);
    } finally {
      c.close();
    }
    // The backends were logged in to on the proxy account's word: none of them saw a token.
    const logs = `${await a1.readLog()}${await cyrus.readLog()}`;
    for (const token of [forAlice, forBob, forCarol]) assert.ok(!logs.includes(token.split('.')[2] ?? ''), 'a backend logged the token');
  });

  test('a 6 KB token logs in over POP3, with an initial response and without', async () => {
    const token = longTokenFor('alice', SIX_KB);
    for (const initial of [true, false]) {
      const c = await LineClient.connect(front.pop3TrustedPort);
      try {
        await c.readLine();
        if (initial) {
          assert.match(await c.pop3(`AUTH XOAUTH2 ${xoauth2('alice', token)}`), /^\+OK/);
        } else {
          c.send('AUTH OAUTHBEARER');
          assert.equal(await c.readLine(), '+ ');
          c.send(oauthbearer('alice', token));
          assert.match(await c.readLine(), /^\+OK/);
        }
        const top = await c.pop3Multi('TOP 1 0');
        assert.ok(top.includes('Subject: for alice via oauth'), top.join('|'));
      } finally {
        c.close();
      }
    }
  });

  test('a 6 KB token logs in over ManageSieve: a literal, a quoted string, as the initial response and after "AUTHENTICATE"', async () => {
    const token = longTokenFor('alice', SIX_KB);
    const response = oauthbearer('alice', token);
    const literal = `{${response.length}+}\r\n${response}`;
    for (const [name, initial, after] of [
      ['literal initial response', literal, null],
      ['quoted initial response', `"${response}"`, null],
      ['literal after', null, literal],
      ['quoted after', null, `"${response}"`],
    ] as const) {
      const c = await LineClient.connect(front.sieveTrustedPort!);
      try {
        for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
        c.send(`AUTHENTICATE "OAUTHBEARER"${initial === null ? '' : ` ${initial}`}`);
        if (after !== null) {
          assert.equal(await c.readLine(), '""', name);
          c.send(after);
        }
        assert.match(await c.readLine(), /^OK/, name);
        c.send('LISTSCRIPTS');
        assert.match(await c.readLine(), /^OK/, name);
      } finally {
        c.close();
      }
    }
  });

  test('refused tokens naming a user are counted by the throttle: the fourth login of the user is THROTTLED', async () => {
    for (let i = 0; i < 3; i++) {
      const c = await imapClient();
      try {
        assert.equal((await authenticate(c, 'XOAUTH2', xoauth2('hank', tokenFor('hank', { seconds: -600 - i })))).line, AUTH_FAILED);
      } finally {
        c.close();
      }
    }
    const mark = front.logs.length;
    const c = await imapClient();
    try {
      const { challenge, line } = await authenticate(c, 'XOAUTH2', xoauth2('hank', tokenFor('hank')));
      assert.equal(challenge, null, 'a throttled login is no token refused: no challenge');
      assert.match(line, /^NO \[LIMIT\]/);
      assert.equal((await loginLine(mark))['code'], 'THROTTLED');
    } finally {
      c.close();
    }
  });

  test('a store in replay mode refuses an OAuth login before its slot is dialled, saying why (OAUTH_NEEDS_TRUST_MODE)', async () => {
    const mark = front.logs.length;
    const c = await imapClient();
    try {
      const { challenge, line } = await authenticate(c, 'OAUTHBEARER', oauthbearer('rita', tokenFor('rita')));
      assert.equal(challenge, null);
      assert.equal(line, "NO [UNAVAILABLE] OAuth login is not available for this mailbox's server, please log in with your password.");
    } finally {
      c.close();
    }
    const failed = await loginLine(mark);
    assert.equal(failed['code'], 'OAUTH_NEEDS_TRUST_MODE');
    assert.equal(failed['level'], 'error');
    assert.ok(!front.logs.slice(mark).some((l) => l['event'] === 'session.backend_connected'));
  });

  test('a reload (SIGHUP) reads the JWKS file again: a key added is taken; a file that is no JWKS rejects the reload, the keys in force stay', async () => {
    const added = makeKey('file-rsa-2', 'RS256');
    const token = tokenFor('bob', { key: added });
    const login = async (): Promise<string> => {
      const c = await imapClient();
      try {
        return (await authenticate(c, 'OAUTHBEARER', oauthbearer('bob', token))).line;
      } finally {
        c.close();
      }
    };
    let mark = front.logs.length;
    assert.equal(await login(), AUTH_FAILED);
    assert.equal((await loginLine(mark))['code'], 'OAUTH_UNKNOWN_KEY');
    writeFileSync(jwksFile, jwks([fileKey, added]));
    const reloaded = await front.mailfront.reload();
    assert.ok(reloaded.ok, reloaded.error);
    assert.match(await login(), /^OK /);
    writeFileSync(jwksFile, 'not json');
    const rejected = await front.mailfront.reload();
    assert.equal(rejected.ok, false);
    assert.match(rejected.error ?? '', /oauth2\.jwks_file: .* is not a JWKS mailfront can read: not JSON/);
    mark = front.logs.length;
    assert.match(await login(), /^OK /, 'the keys in force stay');
    assert.ok(front.logs.slice(mark).some((l) => l['event'] === 'session.spliced' && l['mechanism'] === 'OAUTHBEARER'));
    writeFileSync(jwksFile, jwks([fileKey, added]));
  });

  test('a flood of made-up kids fetches the JWKS URL at most once per jwks_unknown_kid_refetch_ms', async () => {
    await new Promise((r) => setTimeout(r, 1_100));
    const before = idp.requests;
    // Nine connections at once, each with a made-up kid: the logins wait on one fetch.
    await Promise.all(
      Array.from({ length: 9 }, async (_, i) => {
        const c = await imapClient();
        try {
          const bogus = registered(signJwt(makeKey(`bogus-${i}`, 'ES256'), claimsFor('bob', ISSUER, AUDIENCE)));
          assert.equal((await authenticate(c, 'OAUTHBEARER', oauthbearer(null, bogus))).line, AUTH_FAILED);
        } finally {
          c.close();
        }
      }),
    );
    assert.equal(idp.requests - before, 1, 'nine unknown kids within a second: one fetch');
  });
});
