/**
 * A failover's or maintenance's drain, and the end of a stop, close their sessions a bounded batch
 * per turn of the event loop (proxy/drain-schedule.ts), not all in one timers phase: a close costs
 * some 0.1 ms of the loop, and with failover.drain_spread_ms 0 the old timer per session closed a
 * store's 5,000 sessions in one turn, 1 to 2 s in which no login, scrape or admin request was
 * served. What a drain does is as before: each session closed once, at its moment, unless its
 * store came back to its slot. The sessions are stand-ins in the registry (and in a listener's
 * set, for the stop): no backend, no directory.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import type { SessionEntry } from '../../src/proxy/registry.js';
import type { Slot } from '../../src/routing/storemap.js';
import type { Session } from '../../src/session/session.js';
import { registerPasswords, standInDirectory, suiteLogWriter } from './front.js';
import { freePort, tmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused');

const MANY = 3_000;

/** A mailfront with store s1 (slots a1, the master, and a2) in a file store map, and a stand-in directory. */
async function start(spreadMs: number): Promise<{ mailfront: Mailfront; a1: Slot; stop: () => Promise<void> }> {
  const dir = tmpDir('drain-turns');
  await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { s1: { current_master: 'a1', slots: { a1: { host: '127.0.0.1', imap_port: 10143 }, a2: { host: '127.0.0.2', imap_port: 10143 } } } } }));
  await writeFile(
    join(dir.path, 'mailfront.yaml'),
    stringify({
      log: { level: 'info' },
      listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: await freePort(), tls: 'none', plaintext_without_tls: true }],
      directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=reader', bind_password: 'reader-pw-unused', base_dn: 'dc=example' },
      store_map: { file: 'stores.yaml' },
      failover: { drain_spread_ms: spreadMs },
      throttle: { enabled: false },
      health: { interval_ms: 0 },
      shutdown: { unready_delay_ms: 0 },
    }),
  );
  const mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory: standInDirectory(), logDestination: { write: suiteLogWriter() } });
  const a1 = mailfront.holder.current.stores.get('s1')!.slots.get('a1')!;
  let stopped = false;
  return {
    mailfront,
    a1,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await mailfront.stop(0, 0);
      await dir.remove();
    },
  };
}

/** `count` spliced sessions on a1 in the registry; a close is recorded in `closes` and ends the session as a real one does. */
function splicedOn(mailfront: Mailfront, a1: Slot, count: number, closes: string[], onClose: () => void = () => undefined): SessionEntry[] {
  const entries = Array.from({ length: count }, (_, i): SessionEntry => {
    const entry: SessionEntry = {
      id: `t${i}-${Math.random()}`,
      protocol: 'imap',
      user: `u${i}`,
      dn: `uid=u${i},dc=example`,
      kicksAtLogin: 0,
      store: 's1',
      slot: 'a1',
      server: a1,
      clientAddress: '127.0.0.1',
      startedAt: 0,
      traffic: { bytesFromClient: 0, bytesToClient: 0 },
      reportedFromClient: 0,
      reportedToClient: 0,
      close: (reason) => {
        closes.push(`${entry.id} ${reason}`);
        onClose();
        mailfront.registry.remove(entry);
      },
    };
    return entry;
  });
  for (const entry of entries) mailfront.registry.add(entry);
  return entries;
}

async function until(what: string, done: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!done()) {
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test(`with drain_spread_ms 0, a failover closes the old master's ${MANY} sessions over several turns of the event loop, each once`, async () => {
  const { mailfront, a1, stop } = await start(0);
  try {
    const closes: string[] = [];
    // A turn of the loop asked for at the first close: it comes before the last close, not after all of them.
    let closedWhenATurnCame: number | undefined;
    const entries = splicedOn(mailfront, a1, MANY, closes, () => {
      if (closes.length === 1) setImmediate(() => (closedWhenATurnCame = closes.length));
    });
    await mailfront.holder.failover('s1', 'a2');
    await until(`${MANY} closes`, () => closes.length === MANY);
    assert.ok(closedWhenATurnCame !== undefined && closedWhenATurnCame < MANY, `the turn asked for at the first close came after ${String(closedWhenATurnCame)} of ${MANY} closes`);
    assert.deepEqual(closes.sort(), entries.map((e) => `${e.id} drained`).sort());
    assert.equal(mailfront.registry.size, 0);
  } finally {
    await stop();
  }
});

test('a drain leaves a session whose store came back to its slot by its moment, and closes one in two drains at once once', async () => {
  const spreadMs = 2_000;
  const { mailfront, a1, stop } = await start(spreadMs);
  try {
    const closes: string[] = [];
    const entries = splicedOn(mailfront, a1, 40, closes);
    // A → B → A within the spread: at their moments the sessions are on the master again. The
    // moments are drawn in the spread's second half, so that none comes before the map is back.
    const random = Math.random;
    try {
      Math.random = () => 0.5 + random() / 2;
      await mailfront.holder.failover('s1', 'a2');
    } finally {
      Math.random = random;
    }
    await mailfront.holder.failover('s1', 'a1');
    await sleep(spreadMs + 300);
    assert.deepEqual(closes, [], 'no session closed: the store came back to a1');
    // Off a1 again, and into maintenance, within one spread: two drains of the same sessions.
    await mailfront.holder.failover('s1', 'a2');
    await mailfront.holder.setMaintenance('s1', 'moving disks');
    await until('40 closes', () => closes.length === 40);
    await sleep(500);
    assert.deepEqual(closes.sort(), entries.map((e) => `${e.id} drained`).sort(), 'each closed once');
  } finally {
    await stop();
  }
});

test(`with drain_spread_ms 0, a stop tells its ${MANY} sessions BYE over several turns of the event loop, each once`, async () => {
  const { mailfront, stop } = await start(0);
  try {
    const listener = mailfront.listeners[0]!;
    const told = new Map<number, number>();
    let tells = 0;
    let toldWhenATurnCame: number | undefined;
    // Stand-ins for spliced sessions: shutdown() is the BYE; the session then ends and leaves the listener's set.
    for (let i = 0; i < MANY; i++) {
      const session = {
        shutdownIfNotSpliced: () => undefined,
        shutdown: () => {
          told.set(i, (told.get(i) ?? 0) + 1);
          if (++tells === 1) setImmediate(() => (toldWhenATurnCame = tells));
          listener.sessions.delete(session as unknown as Session);
        },
      };
      listener.sessions.add(session as unknown as Session);
    }
    await stop();
    assert.equal(told.size, MANY);
    assert.ok([...told.values()].every((n) => n === 1), 'each told once');
    assert.ok(toldWhenATurnCame !== undefined && toldWhenATurnCame < MANY, `the turn asked for at the first BYE came after ${String(toldWhenATurnCame)} of ${MANY}`);
  } finally {
    await stop();
  }
});
