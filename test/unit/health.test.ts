// The slot health monitor's loop: new timings mid-round leave one loop, not two. And which of
// a slot's protocols its probe speaks.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { probeProtocol } from '../../src/backend/connect.js';
import { SlotHealthMonitor } from '../../src/backend/health.js';
import type { BackendConfig } from '../../src/config/schema.js';
import type { Slot, StoreMap } from '../../src/routing/storemap.js';
import { createLogger } from '../../src/log.js';
import { freePort } from '../integration/servers/index.js';
import { serve, stop } from './serve-process.js';

test('new timings while a round of probes runs leave exactly one probe loop', async () => {
  let probes = 0;
  const map = { stores: new Map([['s', { slots: new Map([['a', { name: 'a', store: 's' }]]) }]]) } as unknown as StoreMap;
  const monitor = new SlotHealthMonitor(
    () => map,
    async () => {
      probes++;
      await new Promise((resolve) => setTimeout(resolve, 50));
    },
    200,
    1_000,
    createLogger('silent'),
  );
  monitor.start();
  // Mid-round: the first probe is still running.
  setTimeout(() => monitor.setTiming(100, 1_000), 10);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  monitor.stop();
  // One loop: the first probe, then a round every 100 ms from 10 ms on (10 in the second); two loops made about 15.
  assert.ok(probes >= 8 && probes <= 12, `${probes} probes in 1 s`);
  const after = probes;
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(probes, after, 'stop() ended every loop');
});

test('a slot dropped from the map while it is probed reports nothing: no result, no metric series brought back', async () => {
  const slot = { name: 'b', store: 's' };
  let map = { stores: new Map([['s', { slots: new Map([['b', slot]]) }]]) } as unknown as StoreMap;
  const reported: string[] = [];
  const monitor = new SlotHealthMonitor(
    () => map,
    async () => {
      // The map drops the slot while the probe runs (a store-map reload); then the probe fails.
      map = { stores: new Map([['s', { slots: new Map() }]]) } as unknown as StoreMap;
      throw new Error('no answer');
    },
    60_000,
    1_000,
    createLogger('silent'),
    (s) => reported.push(s.name),
  );
  await monitor.probeAll();
  assert.deepEqual(reported, []);
  assert.equal(monitor.get('b'), undefined);
});

test('a probe past its deadline is down, saying so; one in flight at stop() reports nothing', async () => {
  const map = { stores: new Map([['s', { slots: new Map([['c', { name: 'c', store: 's' }]]) }]]) } as unknown as StoreMap;
  const probe = (_slot: unknown, signal: { addEventListener(type: 'abort', listener: () => void): void }): Promise<void> =>
    new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('the session ended during greeting'))));
  const monitor = new SlotHealthMonitor(() => map, probe, 60_000, 50, createLogger('silent'));
  await monitor.probeAll();
  assert.equal(monitor.get('c')?.up, false);
  assert.match(monitor.get('c')?.error ?? '', /^no answer within 50 ms/);
  const other = new SlotHealthMonitor(() => map, probe, 60_000, 60_000, createLogger('silent'));
  const round = other.probeAll();
  other.stop();
  await round;
  assert.equal(other.get('c'), undefined);
});

test('a round probes each slot as the map in force has it at its turn: pointed elsewhere, there; its store gone into maintenance, not at all', async () => {
  const slot = (name: string, store: string, imapPort: number): Slot => ({ name, store, host: '127.0.0.1', imapPort });
  const mapOf = (bPort: number, tMaintenance: string | null): StoreMap =>
    ({
      stores: new Map([
        ['s', { maintenance: null, slots: new Map([['a', slot('a', 's', 1)], ['b', slot('b', 's', bPort)]]) }],
        ['t', { maintenance: tMaintenance, slots: new Map([['c', slot('c', 't', 4)]]) }],
      ]),
    }) as unknown as StoreMap;
  let map = mapOf(2, null);
  const probed: string[] = [];
  const monitor = new SlotHealthMonitor(
    () => map,
    async (s) => {
      probed.push(`${s.name}:${String(s.imapPort)}`);
      // A reload while the round runs: b pointed at another port, store t put in maintenance.
      if (s.name === 'a') map = mapOf(3, 'Back soon, please wait.');
    },
    60_000,
    1_000,
    createLogger('silent'),
  );
  // Spread over 300 ms: a at once, b 100 ms in, c 200 ms in.
  await monitor.probeAll(300);
  assert.deepEqual(probed, ['a:1', 'b:3']);
  assert.equal(monitor.get('c'), undefined);
});

test("a slot's up or down is logged when it changes, not at each probe; its failures in a row are counted", async () => {
  const map = { stores: new Map([['s', { maintenance: null, slots: new Map([['a', { name: 'a', store: 's', host: '127.0.0.1', imapPort: 1 }]]) }]]) } as unknown as StoreMap;
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  let down = false;
  const monitor = new SlotHealthMonitor(
    () => map,
    async () => {
      if (down) throw new Error('connection refused');
    },
    60_000,
    1_000,
    log,
  );
  for (let i = 0; i < 3; i++) await monitor.probeAll();
  down = true;
  for (let i = 0; i < 3; i++) await monitor.probeAll();
  assert.deepEqual(
    lines.filter((l) => l['event'] === 'slot.health').map((l) => [l['slot'], l['up'], l['msg']]),
    [
      ['a', true, 'slot is up'],
      ['a', false, 'slot is down'],
    ],
  );
  assert.equal(monitor.get('a')?.failures, 3);
  assert.equal(monitor.get('a')?.error, 'connection refused');
});

