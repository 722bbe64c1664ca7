// mailfront_ready says what /readyz says, read at each scrape: 1 while ready, 0 once it is not
// (here: a reload adds a POP3 listener whose port is taken, so no POP3 listener is bound and
// /readyz answers 503). A stand-in directory; no directory or backend server runs.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { registerPasswords, standInDirectory, suiteLogWriter, standInConfigSections } from './front.js';
import { freePort, tmpDir } from './servers/index.js';
import type { TmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused');

describe('mailfront_ready', () => {
  let dir: TmpDir;
  let mailfront: Mailfront;
  let taken: Server;
  let configFile = '';
  let directoryChecks = 0;

  const scrape = async (): Promise<{ ready: string[]; readyz: number }> => {
    const { host, port } = mailfront.httpAddress()!;
    const body = await (await fetch(`http://${host}:${port}/metrics`)).text();
    const readyz = (await fetch(`http://${host}:${port}/readyz`)).status;
    return { ready: body.split('\n').filter((l) => /^mailfront_ready\b/.test(l)), readyz };
  };

  before(async () => {
    dir = tmpDir('ready-metric');
    taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1 } } } } }));
    configFile = join(dir.path, 'mailfront.yaml');
    await writeFile(
      configFile,
      stringify({
        log: { level: 'info' },
        listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: await freePort(), tls: 'none', plaintext_without_tls: true }],
        ...standInConfigSections(),
      }),
    );
    const writeSuiteLog = suiteLogWriter();
    // A directory whose check never answers: /readyz waits on it (up to its 1.5 s deadline), a scrape must not.
    const directory = standInDirectory({
      reachable: (signal) => {
        directoryChecks++;
        return new Promise<boolean>((resolve) => signal.addEventListener('abort', () => resolve(false), { once: true }));
      },
    });
    mailfront = await Mailfront.start(loadConfig(configFile), { directory, processMetrics: false, logDestination: { write: (line: string) => writeSuiteLog(line) } });
  });

  after(async () => {
    await mailfront?.stop(0);
    taken?.close();
    await dir?.remove();
  });

  it('asks the directory nothing: its check is advisory, and a hung directory would hold every scrape', async () => {
    const { host, port } = mailfront.httpAddress()!;
    const body = await (await fetch(`http://${host}:${port}/metrics`)).text();
    assert.match(body, /^mailfront_ready 1$/m);
    assert.equal(directoryChecks, 0);
  });

  it('is 1 while /readyz answers 200, and 0 once it answers 503', async () => {
    assert.deepEqual(await scrape(), { ready: ['mailfront_ready 1'], readyz: 200 });
    const doc = parse(await readFile(configFile, 'utf8')) as { listeners: unknown[] };
    const port = (taken.address() as { port: number }).port;
    doc.listeners.push({ name: 'pop3', protocol: 'pop3', host: '127.0.0.1', port, tls: 'none', plaintext_without_tls: true });
    await writeFile(configFile, stringify(doc));
    const reloaded = await mailfront.reload();
    assert.equal(reloaded.ok, false, 'the POP3 listener could not bind');
    assert.deepEqual(await scrape(), { ready: ['mailfront_ready 0'], readyz: 503 });
  });
});
