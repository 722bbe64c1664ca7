// Every store of the map in force has a mailfront_failovers_total series from the start, at 0:
// a series born at its first failover (1) lost that change to increase(), and three changes in
// an hour read as about two (MailfrontStoreFlapping stayed quiet).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Metrics } from '../../src/metrics.js';

const store = (currentMaster: string): { currentMaster: string; preferredMaster: string; slots: Map<string, unknown> } => ({ currentMaster, preferredMaster: 'a', slots: new Map([['a', {}], ['b', {}]]) });

const failovers = async (metrics: Metrics): Promise<Record<string, number>> => {
  const family = await metrics.registry.getSingleMetric('mailfront_failovers_total')!.get();
  return Object.fromEntries(family.values.map((v) => [String(v.labels['store']), v.value]));
};

test('each store of the map in force counts 0 failovers until its first; a store that leaves keeps no series', async () => {
  const metrics = new Metrics({ processMetrics: false });
  metrics.storeMapInForce(1, new Map([['s1', store('a')], ['s2', store('a')]]));
  assert.deepEqual(await failovers(metrics), { s1: 0, s2: 0 });
  metrics.failover('s1');
  metrics.storeMapInForce(2, new Map([['s1', store('b')], ['s2', store('a')]]));
  assert.deepEqual(await failovers(metrics), { s1: 1, s2: 0 }, 'a new map keeps the counts');
  metrics.storeMapInForce(3, new Map([['s1', store('b')], ['s3', store('a')]]));
  assert.deepEqual(await failovers(metrics), { s1: 1, s3: 0 });
});
