// A token's user claim whose domain IDNA's mapping makes a local domain (usernames.domain strip,
// local_domains): "alice@example。com" (U+3002, an ideographic full stop) is an identity the IdP
// tells from alice@example.com, and normalised as a typed name is (domainToASCII), it opened
// alice's mailbox. It is refused (OAUTH_USER_UNUSABLE), as a fullwidth claim is; the plain
// address, and its letter case, still log alice in. Real slapd and Dovecot (master-user).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';
import { claimsFor, jwks, makeKey, signJwt } from './oauth-idp.js';

const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const MASTER = { name: 'proxymaster', password: 'Proxy-master-pw-4c1e' };
const PASSWORD = 'Claim-domain-pw-8d2f';
const BACKEND_PASSWORD = 'alice-backend-only-pw-3a9c';
registerPasswords(PASSWORD, MASTER.password, BACKEND_PASSWORD);
const key = makeKey('claim-domain-rsa', 'RS256');
const dir = mkdtempSync(join(tmpdir(), 'oauth-claim-domain-'));
const jwksFile = join(dir, 'jwks.json');
writeFileSync(jwksFile, jwks([key]));

function tokenFor(claim: string): string {
  const jwt = signJwt(key, claimsFor(claim, ISSUER, AUDIENCE));
  registerSecrets([jwt, jwt.split('.')[2] ?? '']);
  return jwt;
}

let slapd: Slapd;
let a1: Dovecot;
let front: Front;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'alice', password: PASSWORD, store: 'alpha' }] });
  a1 = await startDovecot({ name: 'oauth-claim-domain', users: [{ name: 'alice', password: BACKEND_PASSWORD }], masterUser: MASTER });
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port } } } },
    backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
    usernames: { domain: 'strip', local_domains: ['example.com'] },
    oauth2: { issuers: [ISSUER], audiences: [AUDIENCE], jwks_file: jwksFile, user_claim: 'preferred_username', clock_skew_ms: 5_000 },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), a1?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

/** An OAUTHBEARER login with a token for `claim`: the tagged answer and the session's login line. */
async function tokenLogin(claim: string): Promise<{ answer: string; line: Record<string, unknown> }> {
  const mark = front.logs.length;
  const c = await LineClient.connect(front.imapTrustedPort);
  let answer = '';
  try {
    await c.readLine();
    const tag = c.nextTag();
    const initial = Buffer.from(`n,,\x01host=127.0.0.1\x01port=143\x01auth=Bearer ${tokenFor(claim)}\x01\x01`).toString('base64');
    c.send(`${tag} AUTHENTICATE OAUTHBEARER ${initial}`);
    for (;;) {
      const line = await c.readLine();
      if (line.startsWith('+ ')) {
        c.send('AQ==');
        continue;
      }
      if (line.startsWith(`${tag} `)) {
        answer = line.slice(tag.length + 1);
        break;
      }
    }
  } finally {
    c.close();
  }
  const line = await waitForLog(front, (l) => l['event'] === 'session.spliced' || l['event'] === 'session.login_failed', 5_000, mark);
  return { answer, line };
}

test('a claim whose domain IDNA maps to a local domain (U+3002 for its dot, a soft hyphen) is refused; the address itself logs alice in', async () => {
  for (const claim of ['alice@example\u3002com', 'alice@EXAMPLE\u3002COM', 'alice@exam\u00adple.com']) {
    const { answer, line } = await tokenLogin(claim);
    assert.match(answer, /^NO \[AUTHENTICATIONFAILED\]/, JSON.stringify(claim));
    assert.equal(line['event'], 'session.login_failed', JSON.stringify(claim));
    assert.equal(line['code'], 'OAUTH_USER_UNUSABLE', JSON.stringify(claim));
  }
  for (const claim of ['alice@example.com', 'Alice@Example.COM']) {
    const { answer, line } = await tokenLogin(claim);
    assert.match(answer, /^OK /, JSON.stringify(claim));
    assert.equal(line['user'], 'alice');
  }
});
