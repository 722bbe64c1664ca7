// TLS session resumption on a running mailfront's IMAPS listener, as the config sets it: by
// default a client resumes its session with the ticket it was given (TLS 1.3 and 1.2); after a
// reload with tls.session_tickets false, none does. With tls.session_ticket_key_file, two
// instances take each other's tickets, a reload keeps them good, and a new key (the file rotated,
// then a reload) ends the old ones; a reload with an unusable key file is refused and changes
// nothing. A stand-in directory: no login is made.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as tlsConnect } from 'node:tls';
import type { ConnectionOptions, SecureVersion } from 'node:tls';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { registerPasswords, registerSecrets, standInDirectory, parsedSuiteLog, standInConfigSections } from './front.js';
import { LineClient, freePort, makeCerts, tmpDir } from './servers/index.js';
import type { TestCerts, TmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused');

/** Whether a connection was resumed, and the last session the server gave it (every ticket is read by the close). */
interface Resumption {
  readonly reused: boolean;
  readonly session?: Buffer;
}

/**
 * IMAP over TLS from the handshake on (`options`: an IMAPS port, or the socket of a STARTTLS
 * answered), offering `session`: the greeting unless `greeted` (it came before STARTTLS), LOGOUT,
 * mailfront's close.
 */
function tlsLogout(options: ConnectionOptions, ca: Buffer, session: Buffer | undefined, greeted: boolean): Promise<Resumption> {
  return new Promise((resolve, reject) => {
    let reused = false;
    let last: Buffer | undefined;
    let text = '';
    const socket = tlsConnect({ ...options, servername: 'localhost', ca, ...(session !== undefined ? { session } : {}) });
    socket.once('secureConnect', () => {
      reused = socket.isSessionReused();
      if (greeted) socket.write('a LOGOUT\r\n');
    });
    socket.on('session', (s: Buffer) => (last = s));
    socket.on('error', reject);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      const before = text.includes('\r\n');
      text += chunk;
      if (!greeted && !before && text.includes('\r\n')) socket.write('a LOGOUT\r\n');
    });
    socket.once('close', () => {
      assert.match(text, greeted ? /^\* BYE [^\r\n]*\r\na OK / : /^\* OK [^\r\n]*\r\n\* BYE [^\r\n]*\r\na OK /);
      resolve({ reused, ...(last !== undefined ? { session: last } : {}) });
    });
  });
}

/** One IMAPS connection to `port`, offering `session`. */
function connection(port: number, ca: Buffer, maxVersion: SecureVersion, session?: Buffer): Promise<Resumption> {
  return tlsLogout({ host: '127.0.0.1', port, maxVersion }, ca, session, false);
}

/** One STARTTLS connection to `port` (greeting, STARTTLS, then TLS as connection()), offering `session`. */
async function starttlsConnection(port: number, ca: Buffer, session?: Buffer): Promise<Resumption> {
  const raw = await LineClient.connect(port);
  assert.match(await raw.readLine(), /^\* OK /);
  raw.send('s STARTTLS');
  assert.match(await raw.readLine(), /^s OK /);
  // From here the TLS socket reads the connection.
  raw.socket.removeAllListeners('data');
  return tlsLogout({ socket: raw.socket }, ca, session, true);
}

/** Whether a connection to `to` (the same port by default) resumes the session a first one to `from` was given. */
async function resumes(from: number, ca: Buffer, maxVersion: SecureVersion, to = from): Promise<boolean> {
  const first = await connection(from, ca, maxVersion);
  assert.equal(first.reused, false);
  if (first.session === undefined) return false;
  return (await connection(to, ca, maxVersion, first.session)).reused;
}

