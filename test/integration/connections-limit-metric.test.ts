// mailfront_connections_max gives connection_limits.max_connections in force, and follows a
// reload that changes it; mailfront_connections_open the client connections held as that limit
// counts them. MailfrontConnectionsNearLimit compares the two. A stand-in directory; no
// directory or backend server runs.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { registerPasswords, standInDirectory, suiteLogWriter } from './front.js';
import { freePort, tmpDir } from './servers/index.js';
import type { TmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused');

describe('mailfront_connections_max and mailfront_connections_open', () => {
  let dir: TmpDir;
  let mailfront: Mailfront;
  let configFile = '';
  let imapPort = 0;
  const clients: Socket[] = [];

  /** The value of the label-less `name` in /metrics, or undefined when it is not there. */
  const scrape = async (name: string): Promise<number | undefined> => {
    const { host, port } = mailfront.httpAddress()!;
    const body = await (await fetch(`http://${host}:${port}/metrics`)).text();
    const line = body.split('\n').find((l) => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.slice(name.length + 1));
  };

  /** Opens a client connection and waits for its greeting. */
  const open = async (): Promise<void> => {
    const socket = connect(imapPort, '127.0.0.1');
    clients.push(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('data', () => resolve());
      socket.once('error', reject);
    });
  };

  before(async () => {
    dir = tmpDir('connections-limit-metric');
    await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1 } } } } }));
    configFile = join(dir.path, 'mailfront.yaml');
    imapPort = await freePort();
    await writeFile(
      configFile,
      stringify({
        log: { level: 'info' },
        listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imapPort, tls: 'none', plaintext_without_tls: true }],
        directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=reader', bind_password: 'reader-pw-unused', base_dn: 'dc=example' },
        store_map: { file: 'stores.yaml' },
        throttle: { enabled: false },
        health: { interval_ms: 0 },
        connection_limits: { max_connections: 50 },
        http: { host: '127.0.0.1', port: 0 },
        // No balancer to wait for: a stop closes the listeners at once (stop-unready.test.ts tests the delay).
        shutdown: { unready_delay_ms: 0 },
      }),
    );
    const writeSuiteLog = suiteLogWriter();
    mailfront = await Mailfront.start(loadConfig(configFile), { directory: standInDirectory(), processMetrics: false, logDestination: { write: (line: string) => writeSuiteLog(line) } });
  });

  after(async () => {
    for (const socket of clients) socket.destroy();
    await mailfront?.stop(0);
    await dir?.remove();
  });

  it('gives the limit in force, and the connections held as it counts them', async () => {
    assert.equal(await scrape('mailfront_connections_max'), 50);
    assert.equal(await scrape('mailfront_connections_open'), 0);
    await open();
    await open();
    assert.equal(await scrape('mailfront_connections_open'), 2);
  });

  it('follows a reload that changes the limit', async () => {
    const doc = parse(await readFile(configFile, 'utf8')) as { connection_limits: Record<string, unknown> };
    doc.connection_limits['max_connections'] = 80;
    await writeFile(configFile, stringify(doc));
    assert.equal((await mailfront.reload()).ok, true);
    assert.equal(await scrape('mailfront_connections_max'), 80);
    assert.equal(await scrape('mailfront_connections_open'), 2, 'the connections held stay counted');
  });
});
