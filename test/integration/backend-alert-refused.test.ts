/**
 * A backend that refuses the login with an [ALERT] (a scripted IMAP backend: "mfN NO [ALERT] Your
 * account is locked; call the helpdesk", behind an untagged "* NO [ALERT] …"): the client gets
 * each alert's text as an untagged `* OK [ALERT] …` line just before mailfront's own tagged NO
 * (its code and text as for any backend refusal), after the failure delay, or at once when a
 * full front evicts the session during it (then the limit's BYE); RFC 9051 §7.1 wants ALERT text
 * presented to the user. Before the fix the client got mailfront's NO alone. The log says how many
 * alerts went with the refusal, and holds no password.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { after, afterEach, before, describe, test } from 'node:test';
import { LineClient, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { connectionsReleased, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Alertee-pw-3f9b';
const MAX = 3;
/** Long enough for a case to evict a session during it, short enough to wait out. */
const DELAY_MS = 1_500;
const REFUSED = 'NO [UNAVAILABLE] Your mail server is temporarily unavailable, please wait and try again later.';
const ALERTS = ['* OK [ALERT] Quota at 95%, please delete some mail', '* OK [ALERT] Your account is locked; call the helpdesk'];

let slapd: Slapd;
let front: Front;
/** The scripted backend: greets, and refuses every LOGIN at once with an untagged alert and a tagged NO [ALERT]. */
let backend: Server;
const backendSockets: Socket[] = [];

before(async () => {
  backend = createServer((socket) => {
    backendSockets.push(socket);
    socket.on('error', () => undefined);
    socket.write('* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] scripted\r\n');
    socket.on('data', (chunk: Buffer) => {
      for (const [, tag, command] of chunk.toString('latin1').matchAll(/^(\S+) (\S+).*\r\n/gm)) {
        // The LOGIN's first line (a synchronising literal follows): refused without asking for it.
        // A BEL in the alert: a control character is never passed on.
        if (command?.toUpperCase() === 'LOGIN') socket.write(`* NO [ALERT] Quota at 95%, please delete some mail\r\n${tag} NO [ALERT] Your account is locked; call the helpdesk\x07\r\n`);
        else socket.write(`${tag} OK done\r\n`);
      }
    });
  });
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
  slapd = await startSlapd({ users: [{ uid: 'alertee', password: PASSWORD, store: 'locked' }] });
  front = await startFront({
    slapd,
    stores: { locked: { currentMaster: 'l1', slots: { l1: { imapPort: (backend.address() as AddressInfo).port } } } },
    connectionLimits: { max_connections: MAX },
    session: { auth_failure_delay_ms: DELAY_MS, preauth_timeout_ms: 30_000 },
  });
});
after(async () => {
  await front?.stop();
  for (const socket of backendSockets) socket.destroy();
  backend?.close();
  await slapd?.stop();
});

const opened: LineClient[] = [];

async function greeted(): Promise<LineClient> {
  const client = await LineClient.connect(front.imapTrustedPort);
  opened.push(client);
  assert.match(await client.readLine(), /^\* OK /);
  return client;
}

/** The lines `client` gets until it is closed. */
async function linesUntilClosed(client: LineClient): Promise<string[]> {
  const lines: string[] = [];
  for (;;) {
    const line = await client.readLine(5_000).catch((error: unknown) => (error instanceof Error && error.message === 'connection closed' ? null : Promise.reject(error)));
    if (line === null) return lines;
    lines.push(line);
  }
}

describe("a backend's refusal of the login with an [ALERT]", { concurrency: 1 }, () => {
  afterEach(async () => {
    for (const client of opened.splice(0)) client.close();
    await connectionsReleased(front);
  });

  test("the alerts' texts as untagged OK [ALERT] lines just before mailfront's own tagged NO; logged with backendAlerts", async () => {
    const mark = front.logs.length;
    const client = await greeted();
    const result = await client.imap(`LOGIN alertee ${PASSWORD}`);
    assert.equal(`${result.status} ${result.text}`, REFUSED, "mailfront's own code and text, as for any backend refusal");
    assert.deepEqual(result.untagged, ALERTS);
    // The session goes on: the alerts were part of that one answer.
    assert.equal((await client.imap('NOOP')).status, 'OK');
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'BACKEND_REFUSED_LOGIN');
    assert.equal(failed['backendAlerts'], 2);
    assert.ok(!JSON.stringify(front.logs.slice(mark)).includes(PASSWORD), 'no password logged');
  });

  test('evicted during the failure delay: the alerts, the tagged NO, then the BYE, at once', async () => {
    const mark = front.logs.length;
    const refused = await greeted();
    refused.send(`a1 LOGIN alertee ${PASSWORD}`);
    await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    for (let i = 1; i < MAX; i++) await greeted();
    const started = performance.now();
    await greeted();
    const lines = await linesUntilClosed(refused);
    assert.ok(performance.now() - started < DELAY_MS / 2, 'answered at the eviction');
    assert.deepEqual(lines, [...ALERTS, `a1 ${REFUSED}`, '* BYE [UNAVAILABLE] Too many connections, please wait and try again later.']);
  });
});
