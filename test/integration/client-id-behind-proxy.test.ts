// An ID's x-originating-ip behind a PROXY-protocol balancer: whether the claim is believed is
// judged by the client's address as the balancer's header gives it (a webmail server behind the
// balancer), not by the balancer's own address. A balancer listed in trusted_networks (it often
// is, for its exemption from per-address limits) must not make every client behind it able to
// name any address it likes for the throttle, the limits, the logs and the backend. A review's
// mutant that judged the claim by the balancer's address passed every other test: none combined
// a PROXY header with an ID claim. And the balancers trusted follow a reload: a peer taken out of
// proxy_protocol.trusted_networks could otherwise go on naming any client address until a
// restart (another mutant that passed every test). A running mailfront with a stand-in
// directory; no backend.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { registerPasswords, standInDirectory, parsedSuiteLog, standInConfigSections } from './front.js';
import { LineClient, freePort, tmpDir } from './servers/index.js';
import type { TmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused');

/** A webmail server behind the balancer, listed in trusted_networks as the balancer is. */
const WEBMAIL = '192.0.2.20';

describe('an ID address claim behind a PROXY balancer', () => {
  let dir: TmpDir;
  let mailfront: Mailfront;
  const logs: Array<Record<string, unknown>> = [];
  let port = 0;

  before(async () => {
    dir = tmpDir('client-id-behind-proxy');
    port = await freePort();
    await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1 } } } } }));
    await writeConfig(['127.0.0.1']);
    mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory: standInDirectory(), processMetrics: false, logDestination: parsedSuiteLog(logs) });
  });

  /** mailfront.yaml with the balancers of `balancers` trusted to send PROXY headers. */
  function writeConfig(balancers: readonly string[]): Promise<void> {
    return writeFile(
      join(dir.path, 'mailfront.yaml'),
      stringify({
        log: { level: 'info' },
        listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port, tls: 'none', plaintext_without_tls: true, proxy_protocol: { trusted_networks: balancers } }],
        trusted_networks: ['127.0.0.1/32', `${WEBMAIL}/32`],
        ...standInConfigSections(),
      }),
    );
  }

  after(async () => {
    await mailfront?.stop(0);
    await dir?.remove();
  });

  /** Sends a PROXY header naming `client`, then an ID claiming `claim`; the log lines of that session about the claim. */
  async function claimFrom(client: string, claim: string): Promise<Array<Record<string, unknown>>> {
    const mark = logs.length;
    const c = await LineClient.connect(port);
    try {
      c.socket.write(`PROXY TCP4 ${client} 127.0.0.1 50020 ${port}\r\n`);
      assert.match(await c.readLine(), /^\* OK /);
      assert.equal((await c.imap(`ID ("x-originating-ip" "${claim}")`)).status, 'OK');
    } finally {
      c.close();
    }
    return logs.slice(mark).filter((l) => l['event'] === 'session.client_id_ignored' || l['event'] === 'session.client_id_honoured');
  }

  it('a client behind the trusted balancer is not believed: the claim is judged by its own address', async () => {
    const lines = await claimFrom('192.0.2.7', '203.0.113.9');
    assert.deepEqual(
      lines.map((l) => [l['event'], l['trusted'], l['claimed']]),
      [['session.client_id_ignored', false, '203.0.113.9']],
    );
  });

  it('a trusted webmail server behind the balancer is believed', async () => {
    const lines = await claimFrom(WEBMAIL, '203.0.113.10');
    assert.deepEqual(
      lines.map((l) => [l['event'], l['client'], l['via']]),
      [['session.client_id_honoured', '203.0.113.10', WEBMAIL]],
    );
  });

  it('a balancer taken out of proxy_protocol.trusted_networks by a reload has its next header refused', async () => {
    await writeConfig(['127.0.0.2']);
    const reloaded = await mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    const mark = logs.length;
    const c = await LineClient.connect(port);
    try {
      c.socket.write(`PROXY TCP4 192.0.2.8 127.0.0.1 50021 ${port}\r\na LOGOUT\r\n`);
      assert.equal(await c.waitClosed(5_000), true, 'the connection that sent a header is closed');
    } finally {
      c.close();
    }
    assert.deepEqual(
      logs.slice(mark).filter((l) => l['event'] === 'session.proxy_header_refused').map((l) => l['client']),
      ['127.0.0.1'],
    );
  });
});
