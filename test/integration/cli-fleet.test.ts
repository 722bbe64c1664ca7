/**
 * The operator commands sent to a fleet, with real servers: slapd, store alpha (Dovecot a1), and
 * three mailfront instances with both caches on, and `mailfront` run as the command it is, its
 * config listing the instances' admin APIs in admin.instances. kick --all closes the user's
 * sessions and forgets its cached logins on every instance; whereis --all shows each instance's
 * answer and sums up where they disagree (the README's move of a mailbox checks its step 2 so); an
 * instance that is down is named with its error, the others' answers printed, and the command
 * exits 1; several --url go to those instances the same way.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { LineClient, ldifLine, refusingPort, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, runCli as cli, startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Cli-fleet-pw-4e1b';
const REASON = 'Mailbox moving to a new server, please wait and try again later.';
const HOLD = 'mailfrontHold';
const USERS = ['fay', 'fred', 'finn', 'flo'] as const;

let slapd: Slapd;
let a1: Dovecot;
let fronts: Front[];
/** The admin API base URL of each instance of `fronts`, in order. */
let urls: string[];
/** A URL where no instance listens. */
let down: string;
let dir: string;

/** An operator's config file for the CLI: the admin token and admin.instances (`instances`). */
function operatorConfig(name: string, instances: readonly string[]): string {
  const file = join(dir, name);
  writeFileSync(file, stringify({ admin: { token: ADMIN_TOKEN, instances } }));
  return file;
}

/** The part of the CLI's output under the header naming `url`, up to the next header. */
function sectionOf(stdout: string, url: string): string {
  const start = stdout.indexOf(`== ${url} ==\n`);
  assert.ok(start >= 0, `no section for ${url} in:\n${stdout}`);
  const body = stdout.slice(start + `== ${url} ==\n`.length);
  // The sections are apart by a blank line.
  const next = body.indexOf('\n\n== ');
  return next < 0 ? body : body.slice(0, next + 1);
}

async function setHold(uid: string, value: string | undefined): Promise<void> {
  const change = value === undefined ? `delete: ${HOLD}\n` : `replace: ${HOLD}\n${ldifLine(HOLD, value)}\n`;
  await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\n${change}`).catch(() => undefined);
}

async function imapLogin(front: Front, user: string): Promise<string> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    c.send(`t1 LOGIN ${user} ${PASSWORD}`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

async function imapSession(front: Front, user: string): Promise<LineClient> {
  const c = await LineClient.connect(front.imapTrustedPort);
  await c.readLine();
  c.send(`t1 LOGIN ${user} ${PASSWORD}`);
  assert.match(await c.readLine(), /^t1 OK /, `${user}'s login`);
  return c;
}

