// Self-test of the real-server harness: slapd, two Dovecot instances and Cyrus, started on free
// loopback ports, checked with real clients (ldapts, imapflow) and raw sockets, then stopped.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { ImapFlow } from 'imapflow';
import { Client } from 'ldapts';
import {
  childPids,
  LineClient,
  pidsMentioning,
  startCyrus,
  startDovecot,
  startSlapd,
  waitGone,
  type Cyrus,
  type Dovecot,
  type Slapd,
} from './servers/index.js';

const message = (subject: string): string =>
  [
    'From: sender@example.org',
    'To: someone@example.org',
    `Subject: ${subject}`,
    'Message-ID: <' + subject.replace(/\W/g, '') + '@example.org>',
    'Date: Mon, 01 Jan 2024 00:00:00 +0000',
    '',
    `Body of ${subject}.`,
    '',
  ].join('\r\n');

/** ldapts reports a requested attribute that was not returned as [] (or leaves it out). */
const noValues = (value: unknown): boolean => value === undefined || (Array.isArray(value) && value.length === 0);

async function imapflowSubjects(
  options: ConstructorParameters<typeof ImapFlow>[0],
): Promise<{ exists: number; subjects: string[] }> {
  const client = new ImapFlow({ logger: false, disableAutoIdle: true, ...options });
  await client.connect();
  try {
    const mailbox = await client.mailboxOpen('INBOX');
    const subjects: string[] = [];
    if (mailbox.exists > 0) {
      for await (const msg of client.fetch('1:*', { envelope: true })) subjects.push(msg.envelope?.subject ?? '');
    }
    return { exists: mailbox.exists, subjects };
  } finally {
    await client.logout();
  }
}

