// /readyz of a running mailfront against a stand-in directory that counts its checks: the
// directory check is a search on the directory servers the fleet shares, and /readyz needs no
// credentials, so a flood of requests must not become a flood of searches. No directory or
// backend server runs here.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { READINESS_CHECK_REUSE_MS } from '../../src/server/http.js';
import { registerPasswords, standInDirectory, suiteLogWriter, standInConfigSections } from './front.js';
import { freePort, tmpDir } from './servers/index.js';
import type { TmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused');

/** GET `path` on a connection of its own; the status and body. */
function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('/readyz and the directory check', () => {
  let dir: TmpDir;
  let mailfront: Mailfront;
  let httpPort = 0;
  let checks = 0;
  let reachable = true;

  before(async () => {
    dir = tmpDir('readiness');
    const directory = standInDirectory({
      authenticate: () => Promise.reject(new Error('no logins here')),
      // A check that takes a moment, as a search on a real server does.
      reachable: async () => {
        checks++;
        const answer = reachable;
        await new Promise((resolve) => setTimeout(resolve, 50));
        return answer;
      },
    });
    await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1 } } } } }));
    await writeFile(
      join(dir.path, 'mailfront.yaml'),
      stringify({
        log: { level: 'info' },
        listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: await freePort(), tls: 'none', plaintext_without_tls: true }],
        ...standInConfigSections(),
      }),
    );
    const writeSuiteLog = suiteLogWriter();
    mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory, processMetrics: false, logDestination: { write: (line: string) => writeSuiteLog(line) } });
    httpPort = mailfront.httpAddress()!.port;
  });

  after(async () => {
    await mailfront?.stop(0);
    await dir?.remove();
  });

  it('thirty requests at once run one directory check and share its answer; one after its second runs the next', async () => {
    // Past any check begun while mailfront started.
    await new Promise((resolve) => setTimeout(resolve, READINESS_CHECK_REUSE_MS + 50));
    const before = checks;
    const sent = performance.now();
    const replies = await Promise.all(Array.from({ length: 30 }, () => get(httpPort, '/readyz')));
    // One, unless a loaded machine spread the thirty over more than a second: a check begins no
    // sooner than a second after the one before.
    const spanMs = performance.now() - sent;
    const burst = checks - before;
    assert.ok(burst >= 1 && burst <= 1 + Math.floor(spanMs / READINESS_CHECK_REUSE_MS), `${burst} directory checks for 30 concurrent /readyz in ${spanMs.toFixed(0)} ms`);
    for (const reply of replies) {
      assert.equal(reply.status, 200);
      assert.match(reply.body, /"name":"directory","ok":true/);
    }
    // The directory goes away: an answer begun more than a second ago is not given again.
    reachable = false;
    await new Promise((resolve) => setTimeout(resolve, READINESS_CHECK_REUSE_MS + 50));
    const later = await get(httpPort, '/readyz');
    assert.equal(checks - before, burst + 1);
    // Advisory: still ready, and said to be degraded.
    assert.equal(later.status, 200);
    assert.match(later.body, /"degraded":\[\{"name":"directory","ok":false/);
  });

  it('a client asking /readyz one request after another gets about one directory check a second', async () => {
    await new Promise((resolve) => setTimeout(resolve, READINESS_CHECK_REUSE_MS + 50));
    const before = checks;
    const started = performance.now();
    for (let i = 0; i < 100; i++) assert.equal((await get(httpPort, '/readyz')).status, 200);
    const seconds = (performance.now() - started) / 1_000;
    // One check per started second of the run (each answer serves a second from its start).
    assert.ok(checks - before <= Math.ceil(seconds) + 1, `${checks - before} directory checks for 100 requests in ${seconds.toFixed(2)} s`);
  });
});
