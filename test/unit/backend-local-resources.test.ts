// A connection mailfront cannot open for want of its own resources (EMFILE: its open-files
// limit; ENFILE: the system's; EADDRNOTAVAIL: no local port) is no failure of the slot: kind
// local-resources, which the session does not hold for a failover, and which leaves a probed
// slot's health as it was (at the limit, every probe fails alike: every slot would show down).
// test/integration/descriptor-exhaustion.test.ts shows the same with a real EMFILE.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connectionFailureKind } from '../../src/backend/connect.js';
import { SlotHealthMonitor } from '../../src/backend/health.js';
import { MailfrontError } from '../../src/errors.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { createLogger } from '../../src/log.js';

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:143`), { code });
}

test('EMFILE, ENFILE and EADDRNOTAVAIL are local-resources, during a TLS handshake too; a refused or reset connection is still an outage', () => {
  for (const code of ['EMFILE', 'ENFILE', 'EADDRNOTAVAIL']) {
    assert.equal(connectionFailureKind(errno(code)), 'local-resources', code);
    assert.equal(connectionFailureKind(errno(code), true), 'local-resources', `${code} during a handshake`);
  }
  assert.equal(connectionFailureKind(errno('ECONNREFUSED')), 'connect');
  assert.equal(connectionFailureKind(errno('ECONNRESET'), true), 'connect');
});

test('a probe that mailfront could not open leaves the slot up, says nothing, and reports no result; a real failure then marks it down', async () => {
  const map = { stores: new Map([['s', { slots: new Map([['a', { name: 'a', store: 's' }]]) }]]) } as unknown as StoreMap;
  let failure: Error | undefined;
  const reported: boolean[] = [];
  // A logger of its own: no secret is in play, and the suite's secret scan takes the logs only of
  // test files that register the secrets they use (capturedLogger's).
  const lines: string[] = [];
  const log = createLogger('info', { write: (line: string) => void lines.push(line) });
  const monitor = new SlotHealthMonitor(
    () => map,
    () => (failure === undefined ? Promise.resolve() : Promise.reject(failure)),
    60_000,
    1_000,
    log,
    (_slot, health) => reported.push(health.up),
  );
  await monitor.probeAll();
  assert.equal(monitor.get('a')?.up, true);
  failure = new MailfrontError('LOCAL_RESOURCES_EXHAUSTED', 'local-resources', 'slot "a" (127.0.0.1:143): no connection could be opened: EMFILE');
  await monitor.probeAll();
  await monitor.probeAll();
  assert.equal(monitor.get('a')?.up, true, 'marked down for mailfront\'s own limit');
  assert.equal(monitor.get('a')?.failures, 0);
  assert.deepEqual(reported, [true], 'a result was reported for a probe that never reached the slot');
  failure = new MailfrontError('BACKEND_CONNECT_FAILED', 'connect', 'slot "a" (127.0.0.1:143): connect ECONNREFUSED 127.0.0.1:143');
  await monitor.probeAll();
  assert.equal(monitor.get('a')?.up, false);
  assert.deepEqual(reported, [true, false]);
  await new Promise((r) => setTimeout(r, 250));
  assert.deepEqual(
    lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['event'] === 'slot.health').map((l) => l['up']),
    [true, false],
  );
  monitor.stop();
});
