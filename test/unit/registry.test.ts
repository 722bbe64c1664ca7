// The session registry's kick bookkeeping: logins under way when their user (or any name of
// the user's directory entry) is kicked, counted without a clock.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SessionRegistry, SplicedSessionEntry } from '../../src/proxy/registry.js';
import { PAYLOAD_BYTES, payload, promotedBy } from './young-gc.js';
import type { BackendAttempt, SessionEntry } from '../../src/proxy/registry.js';

function entry(id: string, user: string, dn: string, kicksAtLogin = 0): SessionEntry {
  return { id, protocol: 'imap', user, dn, kicksAtLogin, store: 's', slot: 'a1', server: { name: 'a1', store: 's', host: '127.0.0.1', imapPort: 10143 }, clientAddress: '127.0.0.1', startedAt: 0, traffic: { bytesFromClient: 0, bytesToClient: 0 }, reportedFromClient: 0, reportedToClient: 0, close: () => undefined };
}

test('a login is kicked when its user or its entry was kicked after it started, and not otherwise', () => {
  const registry = new SessionRegistry();
  const before = registry.kicksSoFar;
  registry.userKicked('amy', ['uid=amy,dc=x']);
  const after = registry.kicksSoFar;
  assert.equal(registry.kickedSince('amy', 'uid=amy,dc=x', before), true);
  assert.equal(registry.kickedSince('amy@example.com', 'uid=amy,dc=x', before), true, 'another name of the same entry');
  assert.equal(registry.kickedSince('amy', 'uid=amy-other,dc=x', before), true, 'the name alone');
  assert.equal(registry.kickedSince('bob', 'uid=bob,dc=x', before), false, 'another user');
  assert.equal(registry.kickedSince('amy', 'uid=amy,dc=x', after), false, 'a login that started after the kick');
  registry.userKicked('bob');
  assert.equal(registry.kickedSince('amy', 'uid=amy,dc=x', after), false, "a later kick of someone else is not amy's");
  assert.equal(registry.kickedSince('bob', 'uid=bob,dc=x', after), true);
});

test('sessions of a user and of every name of the kicked entries, each once', () => {
  const registry = new SessionRegistry();
  const a = entry('1', 'amy', 'uid=amy,dc=x');
  const b = entry('2', 'amy@example.com', 'uid=amy,dc=x');
  const c = entry('3', 'bob', 'uid=bob,dc=x');
  for (const e of [a, b, c]) registry.add(e);
  assert.deepEqual(registry.ofUserAndEntries('amy', []).map((e) => e.id), ['1']);
  assert.deepEqual(registry.ofUserAndEntries('amy', ['uid=amy,dc=x']).map((e) => e.id).sort(), ['1', '2']);
  registry.remove(b);
  assert.deepEqual(registry.ofUserAndEntries('amy', ['uid=amy,dc=x']).map((e) => e.id), ['1'], 'the entry index follows removals');
});

test('an entry found after a kick joins that kick, and a later kick of it is not undone', () => {
  const registry = new SessionRegistry();
  const start = registry.kicksSoFar;
  const first = registry.userKicked('amy');
  const between = registry.kicksSoFar;
  registry.entriesKicked(['uid=amy,dc=x'], first);
  assert.equal(registry.kickedSince('amy@example.com', 'uid=amy,dc=x', start), true, 'a login under another name begun before the kick');
  assert.equal(registry.kickedSince('amy@example.com', 'uid=amy,dc=x', between), false, 'one begun after it');
  const second = registry.userKicked('amy', ['uid=amy,dc=x']);
  registry.entriesKicked(['uid=amy,dc=x'], first);
  assert.equal(registry.kickedSince('amy@example.com', 'uid=amy,dc=x', second - 1), true, 'the later kick stands');
});

test('a failover tells the backend logins under way to the old master of that store, for the protocols it moved', () => {
  const registry = new SessionRegistry();
  const told: string[] = [];
  const attempt = (name: string, store: string, slot: string, protocol: 'imap' | 'pop3'): BackendAttempt => ({ store, slot, protocol, user: name, dn: `uid=${name}`, kicksAtLogin: 0, stop: (why) => told.push(`${name} ${why}`), attemptPlace: -1 });
  const imap = attempt('imap-a1', 'alpha', 'a1', 'imap');
  const pop3 = attempt('pop3-a1', 'alpha', 'a1', 'pop3');
  const other = attempt('imap-a2', 'alpha', 'a2', 'imap');
  const beta = attempt('beta-a1', 'beta', 'a1', 'imap');
  const ended = attempt('ended', 'alpha', 'a1', 'imap');
  for (const a of [imap, pop3, other, beta, ended]) registry.attemptStarted(a);
  registry.attemptEnded(ended);
  // A port re-pointed for POP3 only: only the POP3 login follows.
  assert.equal(registry.masterMoved('alpha', 'a1', ['pop3']), 1);
  assert.deepEqual(told, ['pop3-a1 moved']);
  assert.equal(registry.masterMoved('alpha', 'a1'), 1);
  assert.deepEqual(told, ['pop3-a1 moved', 'imap-a1 moved']);
  // Each is told once; the others (another slot, another store) never.
  assert.equal(registry.masterMoved('alpha', 'a1'), 0);
  assert.deepEqual(told, ['pop3-a1 moved', 'imap-a1 moved']);
});

