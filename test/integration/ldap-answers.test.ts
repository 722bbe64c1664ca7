// The LDAP directory against answers a real slapd gives in less common setups: a size limit of
// the service account's own, a first server that fails in part, an entry with two stores, a
// search that meets a referral. Each decides a login; none may let a user in as someone else,
// nor turn a directory's trouble into a wrong-password answer.
import assert from 'node:assert/strict';
import { createServer, connect as netConnect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { WrongPasswordError } from '../../src/auth/directory.js';
import { LdapDirectory, probeDirectory } from '../../src/auth/ldap.js';
import type { DirectoryConfig } from '../../src/config/schema.js';
import { assertNoRegisteredSecret, registerPasswords, registerSecrets, capturedLogger } from './front.js';
import { directoryConfigOf, holdPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { LDAP_PEOPLE_DN, LDAP_SERVICE_DN } from './servers/slapd.js';
import { authFailureReason } from '../../src/metrics.js';
import { mailfrontFailure as failure } from '../mailfront-failure.js';

registerPasswords('alice-pw', 'wrong-alice-pw', 'locked-pw', 'first-dup-pw', 'second-dup-pw', 'solo-user-pw', 'two-stores-pw', 'wrong-two-stores-pw');
const { log, lines: logLines } = capturedLogger('debug');
const signal = new AbortController().signal;

let slapd: Slapd;
/** The next server of the tests that have two: the same users and service account. */
let second: Slapd;
before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'alice', password: 'alice-pw', store: 'alpha' }] });
  registerSecrets([slapd.bindPassword]);
  second = await startSlapd({ users: [{ uid: 'alice', password: 'alice-pw', store: 'alpha' }], servicePassword: slapd.bindPassword });
});
after(async () => {
  await Promise.all([slapd?.stop(), second?.stop()]);
});

function directory(server: Slapd, overrides: Partial<DirectoryConfig> = {}): LdapDirectory {
  return new LdapDirectory(directoryConfigOf(server, overrides), log);
}

/** A second entry for uid `dup` (password second-dup-pw, store beta), in ou=other under the people. */
async function addSecondDup(server: Slapd): Promise<void> {
  await server.modify(
    [
      `dn: ou=other,${LDAP_PEOPLE_DN}`,
      'changetype: add',
      'objectClass: organizationalUnit',
      'ou: other',
      '',
      `dn: uid=dup,ou=other,${LDAP_PEOPLE_DN}`,
      'changetype: add',
      'objectClass: inetOrgPerson',
      'objectClass: mailfrontUser',
      'uid: dup',
      'cn: dup',
      'sn: dup',
      'userPassword: second-dup-pw',
      'mailStore: beta',
      '',
    ].join('\n'),
  );
}

test('a uid found twice is refused as ambiguous even when the server limits the service account to one entry', async () => {
  // size=1 for the service account: slapd sends one of the two entries and sizeLimitExceeded.
  const limited = await startSlapd({
    users: [
      { uid: 'dup', password: 'first-dup-pw', store: 'alpha' },
      { uid: 'solo', password: 'solo-user-pw', store: 'alpha' },
    ],
    limits: [`dn.exact="${LDAP_SERVICE_DN}" size=1`],
  });
  registerSecrets([limited.bindPassword]);
  const d = directory(limited);
  try {
    await addSecondDup(limited);
    for (const password of ['first-dup-pw', 'second-dup-pw']) {
      const error = await failure(d.authenticate('dup', password, signal));
      assert.equal(error.code, 'LDAP_AMBIGUOUS_USER', `${password}: ${error.message}`);
      assert.equal(error.kind, 'auth-tempfail');
    }
    // The limit still lets a user found once in.
    assert.equal((await d.authenticate('solo', 'solo-user-pw', signal)).store, 'alpha');
  } finally {
    await d.close();
    await limited.stop();
  }
});