test('probing leaves nothing behind: the heap after 100,000 probes is what it was', async () => {
  // On Node 20, AbortSignal.any() over a signal of the monitor's kept about 70 bytes per probe
  // for the life of the process (40 slots at the default interval: about 50 MB a day).
  setFlagsFromString('--expose-gc');
  const collect = runInNewContext('gc') as () => void;
  const slots = new Map(Array.from({ length: 100 }, (_, i) => [`s${i}`, { name: `s${i}`, store: 's' }]));
  const map = { stores: new Map([['s', { slots }]]) } as unknown as StoreMap;
  const monitor = new SlotHealthMonitor(() => map, async () => undefined, 60_000, 60_000, createLogger('silent'));
  const heap = async (): Promise<number> => {
    await new Promise((resolve) => setImmediate(resolve));
    collect();
    collect();
    return process.memoryUsage().heapUsed;
  };
  for (let i = 0; i < 100; i++) await monitor.probeAll();
  const before = await heap();
  for (let i = 0; i < 1_000; i++) await monitor.probeAll();
  const grown = (await heap()) - before;
  monitor.stop();
  assert.ok(grown < 2 * 1024 * 1024, `the heap grew by ${(grown / 1024 / 1024).toFixed(1)} MB over 100,000 probes`);
});

test('a slot is probed over the first of IMAP, POP3 and ManageSieve it has a port for under the TLS mode in force', () => {
  const slot = (ports: Partial<Pick<Slot, 'imapPort' | 'imapsPort' | 'pop3Port' | 'pop3sPort' | 'sievePort'>>): Slot => ({ name: 'a', store: 's', host: '127.0.0.1', ...ports }) as unknown as Slot;
  const tls = (mode: BackendConfig['tls']): BackendConfig => ({ tls: mode }) as BackendConfig;
  const all = slot({ imapPort: 143, imapsPort: 993, pop3Port: 110, pop3sPort: 995, sievePort: 4190 });
  for (const mode of ['none', 'starttls', 'implicit'] as const) assert.equal(probeProtocol(all, tls(mode)), 'imap', mode);
  // An IMAP port of the other mode only: IMAP would be probed where the slot has no port.
  assert.equal(probeProtocol(slot({ imapsPort: 993, pop3Port: 110 }), tls('none')), 'pop3');
  assert.equal(probeProtocol(slot({ imapsPort: 993, pop3Port: 110 }), tls('starttls')), 'pop3');
  assert.equal(probeProtocol(slot({ imapsPort: 993, sievePort: 4190 }), tls('none')), 'managesieve');
  assert.equal(probeProtocol(slot({ imapPort: 143, pop3sPort: 995 }), tls('implicit')), 'pop3');
  assert.equal(probeProtocol(slot({ imapPort: 143, pop3Port: 110, sievePort: 4190 }), tls('implicit')), 'managesieve');
  assert.equal(probeProtocol(slot({ imapsPort: 993, pop3Port: 110 }), tls('implicit')), 'imap');
  // No port for the mode in force: the probe goes where it went before and reports the key missing.
  assert.equal(probeProtocol(slot({ imapsPort: 993 }), tls('none')), 'imap');
  assert.equal(probeProtocol(slot({ imapPort: 143, pop3Port: 110 }), tls('implicit')), 'imap');
  assert.equal(probeProtocol(slot({ pop3sPort: 995 }), tls('starttls')), 'pop3');
  assert.equal(probeProtocol(slot({}), tls('none')), 'managesieve');
});

test('serve: a slot with imaps_port and pop3_port under tls none is probed over POP3 and is up; one with imaps_port alone stays down, naming imap_port', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mf-health-protocol-'));
  const pop3 = createServer((socket) => {
    socket.on('error', () => undefined);
    socket.end('+OK ready\r\n');
  });
  let s: ReturnType<typeof serve> | undefined;
  try {
    pop3.listen(0, '127.0.0.1');
    await once(pop3, 'listening');
    const pop3Port = (pop3.address() as AddressInfo).port;
    // tls none does not use imaps_port; nothing listens there.
    const imapsPort = await freePort();
    await writeFile(
      join(dir, 'stores.yaml'),
      'stores:\n' +
        `  st1:\n    current_master: pop\n    slots:\n      pop: { host: 127.0.0.1, imaps_port: ${imapsPort}, pop3_port: ${pop3Port} }\n` +
        `  st2:\n    current_master: none\n    slots:\n      none: { host: 127.0.0.1, imaps_port: ${imapsPort} }\n`,
    );
    const config = join(dir, 'mailfront.yaml');
    await writeFile(
      config,
      `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${await freePort()}, tls: none, plaintext_without_tls: true }\n` +
        'directory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\n' +
        'store_map: { file: stores.yaml, watch: false }\nbackend: { tls: none }\nhealth: { interval_ms: 1000, timeout_ms: 1000 }\n',
    );
    s = serve(config);
    await s.logged('slot.health', 2);
    const health = Object.fromEntries(s.lines().filter((l) => l['event'] === 'slot.health').map((l) => [l['slot'], [l['up'], l['err']]]));
    assert.deepEqual(health['pop'], [true, undefined]);
    assert.deepEqual(health['none'], [false, 'slot "none" of store "st2" has no imap_port']);
  } finally {
    if (s !== undefined) await stop(s);
    pop3.close();
    await rm(dir, { recursive: true, force: true });
  }
});