// The failover.drain line's `sessions` is this list's length: a port re-pointed for one protocol
// counts that protocol's sessions only (those of the others stay, and are not "to close").
test('a failover drains the sessions spliced to the old master of that store, for the protocols it moved', () => {
  const registry = new SessionRegistry();
  const spliced = (id: string, store: string, slot: string, protocol: 'imap' | 'pop3'): SessionEntry => ({ ...entry(id, id, `uid=${id}`), protocol, store, slot, server: { name: slot, store, host: '127.0.0.1', imapPort: 10143, pop3Port: 10110 } });
  for (const e of [spliced('imap-a1', 'alpha', 'a1', 'imap'), spliced('pop3-a1', 'alpha', 'a1', 'pop3'), spliced('imap-a2', 'alpha', 'a2', 'imap'), spliced('beta-a1', 'beta', 'a1', 'imap')]) registry.add(e);
  assert.deepEqual(registry.splicedToMoved('alpha', 'a1', ['pop3']).map((e) => e.id), ['pop3-a1']);
  assert.deepEqual(registry.splicedToMoved('alpha', 'a1', ['imap']).map((e) => e.id), ['imap-a1']);
  assert.deepEqual(registry.splicedToMoved('alpha', 'a1').map((e) => e.id).sort(), ['imap-a1', 'pop3-a1']);
});

test("a kick stops the backend logins under way of the user's names and entries that began before it, once each", () => {
  const registry = new SessionRegistry();
  const told: string[] = [];
  const attempt = (name: string, user: string, dn: string): BackendAttempt => ({
    store: 'alpha',
    slot: 'a1',
    protocol: 'imap',
    user,
    dn,
    kicksAtLogin: registry.kicksSoFar,
    stop: (why) => told.push(`${name} ${why}`),
    attemptPlace: -1,
  });
  const amy = attempt('amy', 'amy', 'uid=amy,dc=x');
  const alias = attempt('alias', 'amy@example.com', 'uid=amy,dc=x');
  const bob = attempt('bob', 'bob', 'uid=bob,dc=x');
  const ended = attempt('ended', 'amy', 'uid=amy,dc=x');
  for (const a of [amy, alias, bob, ended]) registry.attemptStarted(a);
  registry.attemptEnded(ended);
  const kick = registry.userKicked('amy');
  assert.deepEqual(told, ['amy kicked'], 'the name kicked; the entry is not known yet');
  registry.entriesKicked(['uid=amy,dc=x'], kick);
  assert.deepEqual(told, ['amy kicked', 'alias kicked'], 'the entry, found by the directory after the kick');
  const later = attempt('later', 'amy', 'uid=amy,dc=x');
  registry.attemptStarted(later);
  registry.entriesKicked(['uid=amy,dc=x'], kick);
  registry.userKicked('carol');
  assert.deepEqual(told, ['amy kicked', 'alias kicked'], 'a login begun after the kick, and another user, go on');
  // A failover does not tell a login the kick stopped again.
  assert.equal(registry.masterMoved('alpha', 'a1'), 2);
  assert.deepEqual(told, ['amy kicked', 'alias kicked', 'bob moved', 'later moved']);
});

test("an ended session's entry, let go, keeps nothing of the session through young collections", () => {
  const registry = new SessionRegistry();
  const server = { name: 'a1', store: 's', host: '127.0.0.1', imapPort: 10143 };
  const spliced = (id: string, user: string, session: { readonly payload: number[] }): SplicedSessionEntry =>
    new SplicedSessionEntry(
      { id, protocol: 'imap', user, dn: `uid=${user},dc=x`, kicksAtLogin: 0, store: 's', slot: 'a1', server, clientAddress: '127.0.0.1', startedAt: 0 },
      // The splice and the close stand for the session's graph: its sockets, buffers and splice.
      { bytesFromClient: 0, bytesToClient: 0, session } as SessionEntry['traffic'],
      () => void session.payload.length,
    );
  const churned = 300;
  const promoted = promotedBy(
    // Sessions that stay: the registry's maps and sets are old after the full collections.
    () => ['x', 'y', 'z'].forEach((u, i) => registry.add(spliced(`k${i}`, u, { payload: [] }))),
    () => {
      for (let i = 0; i < churned; i++) {
        const session = { payload: payload(i) };
        const entry = spliced(`s${i}`, `u${i % 7}`, session);
        registry.add(entry);
        const around = [0, 1, 2].map((j) => spliced(`s${i}-${j}`, `u${j}`, { payload: [] }));
        for (const e of around) registry.add(e);
        for (const e of around) registry.remove(e);
        registry.remove(entry);
        entry.letGo();
      }
    },
  );
  assert.equal(registry.size, 3);
  // The entries themselves may be moved (about 0.3 KiB each, four per round here): the maps keep
  // them; their sessions would be all the payloads (9.6 MB), which stay young and are collected.
  assert.ok(promoted < (churned * PAYLOAD_BYTES) / 4, `${promoted} bytes moved to the old generation for ${churned} sessions of ${PAYLOAD_BYTES} bytes`);
});

test('an ended backend login keeps nothing of its session through young collections', () => {
  const registry = new SessionRegistry();
  const attempt = (session: { readonly payload: number[] }): BackendAttempt => ({ store: 's', slot: 'a1', protocol: 'imap', user: 'amy', dn: 'uid=amy,dc=x', kicksAtLogin: 0, stop: () => void session.payload.length, attemptPlace: -1 });
  const churned = 300;
  const promoted = promotedBy(
    () => [0, 1, 2].forEach(() => registry.attemptStarted(attempt({ payload: [] }))),
    () => {
      for (let i = 0; i < churned; i++) {
        const a = attempt({ payload: payload(i) });
        registry.attemptStarted(a);
        const around = [0, 1, 2].map(() => attempt({ payload: [] }));
        for (const o of around) registry.attemptStarted(o);
        for (const o of around) registry.attemptEnded(o);
        registry.attemptEnded(a);
      }
    },
  );
  assert.ok(promoted < (churned * PAYLOAD_BYTES) / 10, `${promoted} bytes moved to the old generation for ${churned} logins of ${PAYLOAD_BYTES} bytes`);
});