/** The log lines written since `mark`, parsed. */
function linesSince(mark: number): Record<string, unknown>[] {
  return logLines.slice(mark).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** LDAP protocolOp tags (RFC 4511 §4.2, §4.5). */
const BIND_REQUEST = 0x60;
const BIND_RESPONSE = 0x61;
const SEARCH_REQUEST = 0x63;
const SEARCH_ENTRY = 0x64;
const SEARCH_DONE = 0x65;

/**
 * Splits the whole LDAP messages off the front of `buffer`: each message and its protocolOp tag,
 * and the bytes left over (the start of the next message). Test traffic only: short-form and
 * long-form lengths, one-byte tags.
 */
function ldapMessages(buffer: Buffer): { messages: { bytes: Buffer; id: Buffer; op: number }[]; rest: Buffer } {
  const messages: { bytes: Buffer; id: Buffer; op: number }[] = [];
  let at = 0;
  for (;;) {
    if (buffer.length < at + 2) break;
    const first = buffer[at + 1]!;
    let length = first;
    let start = at + 2;
    if (first >= 0x80) {
      const size = first & 0x7f;
      if (buffer.length < start + size) break;
      length = 0;
      for (let i = 0; i < size; i++) length = length * 256 + buffer[start + i]!;
      start += size;
    }
    if (buffer.length < start + length) break;
    // SEQUENCE { messageID INTEGER, protocolOp ... }
    const idLength = buffer[start + 1]!;
    messages.push({ bytes: buffer.subarray(at, start + length), id: buffer.subarray(start, start + 2 + idLength), op: buffer[start + 2 + idLength]! });
    at = start + length;
  }
  return { messages, rest: buffer.subarray(at) };
}

/**
 * An LDAPResult (RFC 4511 §4.1.9) as the protocolOp `tag` (BindResponse 0x61, SearchResultDone
 * 0x65) to the request whose messageID is `id` (its INTEGER, tag and length included).
 */
function ldapResultMessage(id: Buffer, tag: number, resultCode: number, diagnosticMessage: string): Buffer {
  const text = Buffer.from(diagnosticMessage);
  const op = Buffer.concat([Buffer.from([tag, 7 + text.length, 0x0a, 0x01, resultCode, 0x04, 0x00, 0x04, text.length]), text]);
  return Buffer.concat([Buffer.from([0x30, id.length + op.length]), id, op]);
}

/**
 * A relay in front of an LDAP server that fails in part, as a first server may: with
 * `searchAnswerDelayMs`, search answers come that late (past the operation deadline); with
 * `userBindsHang`, a connection whose first bind is not the service account's is never answered
 * (user binds hang); with `refuseBinds` (`refuseSearches`), the relay itself answers the binds
 * of that DN (the searches whose request holds those bytes) with that result code. Read at each message, so a test may change them. Counts the connections made
 * to it, and the searches and user binds sent through it.
 */
async function partlyFailingRelay(
  port: number,
  how: {
    readonly searchAnswerDelayMs?: number;
    readonly userBindsHang?: boolean;
    readonly refuseBinds?: { readonly dn: string; readonly resultCode: number };
    readonly refuseSearches?: { readonly holding: string; readonly resultCode: number };
  },
): Promise<{ readonly url: string; readonly connections: number; readonly searches: number; readonly userBinds: number; cut(): void; close(): Promise<void> }> {
  const counts = { connections: 0, searches: 0, userBinds: 0 };
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    counts.connections++;
    const upstream = netConnect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    let fromClient = Buffer.alloc(0);
    let fromServer = Buffer.alloc(0);
    let userConnection: boolean | undefined;
    client.on('data', (data: Buffer) => {
      const { messages, rest } = ldapMessages(Buffer.concat([fromClient, data]));
      fromClient = Buffer.from(rest);
      for (const { bytes, id, op } of messages) {
        if (op === SEARCH_REQUEST) {
          counts.searches++;
          if (how.refuseSearches !== undefined && bytes.includes(Buffer.from(how.refuseSearches.holding))) {
            client.write(ldapResultMessage(id, SEARCH_DONE, how.refuseSearches.resultCode, 'refused by the test relay'));
            continue;
          }
        }
        if (op === BIND_REQUEST) {
          userConnection ??= !bytes.includes(Buffer.from(LDAP_SERVICE_DN));
          if (userConnection) counts.userBinds++;
          if (how.refuseBinds !== undefined && bytes.includes(Buffer.from(how.refuseBinds.dn))) {
            client.write(ldapResultMessage(id, BIND_RESPONSE, how.refuseBinds.resultCode, 'refused by the test relay'));
            continue;
          }
        }
        upstream.write(bytes);
      }
    });
    upstream.on('data', (data: Buffer) => {
      const { messages, rest } = ldapMessages(Buffer.concat([fromServer, data]));
      fromServer = Buffer.from(rest);
      for (const { bytes, op } of messages) {
        if (how.userBindsHang === true && userConnection === true) continue;
        if (how.searchAnswerDelayMs !== undefined && (op === SEARCH_ENTRY || op === SEARCH_DONE)) {
          setTimeout(() => client.writable && client.write(bytes), how.searchAnswerDelayMs).unref();
        } else {
          client.write(bytes);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: relayPort } = server.address() as AddressInfo;
  return {
    url: `ldap://127.0.0.1:${relayPort}`,
    get connections() {
      return counts.connections;
    },
    get searches() {
      return counts.searches;
    },
    get userBinds() {
      return counts.userBinds;
    },
    cut: () => {
      for (const socket of sockets) socket.destroy();
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

test('a uid found twice without any size limit is refused as ambiguous, whichever entry the password is right for', async () => {
  const twice = await startSlapd({ users: [{ uid: 'dup', password: 'first-dup-pw', store: 'alpha' }] });
  registerSecrets([twice.bindPassword]);
  const d = directory(twice);
  try {
    await addSecondDup(twice);
    for (const password of ['first-dup-pw', 'second-dup-pw']) {
      const error = await failure(d.authenticate('dup', password, signal));
      assert.equal(error.code, 'LDAP_AMBIGUOUS_USER', `${password}: ${error.message}`);
      assert.equal(error.kind, 'auth-tempfail');
    }
  } finally {
    await d.close();
    await twice.stop();
  }
});

test('a first server whose searches answer past the deadline: the retry goes to the next server, and later logins start there', async () => {
  const relay = await partlyFailingRelay(slapd.port, { searchAnswerDelayMs: 1_500 });
  const mark = logLines.length;
  const d = directory(slapd, { urls: [relay.url, second.url] });
  try {
    for (let i = 1; i <= 3; i++) assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i}`);
    // Only the first login asked the first server: its search failed, and the server was held down.
    assert.equal(relay.searches, 1);
    assert.equal((await failure(d.authenticate('alice', 'wrong-alice-pw', signal))).code, 'WRONG_PASSWORD');
    const held = linesSince(mark).filter((l) => l['event'] === 'directory.server_held_down');
    assert.deepEqual(held.map((l) => l['url']), [relay.url], JSON.stringify(held));
  } finally {
    await d.close();
    await relay.close();
  }
});

test('a first server whose searches answer but whose user binds hang: the login binds on the next server, and later logins go there at once', async () => {
  const relay = await partlyFailingRelay(slapd.port, { userBindsHang: true });
  const d = directory(slapd, { urls: [relay.url, second.url] });
  try {
    for (let i = 1; i <= 3; i++) assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i}`);
    assert.equal(relay.userBinds, 1, 'only the first login tried to bind on the first server');
    // A wrong password is still one: checked on the server that answers.
    assert.equal((await failure(d.authenticate('alice', 'wrong-alice-pw', signal))).code, 'WRONG_PASSWORD');
    // With the next server hung too, a login is a temporary failure, not a wrong password.
    await second.pause();
    try {
      assert.equal((await failure(d.authenticate('alice', 'alice-pw', signal))).kind, 'auth-tempfail');
    } finally {
      second.resume();
    }
  } finally {
    await d.close();
    await relay.close();
  }
});

/** A server that accepts connections and never answers on them (a host whose slapd hangs); counts the connections. */
async function silentServer(): Promise<{ readonly url: string; readonly connections: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let connections = 0;
  const server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ldap://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get connections() {
      return connections;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

for (const next of ['hangs', 'is down'] as const) {
  test(`a first server held down for a slow search while the next one ${next}: later logins stay on the first, without trying the next one or opening connections`, async () => {
    const hung = await silentServer();
    // A server that is down: nothing listens on its port (held, so that no other socket draws it meanwhile).
    if (next === 'is down') {
      await hung.close();
      await holdPort(Number(new URL(hung.url).port));
    }
    const how: { searchAnswerDelayMs?: number } = { searchAnswerDelayMs: 1_500 };
    const relay = await partlyFailingRelay(slapd.port, how);
    const mark = logLines.length;
    const d = directory(slapd, { urls: [relay.url, hung.url], searchConnections: 1 });
    try {
      // A slow search on the first server (a load spike), and no answer from the next: a temporary failure.
      assert.equal((await failure(d.authenticate('alice', 'alice-pw', signal))).kind, 'auth-tempfail');
      // The first server answers again; the hung one is held down as well, so it is not "another
      // that answers": the first is used in its turn.
      delete how.searchAnswerDelayMs;
      assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', 'login 2');
      const { connections } = relay;
      const hungConnections = hung.connections;
      for (let i = 3; i <= 5; i++) assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i}`);
      // Each of them would otherwise have moved the search connection off the first server, waited
      // for the hung one, and opened a new connection to the first.
      assert.equal(hung.connections, hungConnections, 'no later login tried the next server');
      assert.equal(relay.connections, connections, 'no later login opened a connection to the first server');
      const held = linesSince(mark).filter((l) => l['event'] === 'directory.server_held_down');
      assert.deepEqual(held.map((l) => l['url']), [relay.url, hung.url], JSON.stringify(held));
    } finally {
      await d.close();
      await relay.close();
      if (next === 'hangs') await hung.close();
    }
  });
}

test('a search connection moving off a held-down first server keeps its connection there when the next server cannot be reached', async () => {
  const how: { searchAnswerDelayMs?: number } = {};
  const relay = await partlyFailingRelay(slapd.port, how);
  // Two search connections, taken in turn by the logins' searches.
  const d = directory(slapd, { urls: [relay.url, second.url], searchConnections: 2 });
  try {
    // Logins 1 and 2 open the two search connections on the first server.
    for (let i = 1; i <= 2; i++) assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i}`);
    // Login 3's search (first connection) fails there: the first server is held down, the
    // connection moves to the second server, where the login goes on.
    how.searchAnswerDelayMs = 1_500;
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', 'login 3');
    delete how.searchAnswerDelayMs;
    // The second server hangs. Login 4's search (second connection, still on the first server)
    // tries to move to the second, which does not answer: it is held down, and the connection to
    // the first server is kept rather than replaced by a new one.
    await second.pause();
    try {
      const { connections } = relay;
      assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', 'login 4');
      assert.equal(relay.connections, connections, 'login 4 opened no connection to the first server');
    } finally {
      second.resume();
    }
  } finally {
    await d.close();
    await relay.close();
  }
});

test('a bind refused with a result code (unwillingToPerform, an inactivated account) is an answer about the user, told as a wrong password: no server is held down for it, and no other is asked', async () => {
  await slapd.addUser({ uid: 'locked', password: 'locked-pw', store: 'alpha' });
  await second.addUser({ uid: 'locked', password: 'locked-pw', store: 'alpha' });
  // The first server answers the bind of uid=locked as 389 DS does for an inactivated account.
  const how: { refuseBinds?: { readonly dn: string; readonly resultCode: number } } = { refuseBinds: { dn: slapd.userDn('locked'), resultCode: 53 } };
  const relay = await partlyFailingRelay(slapd.port, how);
  const next = await partlyFailingRelay(second.port, {});
  const mark = logLines.length;
  const d = directory(slapd, { urls: [relay.url, next.url] });
  try {
    // 389 DS refuses an inactivated account so whatever the password: told as a temporary
    // failure, one login per name would show a guesser which accounts are disabled.
    for (const password of ['locked-pw', 'wrong-alice-pw']) {
      const refused = await failure(d.authenticate('locked', password, signal));
      assert.ok(refused instanceof WrongPasswordError, `${password}: ${refused.code} ${refused.message}`);
      assert.equal(refused.code, 'USER_BIND_REFUSED', refused.message);
      assert.equal(refused.kind, 'auth-failed');
      assert.match(refused.message, /result 53 unwillingToPerform "refused by the test relay"/);
      assert.equal(authFailureReason(refused.code), 'bind-refused');
    }
    // Not asked of the next server: one that has not yet replicated the inactivation (or keeps
    // a lockout of its own) would let the user in.
    assert.equal(next.userBinds, 0, 'the refused bind was not tried on the next server');
    // Other users' logins stay on the first server.
    const searches = relay.searches;
    for (let i = 1; i <= 3; i++) assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i}`);
    assert.equal(relay.searches, searches + 3);
    assert.equal(next.searches, 0);
    assert.deepEqual(linesSince(mark).filter((l) => l['event'] === 'directory.server_held_down'), []);
    // Busy (51) is the server's state, not the user's: the server is held down, and the login
    // binds on the next one.
    how.refuseBinds = { dn: slapd.userDn('alice'), resultCode: 51 };
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    assert.equal(next.userBinds, 1);
    const held = linesSince(mark).filter((l) => l['event'] === 'directory.server_held_down');
    assert.deepEqual(held.map((l) => l['url']), [relay.url], JSON.stringify(held));
  } finally {
    await d.close();
    await relay.close();
    await next.close();
  }
});

test('a user bind refused for the user (19, 48, 50, 53) is a wrong password; the server\'s trouble (1, 3, 11, 80) and busy (51), unavailable (52), noSuchObject (32) stay temporary', async () => {
  const how: { refuseBinds?: { readonly dn: string; readonly resultCode: number } } = {};
  const relay = await partlyFailingRelay(slapd.port, how);
  const d = directory(slapd, { urls: [relay.url] });
  try {
    for (const resultCode of [19, 48, 50, 53]) {
      how.refuseBinds = { dn: slapd.userDn('alice'), resultCode };
      const refused = await failure(d.authenticate('alice', 'alice-pw', signal));
      assert.ok(refused instanceof WrongPasswordError, `${resultCode}: ${refused.code} ${refused.message}`);
      assert.equal(refused.code, 'USER_BIND_REFUSED', `${resultCode}: ${refused.message}`);
      assert.equal(refused.kind, 'auth-failed');
      assert.match(refused.message, new RegExp(`result ${resultCode} [a-zA-Z]+ "refused by the test relay"`));
    }
    for (const resultCode of [1, 3, 11, 32, 51, 52, 80]) {
      how.refuseBinds = { dn: slapd.userDn('alice'), resultCode };
      const failed = await failure(d.authenticate('alice', 'alice-pw', signal));
      assert.equal(failed.code, 'LDAP_BIND_FAILED', `${resultCode}: ${failed.message}`);
      assert.equal(failed.kind, 'auth-tempfail');
    }
    delete how.refuseBinds;
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
  } finally {
    await d.close();
    await relay.close();
  }
});

test('a user bind answered with a result code on a kept connection stands: one bind, not tried again on a new connection', async () => {
  const how: { refuseBinds?: { readonly dn: string; readonly resultCode: number } } = {};
  const relay = await partlyFailingRelay(slapd.port, how);
  // One search connection: each login's search goes on the one opened first.
  const d = directory(slapd, { urls: [relay.url], searchConnections: 1 });
  try {
    // The bind connection this login opens is kept for the next.
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    for (const resultCode of [51, 80]) {
      how.refuseBinds = { dn: slapd.userDn('alice'), resultCode };
      const [binds, connections] = [relay.userBinds, relay.connections];
      const failed = await failure(d.authenticate('alice', 'alice-pw', signal));
      assert.equal(failed.code, 'LDAP_BIND_FAILED', `${resultCode}: ${failed.message}`);
      assert.equal(relay.userBinds - binds, 1, `${resultCode}: one bind, on the kept connection`);
      assert.equal(relay.connections - connections, 0, `${resultCode}: no new connection`);
      // The connection that carried the failed bind is closed: the next login opens one, and keeps it.
      delete how.refuseBinds;
      assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    }
  } finally {
    await d.close();
    await relay.close();
  }
});

test('a base search of base_dn refused by an ACL (insufficientAccessRights, 50) is an answer: the settings work, for a reload\'s probe and for readiness', async () => {
  const config = directoryConfigOf(slapd);
  const relay = await partlyFailingRelay(slapd.port, { refuseSearches: { holding: config.baseDn, resultCode: 50 } });
  const withRelay = { ...config, urls: [relay.url] };
  const d = new LdapDirectory(withRelay, log);
  try {
    assert.deepEqual(await probeDirectory(withRelay, undefined), { state: 'answers' });
    assert.deepEqual(await d.health(signal), { state: 'answers' });
    assert.equal(relay.searches, 2, 'each asked the server');
  } finally {
    await d.close();
    await relay.close();
  }
});

test('a search refused with unwillingToPerform is tried on the next server, but holds no server down', async () => {
  const how = { refuseSearches: { holding: 'alice', resultCode: 53 } };
  const relay = await partlyFailingRelay(slapd.port, how);
  const next = await partlyFailingRelay(second.port, {});
  const mark = logLines.length;
  // Two search connections, taken in turn by the logins' searches.
  const d = directory(slapd, { urls: [relay.url, next.url], searchConnections: 2 });
  try {
    // A refusal may be that server's doing (as before, the search is tried once more): the first
    // search connection moves to the next server, which finds the user.
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    assert.equal(next.searches, 1);
    // It is an answer, though: the first server is not held down, and the second search
    // connection opens there (logins 1 and 3), while the first one stays where it moved (login 2).
    const searches = relay.searches;
    for (let i = 1; i <= 3; i++) assert.equal((await failure(d.authenticate('nobody', 'wrong-alice-pw', signal))).code, 'UNKNOWN_USER', `login ${i}`);
    assert.equal(relay.searches, searches + 2);
    assert.equal(next.searches, 2);
    assert.deepEqual(linesSince(mark).filter((l) => l['event'] === 'directory.server_held_down'), []);
  } finally {
    await d.close();
    await relay.close();
    await next.close();
  }
});

test('a search connection taken back on the first server in turn stays its slot\'s: once that server cuts it, the next search opens a new one', async () => {
  // The first server is held down (its bind answered busy), then the next one refuses a search
  // (53): the slot moves off it, and the first server, first in turn, has its connection taken
  // back before anything is awaited. The slot must hold it, or it hands out a dead connection for
  // ever once the server cuts it.
  const howFirst: { refuseBinds?: { dn: string; resultCode: number } } = {};
  const howNext: { refuseSearches?: { holding: string; resultCode: number } } = {};
  const first = await partlyFailingRelay(slapd.port, howFirst);
  const next = await partlyFailingRelay(second.port, howNext);
  const d = directory(slapd, { urls: [first.url, next.url], searchConnections: 1 });
  try {
    howFirst.refuseBinds = { dn: `uid=alice,${LDAP_PEOPLE_DN}`, resultCode: 51 };
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    delete howFirst.refuseBinds;
    howNext.refuseSearches = { holding: 'alice', resultCode: 53 };
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    delete howNext.refuseSearches;
    // A restart of the first server cuts its connections.
    first.cut();
    await new Promise((resolve) => setTimeout(resolve, 200));
    for (let i = 3; i <= 5; i++) assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i}`);
    assert.equal(await d.reachable(signal), true);
  } finally {
    await d.close();
    await first.close();
    await next.close();
  }
});

test('an entry with two values of the store attribute is routed nowhere (values are unordered), once the password is right', async () => {
  // mailStore is SINGLE-VALUE in mailfront's schema; description, which any attribute may be, is not.
  await slapd.addUser({ uid: 'twostores', password: 'two-stores-pw' });
  await slapd.modify(`dn: ${slapd.userDn('twostores')}\nchangetype: modify\nadd: description\ndescription: beta\ndescription: alpha\n`);
  await slapd.modify(`dn: ${slapd.userDn('alice')}\nchangetype: modify\nreplace: description\ndescription: alpha\n`);
  const d = directory(slapd, { storeAttribute: 'description' });
  try {
    const error = await failure(d.authenticate('twostores', 'two-stores-pw', signal));
    assert.equal(error.code, 'USER_STORE_AMBIGUOUS');
    assert.equal(error.kind, 'no-route');
    // The reason mailfront logs names the entry to fix.
    assert.match(error.message, /uid=twostores,ou=people,dc=example,dc=org has 2 values of description/);
    assert.equal((await failure(d.authenticate('twostores', 'wrong-two-stores-pw', signal))).code, 'WRONG_PASSWORD');
    // One value routes as before.
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
  } finally {
    await d.close();
  }
});

test('no password and no bind secret appears in these tests\' log lines', () => {
  assertNoRegisteredSecret(logLines, "the directory's log");
});