describe('real-server harness', () => {
  let slapd: Slapd | undefined;
  let plain: Dovecot | undefined;
  let secure: Dovecot | undefined;
  let cyrus: Cyrus | undefined;
  const started = Date.now();

  before(async () => {
    const results = await Promise.allSettled([
      startSlapd({
        users: [
          { uid: 'alice', password: 'alice-pw', store: 'store1', mail: 'alice@example.org' },
          { uid: 'bob', password: 'bob-pw', store: 'store2' },
        ],
        tls: true,
      }),
      startDovecot({ name: 'plain', users: [{ name: 'alice', password: 'alice-pw' }] }),
      startDovecot({
        name: 'secure',
        users: [{ name: 'bob', password: 'bob-pw' }],
        masterUser: { name: 'proxyadmin', password: 'master-pw' },
        tls: true,
        haproxy: true,
      }),
      startCyrus({
        users: [{ name: 'carol', password: 'carol-pw' }],
        proxyAdmin: { name: 'proxyadmin', password: 'proxy-pw' },
      }),
    ]);
    const [s, p, d, c] = results;
    if (s?.status === 'fulfilled') slapd = s.value;
    if (p?.status === 'fulfilled') plain = p.value;
    if (d?.status === 'fulfilled') secure = d.value;
    if (c?.status === 'fulfilled') cyrus = c.value;
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0) {
      const reasons = failed.map((r) => (r.reason instanceof Error ? (r.reason.stack ?? r.reason.message) : String(r.reason)));
      throw new Error(`a server failed to start:\n${reasons.join('\n---\n')}`);
    }
    process.stderr.write(`harness: all servers up in ${Date.now() - started} ms\n`);
  });

  after(async () => {
    await Promise.allSettled([slapd?.stop(), plain?.stop(), secure?.stop(), cyrus?.stop()]);
  });

  it('slapd: the service account finds a user and its store; the user can bind; passwords stay hidden', async () => {
    assert.ok(slapd);
    const client = new Client({ url: slapd.url, timeout: 5_000, connectTimeout: 5_000 });
    try {
      await client.bind(slapd.bindDn, slapd.bindPassword);
      const { searchEntries } = await client.search(slapd.usersDn, {
        scope: 'sub',
        filter: '(&(objectClass=mailfrontUser)(uid=alice))',
        attributes: ['uid', 'mailStore', 'mail', 'userPassword'],
      });
      assert.equal(searchEntries.length, 1);
      const entry = searchEntries[0];
      assert.ok(entry);
      assert.equal(entry.dn, slapd.userDn('alice'));
      assert.equal(entry['mailStore'], 'store1');
      assert.equal(entry['mail'], 'alice@example.org');
      assert.ok(noValues(entry['userPassword']), 'the service account must not read passwords');
    } finally {
      await client.unbind();
    }

    const user = new Client({ url: slapd.url, timeout: 5_000 });
    try {
      await user.bind(slapd.userDn('bob'), 'bob-pw');
      const own = await user.search(slapd.userDn('bob'), { scope: 'base', attributes: ['uid', 'mailStore', 'userPassword'] });
      assert.equal(own.searchEntries[0]?.['mailStore'], 'store2', 'a user reads its own entry');
      assert.ok(noValues(own.searchEntries[0]?.['userPassword']), 'a user does not read its password');
      const others = await user
        .search(slapd.userDn('alice'), { scope: 'base', attributes: ['uid'] })
        .catch(() => ({ searchEntries: [] }));
      assert.deepEqual(others.searchEntries, [], 'a user does not see other users');
    } finally {
      await user.unbind();
    }

    const wrong = new Client({ url: slapd.url, timeout: 5_000 });
    await assert.rejects(wrong.bind(slapd.userDn('alice'), 'nope'), /InvalidCredentials|Invalid credentials/i);
    await wrong.unbind();

    // ldaps with the test CA
    assert.ok(slapd.ldapsUrl && slapd.caFile);
    const tls = new Client({ url: slapd.ldapsUrl, timeout: 5_000, tlsOptions: { ca: readFileSync(slapd.caFile), servername: 'localhost' } });
    try {
      await tls.bind(slapd.userDn('alice'), 'alice-pw');
    } finally {
      await tls.unbind();
    }
  });

  it('slapd: modify() changes a store; restart() keeps data and port; pause() hangs it', async () => {
    assert.ok(slapd);
    await slapd.setStore('bob', 'store9');
    const oldPid = slapd.pid;
    await slapd.restart();
    assert.notEqual(slapd.pid, oldPid);
    const client = new Client({ url: slapd.url, timeout: 1_000 });
    await client.bind(slapd.bindDn, slapd.bindPassword);
    const { searchEntries } = await client.search(slapd.usersDn, { filter: '(uid=bob)', attributes: ['mailStore'] });
    assert.equal(searchEntries[0]?.['mailStore'], 'store9');
    await client.unbind();

    // While paused the kernel still accepts connections, but nothing is answered; after resume()
    // the queued request is served.
    await slapd.pause();
    const socket = connect({ host: '127.0.0.1', port: slapd.port });
    try {
      const received: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => received.push(chunk));
      await once(socket, 'connect');
      // An anonymous LDAPv3 simple bind request, message id 1.
      socket.write(Buffer.from('300c020101600702010304008000', 'hex'));
      await delay(300);
      assert.equal(received.length, 0, 'a paused slapd does not answer');
      slapd.resume();
      for (let i = 0; i < 100 && received.length === 0; i++) await delay(20);
      assert.ok(received.length > 0, 'slapd answers after resume()');
      assert.equal(received[0]?.[0], 0x30, 'an LDAP message');
    } finally {
      slapd.resume();
      socket.destroy();
    }
  });

  it('dovecot: imapflow login sees a delivered message', async () => {
    assert.ok(plain);
    await plain.deliver('alice', message('hello alice'));
    const { exists, subjects } = await imapflowSubjects({
      host: plain.host,
      port: plain.imapPort,
      secure: false,
      auth: { user: 'alice', pass: 'alice-pw' },
    });
    assert.equal(exists, 1);
    assert.deepEqual(subjects, ['hello alice']);
  });

  it('dovecot: master user login (user*master and SASL authzid), over imaps and STARTTLS', async () => {
    assert.ok(secure && secure.imapsPort && secure.caFile);
    await secure.deliver('bob', message('hello bob'));
    const ca = readFileSync(secure.caFile);
    const viaMaster = await imapflowSubjects({
      host: secure.host,
      port: secure.imapsPort,
      secure: true,
      tls: { ca, servername: 'localhost' },
      auth: { user: 'bob*proxyadmin', pass: 'master-pw' },
    });
    assert.deepEqual(viaMaster.subjects, ['hello bob']);

    const viaStarttls = await imapflowSubjects({
      host: secure.host,
      port: secure.imapPort,
      secure: false,
      doSTARTTLS: true,
      tls: { ca, servername: 'localhost' },
      auth: { user: 'proxyadmin', pass: 'master-pw', authzid: 'bob', loginMethod: 'AUTH=PLAIN' },
    });
    assert.deepEqual(viaStarttls.subjects, ['hello bob']);

    const client = await LineClient.connect(secure.imapsPort, { tls: { ca } });
    try {
      assert.match(await client.readLine(), /^\* OK .*secure ready\./);
      const auth = await client.authenticatePlain('bob', 'proxyadmin', 'master-pw');
      assert.equal(auth.status, 'OK', auth.text);
      const bad = await LineClient.connect(secure.imapsPort, { tls: { ca } });
      await bad.readLine();
      const refused = await bad.imap('LOGIN "bob*proxyadmin" "wrong"');
      assert.equal(refused.status, 'NO');
      bad.close();
    } finally {
      client.close();
    }
  });

  it('dovecot: trusts ID x-originating-ip from 127.0.0.0/8 and logs the client IP', async () => {
    assert.ok(plain);
    const client = await LineClient.connect(plain.imapPort);
    try {
      assert.match(await client.readLine(), /^\* OK .*plain ready\./);
      await client.imapOk('ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40000" "x-connected-ip" "127.0.0.1")');
      await client.imapOk('LOGIN "alice" "alice-pw"');
      await client.imapOk('LOGOUT');
    } finally {
      client.close();
    }
    let log = '';
    for (let i = 0; i < 40 && !/imap-login: Info: Login: user=<alice>.*rip=192\.0\.2\.7/.test(log); i++) {
      await new Promise((r) => setTimeout(r, 50));
      log = await plain.readLog();
    }
    assert.match(log, /imap-login: Info: Login: user=<alice>.*rip=192\.0\.2\.7/);
  });

  it('dovecot: POP3 USER/PASS over a raw socket, pop3s and haproxy listeners', async () => {
    assert.ok(plain && secure && secure.pop3sPort && secure.caFile && secure.imapHaproxyPort && secure.pop3HaproxyPort);
    const client = await LineClient.connect(plain.pop3Port);
    try {
      assert.match(await client.readLine(), /^\+OK (\[XCLIENT\] )?plain ready\./);
      await client.pop3('USER alice');
      await client.pop3('PASS alice-pw');
      assert.match(await client.pop3('STAT'), /^\+OK 1 \d+/);
      const body = await client.pop3Multi('RETR 1');
      assert.ok(body.includes('Subject: hello alice'));
      await client.pop3('QUIT');
    } finally {
      client.close();
    }
    const tls = await LineClient.connect(secure.pop3sPort, { tls: { ca: readFileSync(secure.caFile) } });
    try {
      assert.match(await tls.readLine(), /^\+OK (\[XCLIENT\] )?secure ready\./);
      await tls.pop3('USER bob*proxyadmin');
      await tls.pop3('PASS master-pw');
      assert.match(await tls.pop3('STAT'), /^\+OK 1 /);
    } finally {
      tls.close();
    }
    // A PROXY v1 header is required on the haproxy listener.
    const proxied = await LineClient.connect(secure.imapHaproxyPort);
    try {
      proxied.write('PROXY TCP4 198.51.100.9 127.0.0.1 50000 143\r\n');
      assert.match(await proxied.readLine(), /^\* OK .*secure ready\./);
    } finally {
      proxied.close();
    }
  });

  it('cyrus: SASL PLAIN with authzid=user, authcid=proxyadmin lands in the user INBOX; POP3 works', async () => {
    assert.ok(cyrus);
    await cyrus.deliver('carol', message('hello carol'));
    const client = await LineClient.connect(cyrus.imapPort);
    try {
      assert.match(await client.readLine(), /^\* OK .*Cyrus IMAP/);
      const auth = await client.authenticatePlain('carol', 'proxyadmin', 'proxy-pw');
      assert.equal(auth.status, 'OK', auth.text);
      const select = await client.imapOk('SELECT INBOX');
      assert.ok(select.untagged.includes('* 1 EXISTS'), select.untagged.join('\n'));
      await client.imapOk('LOGOUT');
    } finally {
      client.close();
    }
    // A user may not act for another user.
    const other = await LineClient.connect(cyrus.imapPort);
    try {
      await other.readLine();
      const refused = await other.authenticatePlain('proxyadmin', 'carol', 'carol-pw');
      assert.equal(refused.status, 'NO');
    } finally {
      other.close();
    }
    // imapflow 2.x can send an authzid too.
    const viaImapflow = await imapflowSubjects({
      host: cyrus.host,
      port: cyrus.imapPort,
      secure: false,
      auth: { user: 'proxyadmin', pass: 'proxy-pw', authzid: 'carol', loginMethod: 'AUTH=PLAIN' },
    });
    assert.deepEqual(viaImapflow.subjects, ['hello carol']);

    const pop = await LineClient.connect(cyrus.pop3Port);
    try {
      assert.match(await pop.readLine(), /^\+OK .*Cyrus POP3/);
      await pop.pop3('USER carol');
      await pop.pop3('PASS carol-pw');
      assert.match(await pop.pop3('STAT'), /^\+OK 1 \d+/);
      const body = await pop.pop3Multi('RETR 1');
      assert.ok(body.includes('Subject: hello carol'));
      await pop.pop3('QUIT');
    } finally {
      pop.close();
    }
  });

  it('restart() keeps ports and mail; pause() hangs Dovecot; stopOnly() closes the Cyrus port until startAgain()', async () => {
    assert.ok(plain && cyrus);
    const dovecotPid = plain.pid;
    await plain.restart();
    assert.notEqual(plain.pid, dovecotPid);
    const pop = await LineClient.connect(plain.pop3Port);
    try {
      await pop.readLine();
      await pop.pop3('USER alice');
      await pop.pop3('PASS alice-pw');
      assert.match(await pop.pop3('STAT'), /^\+OK 1 /);
    } finally {
      pop.close();
    }

    // A paused Dovecot (master and all its processes stopped) accepts but does not greet.
    await plain.pause();
    const hung = await LineClient.connect(plain.imapPort);
    try {
      await assert.rejects(hung.readLine(300), /timed out/);
      plain.resume();
      assert.match(await hung.readLine(), /^\* OK /);
    } finally {
      plain.resume();
      hung.close();
    }

    await cyrus.stopOnly();
    await assert.rejects(LineClient.connect(cyrus.imapPort, { timeoutMs: 1_000 }), /ECONNREFUSED/);
    await cyrus.startAgain();
    const imap = await LineClient.connect(cyrus.imapPort);
    try {
      await imap.readLine();
      await imap.imapOk('LOGIN carol carol-pw');
      const status = await imap.imapOk('STATUS INBOX (MESSAGES)');
      assert.ok(status.untagged.some((l) => /MESSAGES 1\)/.test(l)), status.untagged.join('\n'));
    } finally {
      imap.close();
    }
  });

  it('stop() ends every daemon and its children and removes the directories; stop is idempotent', async () => {
    assert.ok(slapd && plain && secure && cyrus);
    const servers = [
      { name: 'slapd', pid: slapd.pid, dir: slapd.dir, instanceName: '', stop: () => slapd?.stop() },
      { name: 'dovecot plain', pid: plain.pid, dir: plain.dir, instanceName: plain.instanceName, stop: () => plain?.stop() },
      { name: 'dovecot secure', pid: secure.pid, dir: secure.dir, instanceName: secure.instanceName, stop: () => secure?.stop() },
      { name: 'cyrus', pid: cyrus.pid, dir: cyrus.dir, instanceName: '', stop: () => cyrus?.stop() },
    ];
    const children = servers.flatMap((s) => childPids(s.pid));
    assert.ok(children.length > 0, 'Dovecot and Cyrus have child processes');
    const t0 = Date.now();
    await Promise.all(servers.map((s) => s.stop()));
    process.stderr.write(`harness: all servers stopped in ${Date.now() - t0} ms\n`);
    await Promise.all(servers.map((s) => s.stop())); // idempotent
    const alive = await waitGone([...servers.map((s) => s.pid), ...children], 5_000);
    assert.deepEqual(alive, [], 'no daemon or child process is left');
    for (const s of servers) {
      assert.deepEqual(pidsMentioning(s.dir), [], `no process mentions ${s.dir}`);
      if (s.instanceName) assert.deepEqual(pidsMentioning(s.instanceName), [], `no process of ${s.instanceName} is left`);
      assert.equal(existsSync(s.dir), false, `${s.name}: ${s.dir} removed`);
    }
  });
});
