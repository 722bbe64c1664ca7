/**
 * The cache of logins asks the directory once for logins with the same user and password that
 * arrive while it answers (a client opening several connections at once): with a password policy,
 * each bind used up a grace login, and the client was told OK on some connections and EXPIRED on
 * another. Without servers: a stand-in directory that answers when told.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CachingDirectory } from '../../src/auth/cache.js';
import type { Directory, DirectoryUser } from '../../src/auth/directory.js';
import { WrongPasswordError } from '../../src/auth/directory.js';
import { Canceller } from '../../src/cancel.js';

/** A directory whose answers wait until `answer()`; `asked` lists the passwords it was asked. */
function slowDirectory(): { inner: Directory; asked: string[]; answer: () => void } {
  const asked: string[] = [];
  let release: () => void = () => undefined;
  let gate = new Promise<void>((resolve) => (release = resolve));
  const inner: Directory = {
    authenticate: async (user, password) => {
      asked.push(password);
      await gate;
      if (password !== 'right') throw new WrongPasswordError(user, [user]);
      return { user, dn: `uid=${user},ou=people`, store: 'store1', readAt: performance.now() } satisfies DirectoryUser;
    },
    lookup: async () => null,
    reachable: async () => true,
    forget: () => 0,
    cacheEntries: () => ({}),
    close: async () => undefined,
  };
  return {
    inner,
    asked,
    answer: () => {
      release();
      gate = new Promise<void>((resolve) => (release = resolve));
    },
  };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('five logins at once with the same password make one bind; another password makes its own', async () => {
  const { inner, asked, answer } = slowDirectory();
  const cache = new CachingDirectory(inner, 60_000, 100);
  const signal = new Canceller();
  const logins = Array.from({ length: 5 }, () => cache.authenticate('ann', 'right', signal, 'imap'));
  const wrong = [cache.authenticate('ann', 'wrong', signal, 'imap'), cache.authenticate('ann', 'wrong', signal, 'imap')];
  await tick();
  assert.deepEqual(asked, ['right', 'wrong']);
  answer();
  for (const found of await Promise.all(logins)) assert.equal(found.dn, 'uid=ann,ou=people');
  for (const refused of await Promise.allSettled(wrong)) assert.equal(refused.status === 'rejected' && (refused.reason as WrongPasswordError).code, 'WRONG_PASSWORD');
  // Answered: the right password is cached, the wrong one asked again.
  await cache.authenticate('ann', 'right', signal, 'imap');
  const again = cache.authenticate('ann', 'wrong', signal, 'imap');
  await tick();
  answer();
  await assert.rejects(again);
  assert.deepEqual(asked, ['right', 'wrong', 'wrong']);
});

test('the first login\'s end does not end the others\' wait; each ends with its own', async () => {
  const { inner, asked, answer } = slowDirectory();
  const cache = new CachingDirectory(inner, 60_000, 100);
  const first = new Canceller();
  const second = new Canceller();
  const gone = cache.authenticate('ann', 'right', first, 'imap');
  const waiting = cache.authenticate('ann', 'right', second, 'imap');
  await tick();
  first.abort();
  await assert.rejects(gone, (e: { kind?: string }) => e.kind === 'aborted');
  answer();
  assert.equal((await waiting).dn, 'uid=ann,ou=people');
  assert.equal(asked.length, 1);
});

test('a login after forget() (a kick) asks the directory itself, not the answer under way', async () => {
  const { inner, asked, answer } = slowDirectory();
  const cache = new CachingDirectory(inner, 60_000, 100);
  const signal = new Canceller();
  const before = cache.authenticate('ann', 'right', signal, 'imap');
  await tick();
  cache.forget('ann');
  const after = cache.authenticate('ann', 'right', signal, 'imap');
  await tick();
  assert.equal(asked.length, 2);
  answer();
  await Promise.all([before, after]);
});