async function kickEverywhere(user: string): Promise<void> {
  await Promise.all(
    fronts.map(async (front) => {
      const { port } = front.mailfront.httpAddress()!;
      await fetch(`http://127.0.0.1:${port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ user }) });
    }),
  );
}

before(async () => {
  registerPasswords(PASSWORD);
  dir = tmpDir('cli-fleet').path;
  slapd = await startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  a1 = await startDovecot({ name: 'cli-fleet-a1', users: USERS.map((name) => ({ name, password: PASSWORD })) });
  const options = {
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort } } } },
    directory: { hold_attribute: HOLD, entry_cache_ttl_ms: 60_000, auth_cache_ttl_ms: 60_000 },
  };
  fronts = await Promise.all([startFront(options), startFront(options), startFront(options)]);
  urls = fronts.map((front) => `http://127.0.0.1:${front.mailfront.httpAddress()!.port}`);
  down = `http://127.0.0.1:${await refusingPort()}`;
});

after(async () => {
  await Promise.all((fronts ?? []).map((front) => front.stop()));
  await Promise.all([slapd?.stop(), a1?.stop()]);
});

test('kick --all closes the user\'s sessions and forgets its cached logins on every instance of admin.instances', async () => {
  const config = operatorConfig('fleet.yaml', urls);
  const sessions = await Promise.all(fronts.map((front) => imapSession(front, 'fay')));
  try {
    const kick = await cli('kick', 'fay', '--all', '-c', config);
    assert.equal(kick.code, 0, kick.stderr);
    assert.equal(kick.stderr, '');
    for (const url of urls) assert.match(sectionOf(kick.stdout, url), /^closed 1 session\(s\), forgot \d+ cached item\(s\) of the user\n/, kick.stdout);
    // In the order admin.instances lists them.
    assert.deepEqual([...kick.stdout.matchAll(/^== (\S+) ==$/gm)].map((m) => m[1]), urls);
    for (const session of sessions) assert.equal(await session.waitClosed(5_000), true, 'every instance closed its session of fay');
    // Nothing cached anywhere: whereis on each says so.
    const whereis = await cli('whereis', 'fay', '--all', '-c', config, '--json');
    assert.equal(whereis.code, 0, whereis.stderr);
    const byUrl = JSON.parse(whereis.stdout) as Record<string, { cached: unknown[]; sessions: unknown[] }>;
    assert.deepEqual(Object.keys(byUrl), urls);
    for (const url of urls) assert.deepEqual([byUrl[url]!.cached, byUrl[url]!.sessions], [[], []], url);
  } finally {
    for (const session of sessions) session.close();
  }
});

test('whereis --all shows each instance and sums up: held on 2 of 3, the one not kicked lets the user in from its cache', async () => {
  const config = operatorConfig('fleet.yaml', urls);
  try {
    for (const front of fronts) assert.match(await imapLogin(front, 'fred'), /^t1 OK /);
    await setHold('fred', REASON);
    // Step 2 of the move run on two instances of the three.
    const kick = await cli('kick', 'fred', '--url', urls[0]!, '--url', urls[1]!, '--token', ADMIN_TOKEN);
    assert.equal(kick.code, 0, kick.stderr);
    assert.deepEqual([...kick.stdout.matchAll(/^== (\S+) ==$/gm)].map((m) => m[1]), urls.slice(0, 2));

    const whereis = await cli('whereis', 'fred', '--all', '-c', config);
    assert.equal(whereis.code, 0, whereis.stderr);
    for (const url of urls) assert.match(sectionOf(whereis.stdout, url), /^user +fred\n/m);
    assert.match(sectionOf(whereis.stdout, urls[0]!), /^cached here +nothing/m);
    assert.match(sectionOf(whereis.stdout, urls[2]!), /^cached here +login \(auth_cache_ttl_ms\): store alpha, \d+ s more$/m);
    const summary = whereis.stdout.slice(whereis.stdout.indexOf('== summary ==\n'));
    assert.ok(summary.startsWith('== summary ==\n'), whereis.stdout);
    assert.match(summary, new RegExp(`^held on 2 of 3 instances; let in on ${urls[2]}$`, 'm'), summary);
    // The login was cached a moment ago for auth_cache_ttl_ms (60 s): a second or two of it gone on a loaded machine.
    const more = new RegExp(`^${urls[2]} lets the user in from its cache for (\\d+) s more: mailfront kick fred --url ${urls[2]}$`, 'm').exec(summary);
    assert.ok(more !== null && Number(more[1]) >= 50 && Number(more[1]) <= 60, summary);
    // As it says.
    assert.match(await imapLogin(fronts[2]!, 'fred'), /^t1 OK /);
    assert.equal(await imapLogin(fronts[0]!, 'fred'), `t1 NO [UNAVAILABLE] ${REASON}`);

    // Kicked there too: the instances agree.
    assert.equal((await cli('kick', 'fred', '--all', '-c', config)).code, 0);
    const agreed = await cli('whereis', 'fred', '--all', '-c', config);
    assert.match(agreed.stdout, /== summary ==\nheld on 3 of 3 instances\n$/, agreed.stdout);
  } finally {
    await setHold('fred', undefined);
    await kickEverywhere('fred');
  }
});

test('an instance down: its error named, the others\' answers printed, exit 1', async () => {
  const config = operatorConfig('with-down.yaml', [urls[0]!, down, urls[1]!]);
  const sessions = await Promise.all([imapSession(fronts[0]!, 'finn'), imapSession(fronts[1]!, 'finn')]);
  try {
    const kick = await cli('kick', 'finn', '--all', '-c', config);
    assert.equal(kick.code, 1, kick.stdout);
    assert.match(sectionOf(kick.stdout, urls[0]!), /^closed 1 session\(s\)/);
    assert.match(sectionOf(kick.stdout, urls[1]!), /^closed 1 session\(s\)/);
    assert.match(sectionOf(kick.stdout, down), new RegExp(`^failed: cannot reach the admin API at ${down}: .*ECONNREFUSED`));
    assert.match(kick.stderr, new RegExp(`^mailfront kick: failed on 1 of 3 instances: ${down}\n`), kick.stderr);
    for (const session of sessions) assert.equal(await session.waitClosed(5_000), true);

    const json = await cli('kick', 'finn', '--all', '-c', config, '--json');
    assert.equal(json.code, 1);
    const byUrl = JSON.parse(json.stdout) as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(byUrl), [urls[0], down, urls[1]]);
    assert.deepEqual(byUrl[urls[0]!]!['kicked'], []);
    assert.match(String(byUrl[down]!['error']), /^cannot reach the admin API at /);

    const whereis = await cli('whereis', 'finn', '--all', '-c', config);
    assert.equal(whereis.code, 1);
    assert.match(whereis.stdout, new RegExp(`== summary ==\\nnot held: let in on 2 of 3 instances\\n${down} failed \\(cannot reach the admin API at [^\\n]*\\): what it would do is not known\\n$`), whereis.stdout);
  } finally {
    for (const session of sessions) session.close();
  }
});

test('reload, sessions and stores --all answer per instance; failover takes one --url only', async () => {
  const config = operatorConfig('fleet.yaml', urls);
  const reload = await cli('reload', '--all', '-c', config);
  assert.equal(reload.code, 0, reload.stderr);
  for (const url of urls) assert.match(sectionOf(reload.stdout, url), /^config reloaded\nstore map version \d+ in force\n/);
  const session = await imapSession(fronts[1]!, 'flo');
  try {
    const sessions = await cli('sessions', '--user', 'flo', '--all', '-c', config);
    assert.equal(sessions.code, 0, sessions.stderr);
    assert.equal(sectionOf(sessions.stdout, urls[0]!), 'no sessions\n');
    assert.match(sectionOf(sessions.stdout, urls[1]!), /^SESSION .*\n\S+ +imap +flo +alpha +a1 /);
  } finally {
    session.close();
  }
  const stores = await cli('stores', '--all', '-c', config);
  assert.equal(stores.code, 0, stores.stderr);
  for (const url of urls) assert.match(sectionOf(stores.stdout, url), /^store map version \d+\nSTORE /);
  const failover = await cli('failover', 'alpha', 'a1', '--url', urls[0]!, '--url', urls[1]!, '--token', ADMIN_TOKEN);
  assert.equal(failover.code, 2);
  assert.match(failover.stderr, /one --url only/);
  assert.equal((await cli('failover', 'alpha', 'a1', '--all', '-c', config)).code, 2);
});
