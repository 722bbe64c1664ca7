// TLS session resumption on a running mailfront's IMAPS listener, as the config sets it: by
// default a client resumes its session with the ticket it was given (TLS 1.3 and 1.2); after a
// reload with tls.session_tickets false, none does. A stand-in directory: no login is made.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as tlsConnect } from 'node:tls';
import type { SecureVersion } from 'node:tls';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { registerPasswords, standInDirectory, parsedSuiteLog, standInConfigSections } from './front.js';
import { freePort, makeCerts, tmpDir } from './servers/index.js';
import type { TestCerts, TmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused');

describe('TLS session tickets on an IMAPS listener', () => {
  let dir: TmpDir;
  let certs: TestCerts;
  let ca: Buffer;
  let mailfront: Mailfront;
  let port = 0;
  const logs: Array<Record<string, unknown>> = [];

  const writeConfig = (tls: Record<string, unknown>): Promise<void> =>
    writeFile(
      join(dir.path, 'mailfront.yaml'),
      stringify({
        log: { level: 'info' },
        listeners: [{ name: 'imaps', protocol: 'imap', host: '127.0.0.1', port, tls: 'implicit', certificate: { cert: certs.certFile, key: certs.keyFile } }],
        ...standInConfigSections(),
        tls,
      }),
    );

  before(async () => {
    dir = tmpDir('tls-session-tickets');
    certs = await makeCerts(dir.path);
    ca = await readFile(certs.caFile);
    port = await freePort();
    await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1 } } } } }));
    await writeConfig({});
    mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory: standInDirectory(), processMetrics: false, logDestination: parsedSuiteLog(logs) });
  });

  after(async () => {
    await mailfront?.stop(0);
    await dir?.remove();
  });

  /**
   * One IMAPS connection (greeting, LOGOUT, mailfront's close), offering `session`: whether it
   * was resumed, and the last session the server gave (every ticket is read by the close).
   */
  const connection = (maxVersion: SecureVersion, session?: Buffer): Promise<{ reused: boolean; session?: Buffer }> =>
    new Promise((resolve, reject) => {
      let reused = false;
      let last: Buffer | undefined;
      let text = '';
      const socket = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ca, maxVersion, ...(session !== undefined ? { session } : {}) });
      socket.once('secureConnect', () => (reused = socket.isSessionReused()));
      socket.on('session', (s: Buffer) => (last = s));
      socket.on('error', reject);
      socket.setEncoding('latin1');
      socket.on('data', (chunk: string) => {
        const greeted = text.includes('\r\n');
        text += chunk;
        if (!greeted && text.includes('\r\n')) socket.write('a LOGOUT\r\n');
      });
      socket.once('close', () => {
        assert.match(text, /^\* OK [^\r\n]*\r\n\* BYE [^\r\n]*\r\na OK /);
        resolve({ reused, ...(last !== undefined ? { session: last } : {}) });
      });
    });

  /** Whether a second connection resumes the first one's session. */
  const resumes = async (maxVersion: SecureVersion): Promise<boolean> => {
    const first = await connection(maxVersion);
    assert.equal(first.reused, false);
    if (first.session === undefined) return false;
    return (await connection(maxVersion, first.session)).reused;
  };

  it('by default a client resumes its session, over TLS 1.3 and TLS 1.2', async () => {
    assert.equal(await resumes('TLSv1.3'), true, 'TLS 1.3');
    assert.equal(await resumes('TLSv1.2'), true, 'TLS 1.2');
  });

  it('after a reload with tls.session_tickets false, no client resumes', async () => {
    const first = await connection('TLSv1.3');
    await writeConfig({ session_tickets: false });
    const reloaded = await mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    // A ticket from before the reload is not taken either: the contexts are new.
    assert.equal((await connection('TLSv1.3', first.session)).reused, false, 'a ticket from before the reload');
    assert.equal(await resumes('TLSv1.3'), false, 'TLS 1.3');
    assert.equal(await resumes('TLSv1.2'), false, 'TLS 1.2');
  });
});
