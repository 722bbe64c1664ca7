/**
 * Listeners with several certificates (`certificates:`), each client given the one for the name
 * it dialled (SNI): implicit TLS and STARTTLS, IMAP, POP3 and ManageSieve, with node's TLS
 * client and openssl s_client; a reload that swaps a certificate, one that cannot use a file
 * (the error names listeners[N].certificates[M].cert, every certificate in force stays); and
 * mailfront_tls_certificate_expiry_timestamp_seconds, each certificate's notAfter, the series of
 * certificates and listeners a reload removed dropped. A real mailfront (its directory is not
 * needed: no one logs in).
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { freePort, run, tmpDir } from './servers/index.js';
import { parsedSuiteLog, registerSecrets } from './front.js';
import { ONE_SLOT_STORE_MAP } from '../unit/serve-process.js';

interface Pair {
  readonly cert: string;
  readonly key: string;
}

const METRIC = 'mailfront_tls_certificate_expiry_timestamp_seconds';
/** The directory's bind password (no directory answers here), registered for the suite's secret scan. */
const BIND_PASSWORD = 'Sni-bind-pw-5e2a7c';
registerSecrets([BIND_PASSWORD]);

/** A self-signed EC certificate for `san` (a subjectAltName), valid for `days`. */
async function makeCert(dir: string, name: string, san: string, days: number): Promise<Pair> {
  const pair = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', pair.key, '-out', pair.cert, '-days', String(days), '-subj', `/CN=${name}`, '-addext', `subjectAltName=${san}`]);
  // The private key's base64 lines: a key must never reach a log line (the suite's scan looks).
  registerSecrets(readFileSync(pair.key, 'utf8').split('\n').filter((line) => /^[A-Za-z0-9+/=]{40,}$/.test(line)));
  return pair;
}

const fingerprintOf = (file: string): string => new X509Certificate(readFileSync(file)).fingerprint256;

/** The notAfter of a certificate file as openssl prints it, in Unix seconds. */
async function notAfterOf(file: string): Promise<number> {
  const { stdout } = await run('openssl', ['x509', '-noout', '-enddate', '-in', file]);
  const date = /^notAfter=(.*)$/m.exec(stdout)?.[1] ?? '';
  const ms = Date.parse(date);
  assert.ok(Number.isFinite(ms), stdout);
  return ms / 1000;
}

/** The fingerprint a TLS handshake on `socket` (or a new connection to `port`) got, with `servername` (or no SNI). */
function handshake(target: { port: number } | { socket: Socket }, servername: string | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    const secure = tlsConnect({ ...('port' in target ? { host: '127.0.0.1', port: target.port } : { socket: target.socket }), rejectUnauthorized: false, servername: servername ?? '' }, () => {
      resolve(secure.getPeerCertificate().fingerprint256);
      secure.destroy();
    });
    secure.on('error', reject);
  });
}

/** A plain connection to `port` once `command` (STARTTLS, STLS) was answered `ok`: ready for the handshake. */
function startTls(port: number, command: string, ok: RegExp): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(port, '127.0.0.1');
    let received = '';
    let sent = false;
    const onData = (chunk: Buffer): void => {
      received += chunk.toString('latin1');
      const lines = received.split('\r\n');
      // The greeting is in once a line that ends it came (IMAP, POP3: the first; ManageSieve: "OK …").
      if (!sent && lines.slice(0, -1).some((l) => /^(\* OK|\+OK|OK)/.test(l))) {
        sent = true;
        received = '';
        socket.write(`${command}\r\n`);
      } else if (sent && lines.slice(0, -1).some((l) => ok.test(l))) {
        socket.off('data', onData);
        resolve(socket);
      }
    };
    socket.on('data', onData);
    socket.on('error', reject);
  });
}

/** The fingerprint of the certificate openssl s_client got (`-starttls` when given) asking for `servername`. */
async function sClient(port: number, servername: string, starttls?: string): Promise<string> {
  const { stdout } = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', servername, ...(starttls !== undefined ? ['-starttls', starttls] : [])], { input: '', timeoutMs: 10_000 });
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(stdout)?.[0];
  assert.ok(pem !== undefined, stdout);
  return new X509Certificate(pem).fingerprint256;
}

