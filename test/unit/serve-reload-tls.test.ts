// A reload of `mailfront serve` that changes the TLS policy while a listener's certificate files
// cannot be used: the README says the policy applies from the next connection and the listener's
// other settings still apply, whether the files named are re-read (and fail) or other files are
// named (and fail); such a reload, applied in part, counts as a failed one in /metrics. Real TLS
// handshakes against a real serve process.
import assert from 'node:assert/strict';
import { copyFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connect } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import { freePort, makeCerts } from '../integration/servers/index.js';
import type { TestCerts } from '../integration/servers/index.js';
import { folderWithStoreMap, serve, stop } from './serve-process.js';

let dir: string;
let certs: TestCerts;

before(async () => {
  dir = await folderWithStoreMap('mf-serve-reload-tls-');
  certs = await makeCerts(dir);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The TLS version an implicit-TLS handshake on `port` got, or 'refused'. */
function handshake(port: number, options: ConnectionOptions = {}): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      resolve(socket.getProtocol() ?? 'none');
      socket.destroy();
    });
    socket.on('error', () => resolve('refused'));
  });
}

/** The value of the series `series` (name and labels as exposed) in /metrics on `port`, or undefined when it is not there. */
async function metric(port: number, series: string): Promise<number | undefined> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(response.status, 200);
  const line = (await response.text()).split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('a reload to tls.min_version TLSv1.3 applies to a listener whose certificate cannot be re-read, and to one whose new files cannot be used', async () => {
  const [rereadPort, renamedPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const reread = { cert: join(dir, 'reread.crt'), key: join(dir, 'reread.key') };
  await copyFile(certs.certFile, reread.cert);
  await copyFile(certs.keyFile, reread.key);
  const config = join(dir, 'mailfront.yaml');
  const write = (tls: string, renamed: { cert: string; key: string }): Promise<void> =>
    writeFile(
      config,
      `listeners:\n` +
        `  - { name: reread, protocol: imap, host: 127.0.0.1, port: ${rereadPort}, tls: implicit, certificate: { cert: ${JSON.stringify(reread.cert)}, key: ${JSON.stringify(reread.key)} } }\n` +
        `  - { name: renamed, protocol: imap, host: 127.0.0.1, port: ${renamedPort}, tls: implicit, certificate: { cert: ${JSON.stringify(renamed.cert)}, key: ${JSON.stringify(renamed.key)} } }\n` +
        `directory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\nhttp: { host: 127.0.0.1, port: ${httpPort} }\n${tls}`,
    );
  await write('', { cert: certs.certFile, key: certs.keyFile });
  const s = serve(config);
  try {
    await s.logged('listener.bound', 2);
    await s.logged('http.bound');
    const failuresBefore = (await metric(httpPort, 'mailfront_config_reloads_total{result="failure"}')) ?? 0;
    const successesBefore = (await metric(httpPort, 'mailfront_config_reloads_total{result="success"}')) ?? 0;
    for (const port of [rereadPort, renamedPort]) assert.equal(await handshake(port, { maxVersion: 'TLSv1.2' }), 'TLSv1.2');
    // The first listener's certificate is gone (a renewal half done); the second names new files
    // that are not there yet.
    await rm(reread.cert);
    await write('tls: { min_version: TLSv1.3 }\n', { cert: join(dir, 'new.crt'), key: join(dir, 'new.key') });
    s.child.kill('SIGHUP');
    await s.logged('config.reloaded');
    const said = s.lines().filter((l) => l['event'] === 'config.partially_applied').map((l) => String(l['err']));
    assert.equal(said.length, 2, said.join('\n'));
    for (const [i, port] of [rereadPort, renamedPort].entries()) {
      assert.equal(await handshake(port, { maxVersion: 'TLSv1.2' }), 'refused', `listener ${i}: TLS 1.2 after min_version: TLSv1.3`);
      assert.equal(await handshake(port), 'TLSv1.3', `listener ${i}: the certificate in force still serves`);
      assert.match(said[i] ?? '', /: ENOENT; the certificate in force stays, with the new TLS policy$/);
    }
    // Applied in part counts as a failure (README, Metrics: "a reload applied in part,
    // config.partially_applied, counts as a failure"): the config in force is not all of the file's.
    assert.equal(await metric(httpPort, 'mailfront_config_last_reload_success'), 0);
    assert.equal(await metric(httpPort, 'mailfront_config_reloads_total{result="failure"}'), failuresBefore + 1);
    assert.equal((await metric(httpPort, 'mailfront_config_reloads_total{result="success"}')) ?? 0, successesBefore);
    assert.equal(await stop(s), 0);
  } finally {
    await stop(s);
  }
});