/** An IMAPS config for `port` (and an IMAP STARTTLS listener on `starttlsPort`, when given) with the stand-in directory's sections and `tls`. */
function imapsConfig(port: number, certs: TestCerts, tls: Record<string, unknown>, starttlsPort?: number): string {
  const certificate = { cert: certs.certFile, key: certs.keyFile };
  return stringify({
    log: { level: 'info' },
    listeners: [
      { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port, tls: 'implicit', certificate },
      ...(starttlsPort !== undefined ? [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: starttlsPort, tls: 'starttls', certificate }] : []),
    ],
    ...standInConfigSections(),
    tls,
  });
}

const STORES = stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1 } } } } });

describe('TLS session tickets on an IMAPS listener', () => {
  let dir: TmpDir;
  let certs: TestCerts;
  let ca: Buffer;
  let mailfront: Mailfront;
  let port = 0;
  const logs: Array<Record<string, unknown>> = [];

  let starttlsPort = 0;
  const writeConfig = (tls: Record<string, unknown>): Promise<void> => writeFile(join(dir.path, 'mailfront.yaml'), imapsConfig(port, certs, tls, starttlsPort));

  /** mailfront_tls_handshakes_total's series, by their labels as /metrics writes them. */
  const handshakes = async (): Promise<Map<string, number>> => {
    const text = await (await fetch(`http://127.0.0.1:${mailfront.httpAddress()!.port}/metrics`)).text();
    const series = new Map<string, number>();
    for (const match of text.matchAll(/^mailfront_tls_handshakes_total\{([^}]*)\} (\S+)$/gm)) series.set(match[1]!, Number(match[2]));
    return series;
  };
  /** What each series gained from `before` to now (the series that gained nothing left out). */
  const gained = async (before: Map<string, number>): Promise<Record<string, number>> => {
    const out: Record<string, number> = {};
    for (const [labels, n] of await handshakes()) if (n !== (before.get(labels) ?? 0)) out[labels] = n - (before.get(labels) ?? 0);
    return out;
  };

  before(async () => {
    dir = tmpDir('tls-session-tickets');
    certs = await makeCerts(dir.path);
    ca = await readFile(certs.caFile);
    port = await freePort();
    starttlsPort = await freePort();
    await writeFile(join(dir.path, 'stores.yaml'), STORES);
    await writeConfig({});
    mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory: standInDirectory(), processMetrics: false, logDestination: parsedSuiteLog(logs) });
  });

  after(async () => {
    await mailfront?.stop(0);
    await dir?.remove();
  });

  it('by default a client resumes its session, over TLS 1.3 and TLS 1.2; mailfront_tls_handshakes_total counts each handshake by version and resumption', async () => {
    const before = await handshakes();
    assert.equal(await resumes(port, ca, 'TLSv1.3'), true, 'TLS 1.3');
    assert.equal(await resumes(port, ca, 'TLSv1.2'), true, 'TLS 1.2');
    assert.deepEqual(await gained(before), {
      'listener="imaps",version="TLSv1.3",resumed="false"': 1,
      'listener="imaps",version="TLSv1.3",resumed="true"': 1,
      'listener="imaps",version="TLSv1.2",resumed="false"': 1,
      'listener="imaps",version="TLSv1.2",resumed="true"': 1,
    });
  });

  it('STARTTLS: a client resumes its session too, and the handshakes are counted under its listener', async () => {
    const before = await handshakes();
    const first = await starttlsConnection(starttlsPort, ca);
    assert.equal(first.reused, false);
    assert.equal((await starttlsConnection(starttlsPort, ca, first.session)).reused, true);
    assert.deepEqual(await gained(before), { 'listener="imap",version="TLSv1.3",resumed="false"': 1, 'listener="imap",version="TLSv1.3",resumed="true"': 1 });
  });

  it('after a reload with tls.session_tickets false, no client resumes', async () => {
    const first = await connection(port, ca, 'TLSv1.3');
    await writeConfig({ session_tickets: false });
    const reloaded = await mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    // A ticket from before the reload is not taken either: the contexts are new.
    assert.equal((await connection(port, ca, 'TLSv1.3', first.session)).reused, false, 'a ticket from before the reload');
    assert.equal(await resumes(port, ca, 'TLSv1.3'), false, 'TLS 1.3');
    assert.equal(await resumes(port, ca, 'TLSv1.2'), false, 'TLS 1.2');
  });
});

