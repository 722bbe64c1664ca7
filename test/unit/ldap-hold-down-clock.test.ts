/**
 * A directory server held down (directory.urls: "the failed server is then tried last, for
 * 30 s") is held down 30 s of the monotonic clock, whatever the wall clock does meanwhile: a step
 * back of an hour held it down 61 min, and a step forward ended the hold-down at once. Both clocks
 * are faked here (Date.now stepped as NTP would, performance.now moved on as time passing), and
 * the order the directory tries its servers in is read through its private urlsInTurn(); no
 * server runs, and nothing connects.
 */
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { LdapDirectory, SERVER_HOLD_DOWN_MS } from '../../src/auth/ldap.js';
import type { DirectoryConfig } from '../../src/config/schema.js';
import { createLogger } from '../../src/log.js';

const A = 'ldap://127.0.0.1:9';
const B = 'ldap://127.0.0.1:7';
const HOUR_MS = 3_600_000;

const realDateNow = Date.now;
const realPerformanceNow = performance.now.bind(performance);
let wallStepMs = 0;
let passedMs = 0;
// Time passing moves both clocks; a step moves the wall clock only.
Date.now = () => realDateNow.call(Date) + passedMs + wallStepMs;
performance.now = () => realPerformanceNow() + passedMs;
afterEach(() => {
  wallStepMs = 0;
  passedMs = 0;
});
test.after(() => {
  Date.now = realDateNow;
  delete (performance as { now?: unknown }).now;
});

const config: DirectoryConfig = {
  urls: [A, B],
  bindDn: 'cn=reader',
  bindPassword: 'unused',
  baseDn: 'dc=example',
  userFilter: '(uid={user})',
  storeAttribute: 'mailStore',
  starttls: false,
  connectTimeoutMs: 1_000,
  operationTimeoutMs: 1_000,
  entryCacheTtlMs: 0,
  authCacheTtlMs: 0,
  cacheMaxEntries: 10,
  searchConnections: 1,
};

/** A directory whose first server, A, has just failed: held down. */
function withAHeldDown(lines: string[]): LdapDirectory {
  const directory = new LdapDirectory(config, createLogger('info', { write: (line: string) => void lines.push(line) }));
  (directory['holdDown'] as (url: string, reason: string) => void).call(directory, A, 'no answer within the deadline');
  return directory;
}

function order(directory: LdapDirectory): string[] {
  return (directory['urlsInTurn'] as () => string[]).call(directory);
}

test('the wall clock set back an hour: the failed server is tried first again once SERVER_HOLD_DOWN_MS have passed, not an hour later', async () => {
  const lines: string[] = [];
  const directory = withAHeldDown(lines);
  try {
    assert.deepEqual(order(directory), [B, A], 'held down');
    assert.equal(lines.filter((l) => l.includes('"directory.server_held_down"')).length, 1);
    wallStepMs = -HOUR_MS;
    passedMs = SERVER_HOLD_DOWN_MS - 1_000;
    assert.deepEqual(order(directory), [B, A], `still held down ${passedMs} ms later`);
    passedMs = SERVER_HOLD_DOWN_MS + 1_000;
    assert.deepEqual(order(directory), [A, B], `tried first again ${passedMs} ms later, the wall clock an hour back`);
  } finally {
    await directory.close();
  }
});

test('the wall clock set forward an hour: the failed server stays held down for SERVER_HOLD_DOWN_MS', async () => {
  const directory = withAHeldDown([]);
  try {
    wallStepMs = HOUR_MS;
    passedMs = 1_000;
    assert.deepEqual(order(directory), [B, A], 'the step ended the hold-down at once');
    passedMs = SERVER_HOLD_DOWN_MS + 1_000;
    assert.deepEqual(order(directory), [A, B]);
  } finally {
    await directory.close();
  }
});

test('a lone server is never held down: nothing to try first instead, and no line saying the others are', async () => {
  const lines: string[] = [];
  const directory = new LdapDirectory({ ...config, urls: [A] }, createLogger('info', { write: (line: string) => void lines.push(line) }));
  try {
    (directory['holdDown'] as (url: string, reason: string) => void).call(directory, A, 'no answer within the deadline');
    assert.deepEqual(order(directory), [A]);
    assert.equal((directory['isHeldDown'] as (url: string) => boolean).call(directory, A), false);
    assert.deepEqual(lines.filter((l) => l.includes('"directory.server_held_down"')), []);
  } finally {
    await directory.close();
  }
});
