/**
 * How sessions over TLS end: mailfront sends a TLS close_notify before closing the connection
 * (RFC 8446 §6.1), before login and after the splice alike, over implicit TLS and STARTTLS, for
 * IMAP, POP3 and ManageSieve. The client is python3's ssl with suppress_ragged_eofs off, which
 * reports a close without that alert as an error (as openssl s_client does); node's TLS
 * client does not tell the two apart. Backends: slapd and a Dovecot with Pigeonhole.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { repoRoot, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerSecrets, startFront } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORD = 'Alice-close-6d0b';
registerSecrets([PASSWORD, Buffer.from(`\0alice\0${PASSWORD}`).toString('base64')]);

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;

interface CloseResult {
  readonly error?: string;
  readonly login?: string | null;
  readonly end?: string;
}

/** One session through python3 ssl: TLS, a login if `login`, the protocol's logout, then how the connection ended. */
async function endOfSession(protocol: 'imap' | 'pop3' | 'sieve', tls: 'implicit' | 'starttls', port: number, login: boolean): Promise<CloseResult> {
  const script = join(repoRoot(), 'test/integration/clients/tls_close.py');
  const request = { port, protocol, tls, cafile: front.certs.caFile, ...(login ? { user: 'alice', password: PASSWORD } : {}) };
  const { stdout } = await run('python3', [script, JSON.stringify(request)], { timeout: 30_000 });
  return JSON.parse(stdout) as CloseResult;
}

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'alice', password: PASSWORD, store: 'alpha' }] });
  dovecot = await startDovecot({ name: 'close-alpha', users: [{ name: 'alice', password: PASSWORD }], sieve: true });
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port, sievePort: dovecot.sievePort! } } } },
    sieve: true,
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

describe('sessions over TLS end with a close_notify', () => {
  const cases = [
    ['IMAPS', 'imap', 'implicit', () => front.imapsPort],
    ['IMAP STARTTLS', 'imap', 'starttls', () => front.imapPort],
    ['POP3S', 'pop3', 'implicit', () => front.pop3sPort],
    ['POP3 STLS', 'pop3', 'starttls', () => front.pop3Port],
    ['ManageSieve STARTTLS', 'sieve', 'starttls', () => front.sievePort!],
  ] as const;
  for (const [name, protocol, tls, port] of cases) {
    test(`${name}: a logout after login, which the backend answers by closing the spliced connection`, async () => {
      const result = await endOfSession(protocol, tls, port(), true);
      assert.equal(result.error, undefined, result.error);
      assert.match(result.login ?? '', /^(l OK|\+OK|OK)/, 'the login succeeds, so the logout goes through the splice');
      assert.equal(result.end, 'close_notify');
    });
    test(`${name}: a logout before login, which mailfront answers itself`, async () => {
      const result = await endOfSession(protocol, tls, port(), false);
      assert.equal(result.error, undefined, result.error);
      assert.equal(result.end, 'close_notify');
    });
  }
});
