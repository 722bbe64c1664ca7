// `mailfront serve` out of file descriptors, for real: its open-files soft limit is lowered while
// it runs (prlimit --pid) to 3, below every descriptor it holds, so that every open(2), socket(2)
// and accept(2) fails with EMFILE whatever closes meanwhile, and raised back afterwards.
//   - A store-map failover written at the limit (temporary file and rename, as the README asks)
//     is no rejected document: the source is down (storemap.read_failed, storemap.source_failed),
//     the file is read again on a timer, and once descriptors are free the failover applies and
//     drains the old master's sessions, without another edit or a SIGHUP.
//   - A backend connect that fails with EMFILE is mailfront's own limit, not an unreachable slot:
//     the login is answered at once (not held for failover.hold_ms), the slot is not marked down
//     by the probes meanwhile, and the store's backend connects count no failure.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { registerPasswords, registerSecrets, suiteLogWriter } from './front.js';
import { LineClient, freePort, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Slapd, TmpDir } from './servers/index.js';
import { serve, stop } from '../unit/serve-process.js';
import type { Serve } from '../unit/serve-process.js';

const PASSWORD = 'Fdexhaust-pw-83c1';
registerPasswords(PASSWORD);

let slapd: Slapd;
let s1: Dovecot;
let s2: Dovecot;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'dora', password: PASSWORD, store: 'st1' }] });
  registerSecrets([slapd.bindPassword]);
  [s1, s2] = await Promise.all([startDovecot({ name: 'fd-s1', users: [{ name: 'dora', password: PASSWORD }] }), startDovecot({ name: 'fd-s2', users: [{ name: 'dora', password: PASSWORD }] })]);
});

after(async () => {
  await Promise.all([slapd?.stop(), s1?.stop(), s2?.stop()]);
});

function storesDocument(master: 's1' | 's2'): string {
  return stringify({ stores: { st1: { current_master: master, slots: { s1: { host: '127.0.0.1', imap_port: s1.imapPort }, s2: { host: '127.0.0.1', imap_port: s2.imapPort } } } } });
}

interface Instance {
  readonly serve: Serve;
  readonly dir: TmpDir;
  readonly imapPort: number;
  readonly httpPort: number;
  readonly storesFile: string;
}

/** `mailfront serve` of one plaintext IMAP listener, the store map in a watched file (st1 on s1). */
async function start(extra: Record<string, unknown>): Promise<Instance> {
  const dir = tmpDir('fd-exhaust');
  const [imapPort, httpPort] = [await freePort(), await freePort()];
  const storesFile = join(dir.path, 'stores.yaml');
  await writeFile(storesFile, storesDocument('s1'));
  await writeFile(join(dir.path, 'ldap.secret'), `${slapd.bindPassword}\n`);
  const configFile = join(dir.path, 'mailfront.yaml');
  await writeFile(
    configFile,
    stringify({
      log: { level: 'debug' },
      listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imapPort, tls: 'none', plaintext_without_tls: true }],
      directory: { urls: [slapd.url], bind_dn: slapd.bindDn, bind_password_file: 'ldap.secret', base_dn: slapd.usersDn, connect_timeout_ms: 1000, operation_timeout_ms: 2000 },
      store_map: { file: 'stores.yaml' },
      backend: { connect_timeout_ms: 1000 },
      session: { auth_failure_delay_ms: 200 },
      throttle: { enabled: false },
      http: { host: '127.0.0.1', port: httpPort },
      // No balancer to wait for: a stop closes the listeners at once (stop-unready.test.ts tests the delay).
      shutdown: { unready_delay_ms: 0 },
      health: { interval_ms: 0 },
      ...extra,
    }),
  );
  const s = serve(configFile);
  await s.logged('listener.bound');
  return { serve: s, dir, imapPort, httpPort, storesFile };
}

/** Stops the instance; its log goes to the suite's secret scan. */
async function finish(instance: Instance): Promise<void> {
  try {
    await stop(instance.serve);
  } finally {
    const write = suiteLogWriter();
    for (const line of instance.serve.lines()) write(JSON.stringify(line));
    await instance.dir.remove();
  }
}

