// mailfront_ready is read from the readiness source at each scrape (no timer), absent until a
// source is given (not a 0 that would read as "not ready"), and 0 when the source throws.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Metrics } from '../../src/metrics.js';

const readyLines = async (metrics: Metrics): Promise<string[]> => (await metrics.exposition()).body.split('\n').filter((l) => /^mailfront_ready\b/.test(l));

test('mailfront_ready follows its source at each scrape', async () => {
  const metrics = new Metrics({ processMetrics: false });
  assert.deepEqual(await readyLines(metrics), [], 'no series without a source');
  assert.ok(metrics.metricNames().includes('mailfront_ready'), 'named among the metrics all the same');
  let ready: boolean | Error = true;
  let asked = 0;
  metrics.readiness(async () => {
    asked++;
    if (ready instanceof Error) throw ready;
    return ready;
  });
  assert.deepEqual(await readyLines(metrics), ['mailfront_ready 1']);
  ready = false;
  assert.deepEqual(await readyLines(metrics), ['mailfront_ready 0']);
  ready = new Error('the readiness check failed');
  assert.deepEqual(await readyLines(metrics), ['mailfront_ready 0']);
  assert.equal(asked, 3, 'asked once per scrape');
  assert.equal(metrics.metricNames().filter((n) => n === 'mailfront_ready').length, 1);
});
