/**
 * A reload that turns health probes off (health.interval_ms: 0) leaves no `mailfront_slot_up`
 * and no slot health: kept, a slot's last result (down) stood for good, and
 * MailfrontStoreMasterDown paged on after the slot came back.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { parse, stringify } from 'yaml';
import { after, before, test } from 'node:test';
import { refusingPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { startFront } from './front.js';
import type { Front } from './front.js';

let slapd: Slapd;
let front: Front;

const slotUp = async (): Promise<string[]> => {
  const { host, port } = front.mailfront.httpAddress()!;
  const body = await (await fetch(`http://${host}:${port}/metrics`)).text();
  return body.split('\n').filter((l) => l.startsWith('mailfront_slot_up{'));
};

before(async () => {
  slapd = await startSlapd({ users: [] });
  // Nothing listens there: the slot is down.
  const port = await refusingPort();
  front = await startFront({ slapd, stores: { alpha: { currentMaster: 's1', slots: { s1: { imapPort: port } } } }, health: { interval_ms: 1000, timeout_ms: 500 } });
});
after(async () => {
  await front?.stop();
  await slapd?.stop();
});

test('a reload to health.interval_ms 0 drops every mailfront_slot_up series and slot result', async () => {
  let series: string[] = [];
  for (let i = 0; i < 100 && series.length === 0; i++) {
    series = await slotUp();
    if (series.length === 0) await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual(series, ['mailfront_slot_up{store="alpha",slot="s1"} 0'], 'the slot was probed, down');
  const doc = parse(await readFile(front.configFile, 'utf8')) as Record<string, unknown>;
  doc['health'] = { interval_ms: 0 };
  await writeFile(front.configFile, stringify(doc));
  const reloaded = await front.mailfront.reload();
  assert.equal(reloaded.ok, true, reloaded.error);
  assert.deepEqual(await slotUp(), [], 'no slot_up series once probes are off');
  assert.equal(front.mailfront.health.get('s1'), undefined, 'no slot result (mailfront stores, /api/stores)');
  // And none comes back later (a probe in flight at the reload reports nothing).
  await new Promise((r) => setTimeout(r, 1_500));
  assert.deepEqual(await slotUp(), []);
});