/** Sets the open-files soft limit of process `pid` (its hard limit stays); returns the one it had. */
function setSoftNofile(pid: number, soft: number | string): string {
  const before = execFileSync('prlimit', ['--pid', String(pid), '--nofile', '--output=SOFT', '--noheadings'], { encoding: 'utf8' }).trim();
  execFileSync('prlimit', ['--pid', String(pid), `--nofile=${soft}:`]);
  return before;
}

/** Runs `body` while serve can open no descriptor at all; the limit is raised back whatever happens. */
async function withoutDescriptors(instance: Instance, body: () => Promise<void>): Promise<void> {
  const pid = instance.serve.child.pid!;
  // Below every descriptor serve holds (stdio are 0-2): a descriptor closed meanwhile frees no room.
  assert.ok(readdirSync(`/proc/${pid}/fd`).length > 3);
  const soft = setSoftNofile(pid, 3);
  try {
    await body();
  } finally {
    setSoftNofile(pid, soft);
  }
}

/** The lines from index `since` on whose event is one of `events`, waiting up to `timeoutMs` for the first. */
async function nextOf(instance: Instance, since: number, events: readonly string[], timeoutMs: number): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = instance.serve.lines().slice(since).find((l) => events.includes(String(l['event'])));
    if (found !== undefined) return found;
    if (Date.now() > deadline) assert.fail(`none of ${events.join(', ')} within ${timeoutMs} ms; log since: ${instance.serve.events().slice(since).join(', ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One sample of /metrics, or undefined. */
async function sample(instance: Instance, name: string): Promise<number | undefined> {
  const body = await (await fetch(`http://127.0.0.1:${instance.httpPort}/metrics`)).text();
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

/** Logs dora in over a new connection; the client, spliced. */
async function loggedIn(instance: Instance): Promise<LineClient> {
  const client = await LineClient.connect(instance.imapPort);
  await client.readLine();
  await client.imapOk(`LOGIN dora ${PASSWORD}`);
  return client;
}

describe('a store-map failover written while mailfront is out of descriptors', () => {
  let instance: Instance;
  before(async () => {
    instance = await start({});
  });
  after(async () => {
    await finish(instance);
  });

  test('is not rejected: the source is down until the file can be read again, then the failover applies and drains the old master, without another edit', async () => {
    const spliced = await loggedIn(instance);
    try {
      assert.equal((await nextOf(instance, 0, ['session.spliced'], 5_000))['slot'], 's1');
      const mark = instance.serve.lines().length;
      await withoutDescriptors(instance, async () => {
        const temp = `${instance.storesFile}.tmp`;
        await writeFile(temp, storesDocument('s2'));
        await rename(temp, instance.storesFile);
        const read = await nextOf(instance, mark, ['storemap.read_failed', 'storemap.rejected', 'storemap.loaded'], 10_000);
        assert.equal(read['event'], 'storemap.read_failed', JSON.stringify(read));
        assert.equal(read['level'], 'warn');
        assert.match(String(read['err']), /EMFILE \(too many open files: mailfront's own limit, RLIMIT_NOFILE/);
        const failed = await nextOf(instance, mark, ['storemap.source_failed'], 5_000);
        assert.match(String(failed['err']), /EMFILE.*read again after 1 s/);
        // A retry or two fail meanwhile, without a word more.
        await new Promise((r) => setTimeout(r, 1_500));
      });
      const loaded = await nextOf(instance, mark, ['storemap.loaded'], 15_000);
      assert.deepEqual(loaded['failovers'], [{ store: 'st1', from: 's1', to: 's2' }]);
      await nextOf(instance, mark, ['storemap.source_recovered'], 5_000);
      const since = instance.serve.lines().slice(mark).map((l) => String(l['event']));
      assert.equal(since.filter((e) => e === 'storemap.read_failed').length, 1, since.join(', '));
      assert.equal(since.filter((e) => e === 'storemap.source_failed').length, 1, since.join(', '));
      assert.ok(!since.includes('storemap.rejected'), since.join(', '));
      // The session on the demoted master is drained as after any failover.
      await nextOf(instance, mark, ['session.drained'], 5_000);
      assert.ok(await spliced.waitClosed(5_000), 'the session on s1 stayed open');
      assert.equal(await sample(instance, 'mailfront_store_map_source_up'), 1);
      assert.equal(await sample(instance, 'mailfront_store_map_last_load_success'), 1);
      const afterDrain = instance.serve.lines().length;
      (await loggedIn(instance)).close();
      assert.equal((await nextOf(instance, afterDrain, ['session.spliced'], 5_000))['slot'], 's2');
    } finally {
      spliced.close();
    }
  });
});

describe('a backend connect that fails for want of descriptors', () => {
  const HOLD_MS = 10_000;
  let instance: Instance;
  before(async () => {
    // A login's directory check is cached (no LDAP connection is needed at the limit); the probes
    // run every second (health.interval_ms's least).
    instance = await start({ failover: { hold_ms: HOLD_MS }, directory: { urls: [slapd.url], bind_dn: slapd.bindDn, bind_password_file: 'ldap.secret', base_dn: slapd.usersDn, auth_cache_ttl_ms: 60_000 }, health: { interval_ms: 1_000, timeout_ms: 1000 } });
  });
  after(async () => {
    await finish(instance);
  });

  test('is answered at once as a temporary failure, not held for the failover hold; the slot is not marked down; the store counts no connect failure', async () => {
    // Cached by the directory, and both slots seen up.
    (await loggedIn(instance)).close();
    await instance.serve.logged('slot.health', 2);
    const connectFailures = async (): Promise<number> => (await sample(instance, 'mailfront_backend_connects_total{store="st1",result="error"}')) ?? 0;
    const failuresBefore = await connectFailures();
    const client = await LineClient.connect(instance.imapPort);
    try {
      await client.readLine();
      const mark = instance.serve.lines().length;
      let answer = '';
      let tookMs = 0;
      await withoutDescriptors(instance, async () => {
        const started = Date.now();
        client.send(`a1 LOGIN dora ${PASSWORD}`);
        answer = await client.readLine(HOLD_MS + 5_000);
        tookMs = Date.now() - started;
        // Probes meanwhile fail the same way, two rounds or so.
        await new Promise((r) => setTimeout(r, 2_500));
      });
      assert.match(answer, /^a1 NO \[UNAVAILABLE\] /);
      await nextOf(instance, mark, ['session.login_failed'], 5_000);
      const lines = instance.serve.lines().slice(mark);
      assert.ok(tookMs < HOLD_MS / 2, `answered after ${tookMs} ms (failover.hold_ms ${HOLD_MS}); log: ${lines.map((l) => JSON.stringify(l)).join('\n')}`);
      assert.deepEqual(lines.filter((l) => l['event'] === 'session.backend_retry'), [], 'the login was held');
      const failed = lines.find((l) => l['event'] === 'session.login_failed');
      assert.equal(failed?.['kind'], 'local-resources', JSON.stringify(failed));
      assert.equal(failed['code'], 'LOCAL_RESOURCES_EXHAUSTED');
      assert.match(String(failed['reason']), /EMFILE, mailfront's own open-files limit is reached/);
      assert.deepEqual(lines.filter((l) => l['event'] === 'slot.health' && l['up'] === false), [], 'a slot was marked down');
      assert.equal(await connectFailures(), failuresBefore, 'counted as a connect failure of the store');
      assert.equal(await sample(instance, 'mailfront_logins_total{protocol="imap",result="local-resources"}'), 1);
      // Descriptors free again: the same connection logs in.
      client.send(`a2 LOGIN dora ${PASSWORD}`);
      assert.match((await client.imapResult('a2')).status, /^OK$/);
    } finally {
      client.close();
    }
  });
});
