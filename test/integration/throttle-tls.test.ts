/**
 * The throttle against a redis-server that speaks only TLS, with a certificate from the suite's
 * private test CA and asking for client certificates (Redis's default tls-auth-clients yes):
 * throttle.redis.ca_file, cert_file and key_file let the fleet share counters there; a file that
 * cannot be read leaves local counters answering, with a warning that names its config key, also
 * when it went missing after the first connection.
 */
import assert from 'node:assert/strict';
import { copyFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createClient } from '@redis/client';
import { pino } from 'pino';
import { Throttle } from '../../src/auth/throttle.js';
import type { LoginAttempt } from '../../src/auth/throttle.js';
import type { ThrottleConfig, ThrottleRedisConfig } from '../../src/auth/throttle-config.js';
import { freePort, makeCerts, run, startRedis, tmpDir } from './servers/index.js';
import type { Redis, TestCerts, TmpDir } from './servers/index.js';

const TIMEOUT_MS = 400;
const RETRY_MS = 200;

interface ClientCerts {
  /** The CA Redis checks client certificates against (not the one of its own certificate). */
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

/** A throwaway client CA and a client certificate it signed (clientAuth), made with the openssl CLI. */
async function makeClientCerts(dir: string): Promise<ClientCerts> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const f = (name: string): string => join(dir, name);
  await run('openssl', ['req', '-x509', ...ec, '-keyout', f('client-ca.key'), '-out', f('client-ca.crt'), '-days', '2', '-subj', '/O=mailfront tests/CN=mailfront test client CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await run('openssl', ['req', '-new', ...ec, '-keyout', f('client.key'), '-out', f('client.csr'), '-subj', '/O=mailfront tests/CN=mailfront']);
  await writeFile(f('client.ext'), 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyAgreement\nextendedKeyUsage = clientAuth\n');
  await run('openssl', ['x509', '-req', '-in', f('client.csr'), '-CA', f('client-ca.crt'), '-CAkey', f('client-ca.key'), '-set_serial', '1', '-days', '2', '-sha256', '-extfile', f('client.ext'), '-out', f('client.crt')]);
  return { caFile: f('client-ca.crt'), certFile: f('client.crt'), keyFile: f('client.key') };
}

let dir: TmpDir;
let server: TestCerts;
let client: ClientCerts;
let redis: Redis;
let tlsPort: number;
const open: Throttle[] = [];

before(async () => {
  dir = tmpDir('redis-tls-certs');
  server = await makeCerts(dir.path);
  client = await makeClientCerts(dir.path);
  tlsPort = await freePort();
  redis = await startRedis({
    args: ['--tls-port', String(tlsPort), '--tls-cert-file', server.certFile, '--tls-key-file', server.keyFile, '--tls-ca-cert-file', client.caFile, '--tls-auth-clients', 'yes'],
  });
});

after(async () => {
  await Promise.all(open.map((t) => t.close()));
  await redis?.stop();
  await dir?.remove();
});

function instance(redisConfig: ThrottleRedisConfig): { throttle: Throttle; lines: Record<string, unknown>[] } {
  const config: ThrottleConfig = {
    enabled: true,
    baseDelayMs: 100,
    maxDelayMs: 1_600,
    failuresPerUser: 3,
    failuresPerAddress: 8,
    failureWindowMs: 60_000,
    refusalMs: 30_000,
    maxTrackedSubjects: 10_000,
    redis: redisConfig,
  };
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const throttle = Throttle.fromConfig(config, log, { retryIntervalMs: RETRY_MS });
  open.push(throttle);
  return { throttle, lines };
}

const from = (user: string, address: string): LoginAttempt => ({ user, address, trusted: false });

function downReasons(lines: readonly Record<string, unknown>[]): string[] {
  return lines.filter((l) => l['event'] === 'throttle.redis_state' && l['state'] === 'down').map((l) => String(l['reason']));
}

describe('throttle counters shared through a TLS Redis', () => {
  test('rediss:// with ca_file, cert_file and key_file: two instances share counters with a Redis on a private CA that asks for client certificates', async () => {
    const tls = { url: `rediss://localhost:${tlsPort}`, keyPrefix: 'tls1:', timeoutMs: TIMEOUT_MS, caFile: server.caFile, certFile: client.certFile, keyFile: client.keyFile };
    const a = instance(tls);
    const b = instance(tls);
    await a.throttle.ready();
    await b.throttle.ready();
    assert.equal(a.throttle.sharing, 'up', JSON.stringify(downReasons(a.lines)));
    assert.equal(b.throttle.sharing, 'up', JSON.stringify(downReasons(b.lines)));
    for (let i = 0; i < 3; i++) await a.throttle.recordFailure(from('kim', '192.0.2.40'), `Wrong-tls-${i}`);
    assert.equal((await b.throttle.check(from('kim', '198.51.100.40'))).refused, true, 'B sees A\'s failures through Redis');
  });

  test('without the client certificate Redis refuses the handshake: local counters answer, and the warning says why', async () => {
    const a = instance({ url: `rediss://localhost:${tlsPort}`, keyPrefix: 'tls2:', timeoutMs: TIMEOUT_MS, caFile: server.caFile });
    await a.throttle.ready();
    assert.equal(a.throttle.sharing, 'down');
    assert.equal(downReasons(a.lines).length, 1);
  });

  test('a ca_file that cannot be read: local counters answer, the warning names the config key and the file, and a later attempt reads it again', async () => {
    const missing = join(dir.path, 'later-ca.crt');
    const a = instance({ url: `rediss://localhost:${tlsPort}`, keyPrefix: 'tls3:', timeoutMs: TIMEOUT_MS, caFile: missing, certFile: client.certFile, keyFile: client.keyFile });
    await a.throttle.ready();
    assert.equal(a.throttle.sharing, 'down');
    assert.deepEqual(downReasons(a.lines), [`throttle.redis.ca_file: cannot read ${missing}: ENOENT`]);
    assert.equal((await a.throttle.check(from('lee', '192.0.2.41'))).refused, false);
    await copyFile(server.caFile, missing);
    const sharing = (): string => a.throttle.sharing;
    const deadline = Date.now() + 5_000;
    while (sharing() !== 'up' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(sharing(), 'up');
  });

  test('a key_file gone after the first connection: once the connection is lost, a second warning names it (and no more for each retry); back: shared again', async () => {
    const keyFile = join(dir.path, 'renewed.key');
    await copyFile(client.keyFile, keyFile);
    const a = instance({ url: `rediss://localhost:${tlsPort}`, keyPrefix: 'tls4:', timeoutMs: TIMEOUT_MS, caFile: server.caFile, certFile: client.certFile, keyFile });
    await a.throttle.ready();
    assert.equal(a.throttle.sharing, 'up', JSON.stringify(downReasons(a.lines)));
    await rename(keyFile, `${keyFile}.gone`);
    // Redis drops the connection (as a restart of it would): the next attempt reads the files.
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await raw.sendCommand(['CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes']);
    } finally {
      raw.destroy();
    }
    const named = `throttle.redis.key_file: cannot read ${keyFile}: ENOENT`;
    const deadline = Date.now() + 5_000;
    while (!downReasons(a.lines).includes(named) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(a.throttle.sharing, 'down');
    // A few more attempts, each failing on the same file.
    await new Promise((r) => setTimeout(r, 4 * RETRY_MS));
    const reasons = downReasons(a.lines);
    assert.equal(reasons.length, 2, JSON.stringify(reasons));
    assert.equal(reasons[1], named);
    await rename(`${keyFile}.gone`, keyFile);
    const back = Date.now() + 5_000;
    while (a.throttle.sharing !== 'up' && Date.now() < back) await new Promise((r) => setTimeout(r, 20));
    assert.equal(a.throttle.sharing, 'up');
  });
});
