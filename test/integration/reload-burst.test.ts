/**
 * A burst of reload requests (SIGHUPs, `mailfront reload`, the admin API) against a real slapd:
 * requests made while one waits to start join it, so a burst costs the reload in progress and one
 * more, not one reload per request run back to back.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { startFront } from './front.js';
import type { Front } from './front.js';

let slapd: Slapd;
let front: Front;

before(async () => {
  slapd = await startSlapd({ users: [] });
  front = await startFront({ slapd, stores: { alpha: { currentMaster: 's1', slots: { s1: { imapPort: 1 } } } } });
});
after(async () => {
  await front?.stop();
  await slapd?.stop();
});

const reloadsLogged = (since: number): number => front.logs.slice(since).filter((l) => l['event'] === 'config.reloaded').length;

test('twenty reload requests in a row run as one reload, each request answered with its result', async () => {
  const since = front.logs.length;
  const requests = Array.from({ length: 20 }, () => front.mailfront.reload());
  const results = await Promise.all(requests);
  for (const result of results) assert.equal(result.ok, true, result.error);
  assert.equal(reloadsLogged(since), 1, 'the requests made before the first started joined it');
});

test('a request made while a reload runs gets a reload of its own, after it', async () => {
  const since = front.logs.length;
  const first = front.mailfront.reload();
  // The first reload starts from the event loop; once it has, a new request must not join it
  // (it may have read the files before the edit the request is about).
  // Two turns: the reload's own setImmediate is queued from a microtask, after this test's first.
  for (let turn = 0; turn < 2; turn++) await new Promise<void>((resolve) => setImmediate(resolve));
  const second = front.mailfront.reload();
  const third = front.mailfront.reload();
  assert.notEqual(second, first);
  assert.equal(third, second, 'the third joins the second, which has not started');
  await Promise.all([first, second]);
  assert.equal(reloadsLogged(since), 2);
});