describe('a ticket key file shared by two instances', () => {
  let dir: TmpDir;
  let certs: TestCerts;
  let ca: Buffer;
  const instances: Array<{ mailfront: Mailfront; port: number }> = [];
  const logs: Array<Record<string, unknown>> = [];
  let keyFile = '';

  /** A new key in the file, registered as a secret in the forms a log line could show it in. */
  const writeKey = async (): Promise<void> => {
    const key = randomBytes(48);
    registerSecrets([key.toString('hex'), key.toString('base64'), key.toString('base64url')]);
    await writeFile(keyFile, key);
  };

  before(async () => {
    dir = tmpDir('tls-ticket-key');
    certs = await makeCerts(dir.path);
    ca = await readFile(certs.caFile);
    keyFile = join(dir.path, 'ticket.key');
    await writeKey();
    await writeFile(join(dir.path, 'stores.yaml'), STORES);
    for (const name of ['one', 'two']) {
      const port = await freePort();
      const config = join(dir.path, `${name}.yaml`);
      // Named relative to the config file, as an operator's /etc/mailfront would.
      await writeFile(config, imapsConfig(port, certs, { session_ticket_key_file: 'ticket.key' }));
      instances.push({ mailfront: await Mailfront.start(loadConfig(config), { directory: standInDirectory(), processMetrics: false, logDestination: parsedSuiteLog(logs) }), port });
    }
  });

  after(async () => {
    await Promise.all(instances.map((i) => i.mailfront.stop(0)));
    await dir?.remove();
  });

  const one = (): { mailfront: Mailfront; port: number } => instances[0]!;
  const two = (): { mailfront: Mailfront; port: number } => instances[1]!;

  it('a ticket from one instance resumes on the other, over TLS 1.3 and 1.2', async () => {
    for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
      assert.equal(await resumes(one().port, ca, version, two().port), true, `${version}: one to two`);
      assert.equal(await resumes(two().port, ca, version, one().port), true, `${version}: two to one`);
    }
  });

  it('a reload keeps tickets good; a rotated key, once reloaded, ends the old ones on both', async () => {
    const before = await connection(one().port, ca, 'TLSv1.3');
    const reloaded = await one().mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    assert.equal((await connection(one().port, ca, 'TLSv1.3', before.session)).reused, true, 'after a reload with the same key');
    await writeKey();
    for (const { mailfront } of instances) {
      const result = await mailfront.reload();
      assert.equal(result.ok, true, result.error);
    }
    assert.equal((await connection(one().port, ca, 'TLSv1.3', before.session)).reused, false, 'a ticket sealed with the old key');
    assert.equal((await connection(two().port, ca, 'TLSv1.3', before.session)).reused, false, 'nor on the other');
    assert.equal(await resumes(two().port, ca, 'TLSv1.3', one().port), true, 'with the new key');
  });

  it('a reload with a key file that is not a key is refused, naming the key, and the key in force stays', async () => {
    const before = await connection(one().port, ca, 'TLSv1.3');
    const key = await readFile(keyFile);
    await writeFile(keyFile, `${key.toString('base64')}\n`);
    try {
      const refused = await one().mailfront.reload();
      assert.equal(refused.ok, false);
      assert.match(String(refused.error), /tls\.session_ticket_key_file: expected a file of exactly 48 random bytes[^]*found 65 bytes, text/);
      assert.equal((await connection(one().port, ca, 'TLSv1.3', before.session)).reused, true, 'the key in force is kept');
      assert.equal(await resumes(one().port, ca, 'TLSv1.3', two().port), true, 'and still shared');
    } finally {
      await writeFile(keyFile, key);
    }
  });
});