describe('listeners with certificates chosen by SNI', () => {
  const dir = tmpDir('sni');
  const logs: Array<Record<string, unknown>> = [];
  let mailfront: Mailfront;
  let a: Pair; // mail.example.com: the default
  let b: Pair; // imap.example.org, *.example.net
  let c: Pair; // pop.example.com, sieve.example.com
  const ports: Record<string, number> = {};
  let configFile: string;
  let listeners: Array<Record<string, unknown>>;
  let httpPort: number;

  /** The config with `listeners` as they are now. */
  const writeConfig = (): void => {
    writeFileSync(
      configFile,
      stringify({
        listeners,
        directory: { urls: ['ldap://127.0.0.1:9'], bind_dn: 'cn=x', bind_password: BIND_PASSWORD, base_dn: 'dc=x' },
        store_map: { file: join(dir.path, 'stores.yaml'), watch: false },
        health: { interval_ms: 0 },
        http: { host: '127.0.0.1', port: httpPort },
      }),
    );
  };

  /** The expiry series: certificate file by listener, with its value. */
  const series = async (): Promise<Map<string, number>> => {
    const body = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const found = new Map<string, number>();
    for (const m of body.matchAll(new RegExp(`^${METRIC}\\{([^}]*)\\} (\\S+)$`, 'gm'))) {
      const labels = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
      found.set(`${labels['listener']} ${labels['certificate']}`, Number(m[2]));
    }
    assert.match(body, new RegExp(`^# TYPE ${METRIC} gauge$`, 'm'));
    return found;
  };

  before(async () => {
    [a, b, c] = await Promise.all([
      makeCert(dir.path, 'a', 'DNS:mail.example.com', 40),
      makeCert(dir.path, 'b', 'DNS:imap.example.org,DNS:*.example.net', 50),
      makeCert(dir.path, 'c', 'DNS:pop.example.com,DNS:sieve.example.com', 60),
    ]);
    for (const name of ['imaps', 'imap', 'pop3', 'pop3s', 'sieve']) ports[name] = await freePort();
    httpPort = await freePort();
    writeFileSync(join(dir.path, 'stores.yaml'), ONE_SLOT_STORE_MAP);
    const certificates = [a, b, c];
    listeners = [
      { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port: ports['imaps'], tls: 'implicit', certificates },
      { name: 'imap', protocol: 'imap', host: '127.0.0.1', port: ports['imap'], tls: 'starttls', certificates },
      { name: 'pop3', protocol: 'pop3', host: '127.0.0.1', port: ports['pop3'], tls: 'starttls', certificates },
      { name: 'pop3s', protocol: 'pop3', host: '127.0.0.1', port: ports['pop3s'], tls: 'implicit', certificate: a },
      { name: 'sieve', protocol: 'managesieve', host: '127.0.0.1', port: ports['sieve'], tls: 'starttls', certificates },
    ];
    configFile = join(dir.path, 'mailfront.yaml');
    writeConfig();
    mailfront = await Mailfront.start(loadConfig(configFile), { logDestination: parsedSuiteLog(logs), processMetrics: false });
  });

  after(async () => {
    await mailfront?.stop(0);
    await dir.remove();
  });

  it('implicit TLS: the certificate for the name asked, a one-label wildcard, the first for no SNI or another name', async () => {
    const port = ports['imaps']!;
    assert.equal(await handshake({ port }, 'imap.example.org'), fingerprintOf(b.cert));
    assert.equal(await handshake({ port }, 'Imap.Example.Org'), fingerprintOf(b.cert), 'any case');
    assert.equal(await handshake({ port }, 'pop.example.com'), fingerprintOf(c.cert));
    assert.equal(await handshake({ port }, 'any.example.net'), fingerprintOf(b.cert), 'wildcard');
    assert.equal(await handshake({ port }, 'a.b.example.net'), fingerprintOf(a.cert), 'a wildcard covers one label');
    assert.equal(await handshake({ port }, undefined), fingerprintOf(a.cert), 'no SNI');
    assert.equal(await handshake({ port }, 'elsewhere.test'), fingerprintOf(a.cert), 'a name no certificate is for');
    assert.equal(await sClient(port, 'sieve.example.com'), fingerprintOf(c.cert), 'openssl s_client');
    // The listener's log line names every certificate and what it is for.
    const bound = logs.find((l) => l['event'] === 'listener.bound' && l['listener'] === 'imaps');
    assert.deepEqual((bound?.['certificates'] as Array<Record<string, unknown>>).map((x) => [x['file'], x['names']]), [[a.cert, ['mail.example.com']], [b.cert, ['imap.example.org', '*.example.net']], [c.cert, ['pop.example.com', 'sieve.example.com']]]);
  });

  it('STARTTLS: the name in the ClientHello after STARTTLS (IMAP), STLS (POP3) and ManageSieve', async () => {
    assert.equal(await handshake({ socket: await startTls(ports['imap']!, 'a STARTTLS', /^a OK/) }, 'imap.example.org'), fingerprintOf(b.cert));
    assert.equal(await handshake({ socket: await startTls(ports['imap']!, 'a STARTTLS', /^a OK/) }, undefined), fingerprintOf(a.cert));
    assert.equal(await handshake({ socket: await startTls(ports['pop3']!, 'STLS', /^\+OK/) }, 'pop.example.com'), fingerprintOf(c.cert));
    assert.equal(await handshake({ socket: await startTls(ports['pop3']!, 'STLS', /^\+OK/) }, 'x.example.net'), fingerprintOf(b.cert));
    assert.equal(await handshake({ socket: await startTls(ports['sieve']!, 'STARTTLS', /^OK/) }, 'sieve.example.com'), fingerprintOf(c.cert));
    assert.equal(await sClient(ports['imap']!, 'imap.example.org', 'imap'), fingerprintOf(b.cert));
    assert.equal(await sClient(ports['pop3']!, 'pop.example.com', 'pop3'), fingerprintOf(c.cert));
    assert.equal(await sClient(ports['sieve']!, 'mail.example.com', 'sieve'), fingerprintOf(a.cert));
  });

  it('the expiry metric: each certificate in force by listener and file, its value the notAfter', async () => {
    const found = await series();
    const [na, nb, nc] = await Promise.all([a, b, c].map((p) => notAfterOf(p.cert)));
    const expected = new Map<string, number>();
    for (const listener of ['imaps', 'imap', 'pop3', 'sieve']) {
      expected.set(`${listener} ${a.cert}`, na!);
      expected.set(`${listener} ${b.cert}`, nb!);
      expected.set(`${listener} ${c.cert}`, nc!);
    }
    expected.set(`pop3s ${a.cert}`, na!);
    assert.deepEqual(found, expected);
  });

  it('a reload re-reads every file: a renewed certificate is served for its names; one that cannot be used keeps them all, named by its path', async () => {
    const renewed = await makeCert(dir.path, 'b-renewed', 'DNS:imap.example.org,DNS:*.example.net', 90);
    copyFileSync(renewed.cert, b.cert);
    copyFileSync(renewed.key, b.key);
    const reloaded = await mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    assert.equal(await handshake({ port: ports['imaps']! }, 'imap.example.org'), fingerprintOf(renewed.cert));
    assert.equal(await handshake({ socket: await startTls(ports['imap']!, 'a STARTTLS', /^a OK/) }, 'y.example.net'), fingerprintOf(renewed.cert));
    assert.equal((await series()).get(`imaps ${b.cert}`), await notAfterOf(renewed.cert), 'the metric follows');
    const reloadedLines = logs.filter((l) => l['event'] === 'listener.certificate_reloaded' && l['listener'] === 'imaps');
    assert.deepEqual(reloadedLines.slice(-3).map((l) => l['file']), [a.cert, b.cert, c.cert]);

    // The third certificate's file broken: the reload says which, and all three still serve.
    const good = readFileSync(c.cert);
    const goodNotAfter = await notAfterOf(c.cert);
    writeFileSync(c.cert, 'not a certificate\n');
    try {
      const broken = await mailfront.reload();
      assert.equal(broken.ok, false);
      assert.match(broken.error ?? '', /(^|; )listeners\[0\] \("imaps"\)\.certificates\[2\]\.cert: cannot use certificate \S+c\.crt with key \S+c\.key: not a PEM certificate/);
      assert.match(broken.error ?? '', /listeners\[4\] \("sieve"\)\.certificates\[2\]\.cert: /);
      assert.equal(await handshake({ port: ports['imaps']! }, 'pop.example.com'), new X509Certificate(good).fingerprint256);
      assert.equal(await handshake({ port: ports['imaps']! }, 'imap.example.org'), fingerprintOf(renewed.cert));
      assert.equal((await series()).get(`imaps ${c.cert}`), goodNotAfter, 'its series stays');
    } finally {
      writeFileSync(c.cert, good);
    }
  });

  it('a reload that drops a certificate or a listener drops their series', async () => {
    listeners = listeners.filter((l) => l['name'] !== 'sieve').map((l) => (l['name'] === 'imaps' ? { ...l, certificates: [a, b] } : l));
    writeConfig();
    const reloaded = await mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    const found = await series();
    assert.ok(found.has(`imaps ${a.cert}`) && found.has(`imaps ${b.cert}`));
    assert.ok(!found.has(`imaps ${c.cert}`), 'the certificate the listener no longer has');
    assert.ok(![...found.keys()].some((k) => k.startsWith('sieve ')), 'the listener removed');
    assert.equal(await handshake({ port: ports['imaps']! }, 'pop.example.com'), fingerprintOf(a.cert), 'its names go to the default');
    // From one certificate to several and back, in place.
    listeners = listeners.map((l) => (l['name'] === 'pop3s' ? { ...l, certificate: undefined, certificates: [a, c] } : l));
    writeConfig();
    assert.equal((await mailfront.reload()).ok, true);
    assert.equal(await handshake({ port: ports['pop3s']! }, 'pop.example.com'), fingerprintOf(c.cert));
    assert.ok((await series()).has(`pop3s ${c.cert}`));
  });
});
