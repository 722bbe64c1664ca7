/**
 * At a stop's drain deadline the sessions still spliced are told BYE at random moments over the
 * next failover.drain_spread_ms, as a failover does, not all in one burst: IDLE sessions never end
 * on their own, and ten thousand of them told BYE in one millisecond came back to the fleet's
 * other instances, and their directory, at once. Each still has its whole drain. Real slapd and
 * Dovecot.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Spread-pw-41c7';
const USERS = ['sam', 'sue'];
const SESSIONS = 20;
const DRAIN_MS = 1_000;
const SPREAD_MS = 1_000;

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front | undefined;

before(async () => {
  slapd = await startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  dovecot = await startDovecot({ name: 'stop-spread', users: USERS.map((name) => ({ name, password: PASSWORD })) });
});
after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

async function spliced(port: number, user: string): Promise<LineClient> {
  const client = await LineClient.connect(port);
  await client.readLine();
  client.send(`a1 LOGIN ${user} ${PASSWORD}`);
  assert.match(await client.readLine(), /^a1 OK /);
  return client;
}

test(`at a stop's drain deadline, ${SESSIONS} spliced sessions are told BYE over the spread window that follows it, none before the deadline`, async () => {
  front = await startFront({ slapd, stores: { alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort } } } }, failover: { drain_spread_ms: SPREAD_MS } });
  const port = front.imapTrustedPort;
  const clients = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => spliced(port, USERS[i % USERS.length]!)));
  try {
    const started = performance.now();
    const stopped = front.mailfront.stop(DRAIN_MS, 0);
    const told = await Promise.all(
      clients.map(async (client) => {
        const line = await client.readLine(DRAIN_MS + 5_000);
        return { line, at: performance.now() - started };
      }),
    );
    await stopped;
    for (const { line } of told) assert.equal(line, '* BYE [UNAVAILABLE] Server shutting down');
    const times = told.map((t) => t.at).sort((a, b) => a - b);
    // Each session has its whole drain: nothing is said before the deadline (a timer never fires early).
    assert.ok(times[0]! >= DRAIN_MS - 20, `the first BYE came ${Math.round(times[0]!)} ms after the stop, before the drain's deadline`);
    // Twenty moments drawn over a second: all of them within 300 ms of each other is a chance of
    // about 20 × 0.3^19 (1e-9). The old code said them all in the same turn of the loop.
    assert.ok(times.at(-1)! - times[0]! >= 300, `the BYEs came within ${Math.round(times.at(-1)! - times[0]!)} ms of each other: ${times.map(Math.round).join(', ')}`);
    for (const client of clients) assert.equal(await client.waitClosed(5_000), true);
  } finally {
    for (const client of clients) client.close();
  }
});
