/**
 * IPv4 clients behind an RFC 6052 translator (NAT64, SIIT-DC), named by a balancer's PROXY v2
 * headers as `64:ff9b::a.b.c.d`: each is its own address for the per-address connection limit and
 * the throttle (real slapd and Dovecot, raw sockets). Keyed by the /64, they all shared one count,
 * and one attacker's wrong passwords refused every IPv4 user. The logs keep the address the
 * balancer named; `nat64_prefixes` set at a reload replaces the well-known prefix.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { encodeProxyV2 } from '../../src/server/proxy-protocol.js';
import { LineClient, freePort, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, connectionsReleased, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Nat64-pw-5c1d';
const USERS = ['nina', 'noel', 'nora', 'ned'];
const PER_ADDRESS = 3;

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;
/** The PROXY listeners added at the first reload, by protocol. */
const balanced = { imap: 0, pop3: 0 };

/** Rewrites the config with `change` and reloads it through the admin API. */
async function reload(change: (doc: Record<string, unknown> & { listeners: unknown[] }) => void): Promise<void> {
  const doc = parse(readFileSync(front.configFile, 'utf8')) as Record<string, unknown> & { listeners: unknown[] };
  change(doc);
  writeFileSync(front.configFile, stringify(doc));
  const answer = await fetch(`http://127.0.0.1:${front.mailfront.httpAddress()!.port}/api/reload`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(answer.status, 200, await answer.text());
}

before(async () => {
  slapd = await startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  dovecot = await startDovecot({ name: 'nat64', users: USERS.map((name) => ({ name, password: PASSWORD })) });
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } },
    connectionLimits: { max_connections: 100, max_connections_per_address: PER_ADDRESS, max_sessions_per_user: 50 },
    throttle: { enabled: true, base_delay_ms: 1, max_delay_ms: 2, failures_per_user: 100, failures_per_address: 2, refusal_ms: 60_000 },
    session: { auth_failure_delay_ms: 50 },
  });
  balanced.imap = await freePort();
  balanced.pop3 = await freePort();
  await reload((doc) => {
    for (const protocol of ['imap', 'pop3'] as const) {
      doc.listeners.push({ name: `${protocol}-balanced`, protocol, host: '127.0.0.1', port: balanced[protocol], tls: 'none', plaintext_without_tls: true, proxy_protocol: { trusted_networks: ['127.0.0.0/8'] } });
    }
  });
});
after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** A connection through the balancer for `client` (an IPv6 literal, as a translator presents it): the greeting. */
async function through(port: number, client: string, held: LineClient[]): Promise<string> {
  const c = await LineClient.connect(port);
  held.push(c);
  c.write(encodeProxyV2({ address: client, port: 40_000 + held.length }, { address: '64:ff9b::c000:207', port: 143 }));
  return c.readLine();
}

/** An IMAP login through the balancer as `client`: the tagged answer. */
async function imapLogin(client: string, user: string, password: string): Promise<string> {
  registerPasswords(password);
  const held: LineClient[] = [];
  try {
    assert.match(await through(balanced.imap, client, held), /^\* OK /);
    held[0]!.send(`t1 LOGIN ${user} ${password}`);
    return await held[0]!.readLine(10_000);
  } finally {
    for (const c of held) c.close();
  }
}

describe('IPv4 clients behind the translator prefix 64:ff9b::/96', () => {
  test('four IPv4 clients each get their own per-address limit (PROXY v2, IMAP and POP3)', async () => {
    const clients = ['64:ff9b::c633:6401', '64:ff9b::c633:6402', '64:ff9b::cb00:7101', '64:ff9b::cb00:7102'];
    for (const [protocol, refusal] of [['imap', /^\* BYE \[LIMIT\] /], ['pop3', /^-ERR \[SYS\/TEMP\] /]] as const) {
      const held: LineClient[] = [];
      try {
        for (const client of clients) {
          for (let i = 0; i < PER_ADDRESS; i++) assert.match(await through(balanced[protocol], client, held), /^(\* OK|\+OK) /, `${protocol}: connection ${i + 1} of ${client}`);
        }
        // Each is still held to its own limit, as the IPv4 address it embeds.
        for (const client of clients) assert.match(await through(balanced[protocol], client, held), refusal, `${protocol}: ${client} over its limit`);
        assert.match(await through(balanced[protocol], '64:ff9b::198.51.100.1', held), refusal, 'the same IPv4 client, the address written with a dotted tail');
      } finally {
        for (const c of held) c.close();
      }
      await connectionsReleased(front);
    }
  });

  test("one IPv4 client's wrong passwords refuse that client only; the logs name the address the balancer sent", async () => {
    const attacker = '64:ff9b::c633:6442';
    const mark = front.logs.length;
    for (const [i, user] of ['nina', 'noel', 'nora'].entries()) await imapLogin(attacker, user, `nat64-wrong-${i}`);
    assert.match(await imapLogin(attacker, 'ned', PASSWORD), /^t1 NO \[LIMIT\] /, 'the attacker is refused');
    assert.match(await imapLogin('64:ff9b::c633:6443', 'ned', PASSWORD), /^t1 OK /, 'its neighbour behind the translator is not');
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['client'], attacker);
    await connectionsReleased(front);
  });

  test('nat64_prefixes set at a reload replaces the well-known prefix: its addresses are counted per IPv4 client, 64:ff9b:: per /64 again', async () => {
    await reload((doc) => {
      doc['nat64_prefixes'] = ['2001:db8:46::/96'];
    });
    const held: LineClient[] = [];
    try {
      for (const client of ['2001:db8:46::c633:6401', '2001:db8:46::c633:6402']) {
        for (let i = 0; i < PER_ADDRESS; i++) assert.match(await through(balanced.imap, client, held), /^\* OK /, `${client}, connection ${i + 1}`);
      }
      for (let i = 0; i < PER_ADDRESS; i++) assert.match(await through(balanced.imap, `64:ff9b::c633:64${10 + i}`, held), /^\* OK /);
      assert.match(await through(balanced.imap, '64:ff9b::cb00:7101', held), /^\* BYE \[LIMIT\] /, 'another IPv4 client in the same /64, no longer read as one');
    } finally {
      for (const c of held) c.close();
    }
    await connectionsReleased(front);
  });
});
