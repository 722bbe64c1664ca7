/**
 * Self-test of the Cyrus harness: every user startCyrus() or createMailbox() creates has an INBOX
 * of its own. Before, imapd reseeded rand() with the current second on a process's first CREATE
 * of a user.<name> (partition selection), and Debian's Cyrus draws mailbox uniqueids from rand():
 * users whose mailboxes were created in two processes in the same second shared one MAILBOXID and
 * one spool folder, and a message appended for one was in the other's INBOX too.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { LineClient, startCyrus } from './servers/index.js';
import type { Cyrus } from './servers/index.js';
import { makeMessage } from './front.js';

const PROXY = { name: 'proxyadmin', password: 'Cyrus-proxy-pw-61' };
// Enough users that, with the old seeding, two of them came out with one mailbox in every run.
const USERS = Array.from({ length: 12 }, (_, i) => ({ name: `user${i}`, password: `user${i}-pw` }));

const started: Cyrus[] = [];

after(async () => {
  await Promise.all(started.map((cyrus) => cyrus.stop()));
});

/** A direct Cyrus session as the user (proxy admin, authzid = user), without the harness's helpers. */
async function asUser<T>(cyrus: Cyrus, user: string, use: (client: LineClient) => Promise<T>): Promise<T> {
  const client = await LineClient.connect(cyrus.imapPort);
  try {
    await client.readLine();
    const auth = await client.authenticatePlain(user, PROXY.name, PROXY.password);
    assert.equal(auth.status, 'OK', `proxy login as ${user}: ${auth.text}`);
    return await use(client);
  } finally {
    client.close();
  }
}

/** Each user's INBOX: its MAILBOXID differs from every other user's, and it holds its own marker only. */
async function assertOwnInboxes(cyrus: Cyrus): Promise<void> {
  const owners = new Map<string, string>();
  for (const { name } of USERS) {
    // Not STATUS (MAILBOXID MESSAGES): Cyrus 3.6 answers it, on a mailbox not yet opened, with stray bytes for the id.
    const examined = await asUser(cyrus, name, (client) => client.imapOk('EXAMINE INBOX'));
    const id = /^\* OK \[MAILBOXID \(([^)\s]+)\)\]/m.exec(examined.untagged.join('\n'))?.[1];
    assert.ok(id, `EXAMINE INBOX for ${name} names a MAILBOXID: ${examined.untagged.join(' | ')}`);
    assert.equal(owners.get(id), undefined, `${name}'s INBOX is ${owners.get(id) ?? ''}'s (MAILBOXID ${id})`);
    owners.set(id, name);
  }
  for (const { name } of USERS) await cyrus.deliver(name, makeMessage(`marker-for-${name}`));
  for (const { name } of USERS) {
    const subjects = await asUser(cyrus, name, async (client) => {
      await client.imapOk('EXAMINE INBOX');
      const fetched = await client.imapOk('FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])');
      return fetched.untagged.filter((line) => /^Subject:/i.test(line)).map((line) => line.replace(/^Subject:\s*/i, ''));
    });
    assert.deepEqual(subjects, [`marker-for-${name}`], `${name}'s INBOX holds only the message appended for ${name}`);
  }
}

test('startCyrus: each user it creates has an INBOX of its own', async () => {
  const cyrus = await startCyrus({ users: USERS, proxyAdmin: PROXY });
  started.push(cyrus);
  await assertOwnInboxes(cyrus);
});

test('createMailbox on several connections at once: each user has an INBOX of its own', async () => {
  // Concurrent CREATEs land in several imapd processes, each doing its first CREATE in the same second.
  const cyrus = await startCyrus({ users: USERS, proxyAdmin: PROXY, createMailboxes: false });
  started.push(cyrus);
  await Promise.all(USERS.map((user) => cyrus.createMailbox(user.name)));
  await assertOwnInboxes(cyrus);
});
