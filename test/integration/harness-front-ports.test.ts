// Self-test of startFront()'s ports: a listener's port that another socket takes between
// freePort() and mailfront's bind makes the front start again on fresh ports, as the daemons do
// (harness-ports.test.ts). With test files two at a time, the other file's servers on port 0 and
// its own freePort() draw from the same range, and so does an instance's own HTTP listener (port
// 0) while the instances a file starts at once have not bound theirs yet.
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { after, before, test } from 'node:test';
import { startFront } from './front.js';
import { LineClient, handOutNext, refusingPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';

let slapd: Slapd;
/** Another process's listener, as far as mailfront can tell: it holds the port handed out first. */
let taker: Server;

before(async () => {
  slapd = await startSlapd({ users: [] });
  taker = createServer();
  await new Promise<void>((resolve) => taker.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  await new Promise((resolve) => taker?.close(resolve));
  await slapd?.stop();
});

test('a listener port taken before mailfront bound it: the front starts again on fresh ports', { timeout: 60_000 }, async () => {
  const stores = { alpha: { currentMaster: 'm', slots: { m: { imapPort: await refusingPort() } } } };
  const taken = (taker.address() as AddressInfo).port;
  // The first port startFront() draws, its IMAP listener's.
  handOutNext(taken);
  const front = await startFront({ slapd, stores });
  try {
    assert.notEqual(front.imapPort, taken);
    const client = await LineClient.connect(front.imapPort);
    try {
      assert.match(await client.readLine(), /^\* OK /);
    } finally {
      client.close();
    }
  } finally {
    await front.stop();
  }
});
