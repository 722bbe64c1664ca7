import assert from 'node:assert/strict';
import { test } from 'node:test';
import { measureIdle } from '../../bench/idle.js';
import type { IdleSessions } from '../../bench/load.js';
import type { MailClient } from '../../bench/client.js';

/**
 * A process whose RSS is live memory plus garbage: the warm-up leaves 4 MB of garbage, each
 * measured session keeps 6,000 bytes alive and leaves 3,000 of garbage, and a GC drops the garbage.
 */
function fakeProcess() {
  let live = 50e6;
  let garbage = 0;
  const opened = (count: number): IdleSessions => ({ clients: new Array<MailClient>(count), errors: 0, seconds: 0.1, closeAll: () => undefined });
  return {
    rss: () => live + garbage,
    gc: async () => {
      garbage = 0;
    },
    open: async (count: number): Promise<IdleSessions> => {
      if (count === 200) garbage += 4e6;
      else {
        live += count * 6000;
        garbage += count * 3000;
      }
      return opened(count);
    },
  };
}

test('idle memory "as found" starts from the same sample as "after a GC": no GC between its two samples', async () => {
  const p = fakeProcess();
  const f = await measureIdle({ count: 1000, label: 'fake', rss: p.rss, open: p.open, maxSeconds: 10, gc: p.gc, say: () => undefined, pause: async () => undefined });
  assert.equal(f.sessions, 1000);
  assert.equal(f.bytesPerSessionAfterGc, 6000, 'what the sessions keep alive');
  // As found: the sessions plus their logins' garbage. Taken from the RSS before the GC, the
  // warm-up's 4 MB collected between the two samples would have made it 5,000.
  assert.equal(f.bytesPerSession, 9000);
  assert.equal(f.rssBeforeBytes, 50e6);
  assert.equal(f.rssUncollectedBytes, 54e6);
});

test('idle memory without a GC (nginx): one pair, as found', async () => {
  const p = fakeProcess();
  const f = await measureIdle({ count: 1000, label: 'fake', rss: p.rss, open: p.open, maxSeconds: 10, say: () => undefined, pause: async () => undefined });
  assert.equal(f.forcedGc, false);
  assert.equal(f.bytesPerSession, 9000);
  assert.equal(f.bytesPerSessionAfterGc, 9000);
});
