/**
 * A backend's own limit of a user's connections: Dovecot's mail_max_userip_connections (10 by
 * default, per user and client address: mailfront forwards the client's address, which Dovecot
 * believes from login_trusted_networks), set to 2 here. Dovecot refuses the third login with
 * `NO [LIMIT]` (IMAP), `-ERR [IN-USE]` (POP3) and a `NO` without a code (ManageSieve), each
 * "Maximum number of connections from user+IP exceeded". That is the user's limit, as
 * max_sessions_per_user is: kind limit, at info, answered with mailfront's LIMIT text, counted as
 * `limit` in mailfront_logins_total and mailfront_backend_logins_total (neither of which
 * MailfrontLoginErrors nor MailfrontBackendLoginErrors counts); not "your mail server is
 * temporarily unavailable", an error line and a fleet failure.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { classifyLoginNo } from '../../src/protocol/imap/backend.js';
import { classifyRefusal } from '../../src/protocol/pop3/index.js';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Family-limit-pw-7d31';
const USERIP_LIMIT = 2;
const LIMIT_TEXT = 'Too many login attempts or sessions, please wait and try again later.';
registerPasswords(PASSWORD);

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;
const held: LineClient[] = [];

async function metric(name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

async function imapLogin(user: string): Promise<string> {
  const c = await LineClient.connect(front.imapTrustedPort);
  held.push(c);
  await c.readLine();
  const result = await c.imap(`LOGIN ${user} ${PASSWORD}`);
  return `${result.status} ${result.text}`;
}

async function pop3Login(user: string): Promise<string> {
  const c = await LineClient.connect(front.pop3TrustedPort);
  held.push(c);
  await c.readLine();
  c.write(`USER ${user}\r\n`);
  await c.readLine();
  c.write(`PASS ${PASSWORD}\r\n`);
  return c.readLine();
}

async function sieveLogin(user: string): Promise<string> {
  const c = await LineClient.connect(front.sieveTrustedPort!);
  held.push(c);
  for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
  c.write(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0${user}\0${PASSWORD}`).toString('base64')}"\r\n`);
  return c.readLine();
}

before(async () => {
  const users = ['family', 'pophouse', 'sievehouse'];
  slapd = await startSlapd({ users: users.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  dovecot = await startDovecot({
    name: 'userip',
    users: users.map((name) => ({ name, password: PASSWORD })),
    sieve: true,
    // Later sections of a protocol win over the harness's 10000.
    extraConfig: ['imap', 'pop3', 'sieve'].flatMap((protocol) => [`protocol ${protocol} {`, `  mail_max_userip_connections = ${USERIP_LIMIT}`, '}']),
  });
  front = await startFront({
    slapd,
    sieve: true,
    stores: { alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port, sievePort: dovecot.sievePort! } } } },
    connectionLimits: { max_sessions_per_user: 20 },
  });
});

after(async () => {
  for (const c of held) c.close();
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

describe('a backend\'s limit of the user\'s connections (Dovecot mail_max_userip_connections)', () => {
  test('the classifiers: IMAP [LIMIT], and Dovecot\'s words under POP3 [IN-USE], are the user\'s limit', () => {
    assert.equal(classifyLoginNo('LIMIT'), 'limit');
    assert.equal(classifyRefusal('-ERR [IN-USE] Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)'), 'limit');
    assert.equal(classifyRefusal('-ERR [IN-USE] Mailbox is locked'), 'in-use');
  });

  test('IMAP: NO [LIMIT] with mailfront\'s text, at info, kind limit, no fleet failure', async () => {
    const before = {
      limit: await metric('mailfront_logins_total', 'protocol="imap",result="limit"'),
      backendLogin: await metric('mailfront_logins_total', 'protocol="imap",result="backend-login"'),
      backendError: await metric('mailfront_backend_logins_total', 'store="alpha",result="error"'),
    };
    for (let i = 0; i < USERIP_LIMIT; i++) assert.match(await imapLogin('family'), /^OK /);
    const mark = front.logs.length;
    assert.equal(await imapLogin('family'), `NO [LIMIT] ${LIMIT_TEXT}`);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'BACKEND_USER_LIMIT');
    assert.equal(failed['kind'], 'limit');
    assert.equal(failed['level'], 'info');
    assert.match(String(failed['reason']), /Maximum number of connections from user\+IP exceeded/);
    assert.equal(await metric('mailfront_logins_total', 'protocol="imap",result="limit"'), before.limit + 1);
    assert.equal(await metric('mailfront_logins_total', 'protocol="imap",result="backend-login"'), before.backendLogin);
    assert.equal(await metric('mailfront_backend_logins_total', 'store="alpha",result="error"'), before.backendError);
    assert.equal(await metric('mailfront_backend_logins_total', 'store="alpha",result="limit"') >= 1, true);
  });

  test('POP3 (Dovecot\'s -ERR [IN-USE] with its limit\'s words): -ERR [SYS/TEMP] with mailfront\'s text, kind limit', async () => {
    for (let i = 0; i < USERIP_LIMIT; i++) assert.match(await pop3Login('pophouse'), /^\+OK/);
    const mark = front.logs.length;
    assert.equal(await pop3Login('pophouse'), `-ERR [SYS/TEMP] ${LIMIT_TEXT}`);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'BACKEND_USER_LIMIT');
    assert.equal(failed['kind'], 'limit');
    assert.equal(failed['level'], 'info');
  });

  test('ManageSieve (Dovecot\'s NO without a code): NO (TRYLATER) with mailfront\'s text, kind limit', async () => {
    for (let i = 0; i < USERIP_LIMIT; i++) assert.match(await sieveLogin('sievehouse'), /^OK/);
    const mark = front.logs.length;
    assert.equal(await sieveLogin('sievehouse'), `NO (TRYLATER) "${LIMIT_TEXT}"`);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'BACKEND_USER_LIMIT');
    assert.equal(failed['kind'], 'limit');
    assert.equal(failed['level'], 'info');
  });
});
