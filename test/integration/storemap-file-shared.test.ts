/**
 * `mailfront serve` processes sharing one store-map file, with real slapd and Dovecot. Failovers
 * asked of two instances at once are all kept: the file's lock makes their writes take turns
 * (a runbook failing 10 stores over through both kept 8 of 10 before: the later rename dropped
 * the earlier's change, both answered 200, and the instance that answered first moved its store
 * back at its next read). A failover answered 200 has its log lines (admin.failover,
 * storemap.failover_written) written before the answer: a kill right after it lost them
 * (4 of 5 in the rv-crash review), as pino batches lines for up to 200 ms.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { freePort, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Slapd, TmpDir } from './servers/index.js';
import { registerPasswords, registerSecrets, suiteLogWriter } from './front.js';

const PASSWORD = 'Shared-map-pw-71c4';
const TOKEN = 'shared-map-admin-token-5d02e9';
const STORES = 10;
const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

let slapd: Slapd;
let dovecot: Dovecot;
let dir: TmpDir;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'shared1', password: PASSWORD, store: 'st0' }] });
  dovecot = await startDovecot({ name: 'shared', users: [{ name: 'shared1', password: PASSWORD }] });
  dir = tmpDir('storemap-shared');
  writeFileSync(join(dir.path, 'ldap.secret'), `${slapd.bindPassword}\n`);
  registerSecrets([slapd.bindPassword, TOKEN]);
  registerPasswords(PASSWORD);
});
after(async () => {
  await Promise.all([slapd?.stop(), dovecot?.stop(), dir?.remove()]);
});

interface Serve {
  readonly child: ChildProcess;
  readonly httpPort: number;
  readonly logFile: string;
  readonly exited: Promise<unknown>;
}

/** Writes the store map: stores st0..st9, each with slots aN and bN (both on the one Dovecot), on aN. */
function writeStores(file: string): void {
  const stores: Record<string, unknown> = {};
  for (let n = 0; n < STORES; n++) stores[`st${n}`] = { current_master: `a${n}`, preferred_master: `a${n}`, slots: { [`a${n}`]: { host: '127.0.0.1', imap_port: dovecot.imapPort }, [`b${n}`]: { host: '127.0.0.1', imap_port: dovecot.imapPort } } };
  writeFileSync(file, `# the operator's comment\n${stringify({ stores })}`);
}

/** Starts `mailfront serve` on `storesFile`, its stdout and stderr appended to NAME.log; resolves once /readyz says 200. */
async function serve(name: string, storesFile: string): Promise<Serve> {
  const httpPort = await freePort();
  const file = join(dir.path, `${name}.yaml`);
  writeFileSync(
    file,
    stringify({
      log: { level: 'info' },
      listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: await freePort(), tls: 'none', plaintext_without_tls: true }],
      http: { host: '127.0.0.1', port: httpPort },
      admin: { token: TOKEN },
      directory: { urls: [slapd.url], bind_dn: slapd.bindDn, bind_password_file: 'ldap.secret', base_dn: slapd.usersDn, store_attribute: 'mailStore', connect_timeout_ms: 1000, operation_timeout_ms: 2000 },
      store_map: { file: storesFile },
      backend: { login_mode: 'replay' },
      health: { interval_ms: 0 },
      throttle: { enabled: false },
      shutdown: { unready_delay_ms: 0, drain_timeout_ms: 1_000 },
    }),
  );
  const logFile = join(dir.path, `${name}.log`);
  const out = openSync(logFile, 'a');
  const child = spawn(process.execPath, ['--enable-source-maps', CLI, 'serve', '-c', file], { stdio: ['ignore', out, out] });
  closeSync(out);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const deadline = Date.now() + 15_000;
  for (;;) {
    const status = await fetch(`http://127.0.0.1:${httpPort}/readyz`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.status, () => 0);
    if (status === 200) break;
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${name} did not become ready: ${readFileSync(logFile, 'utf8')}`);
    await sleep(100);
  }
  return { child, httpPort, logFile, exited };
}

/** Kills what is left of `s` and hands its log to the suite's secret scan. */
async function cleanUp(s: Serve | undefined): Promise<void> {
  if (s === undefined) return;
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
  await s.exited;
  const write = suiteLogWriter();
  for (const line of readFileSync(s.logFile, 'utf8').split('\n')) if (line !== '') write(line);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function logLines(file: string): Array<Record<string, unknown>> {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{') && l.endsWith('}'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function failover(s: Serve, store: string, slot: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${s.httpPort}/api/stores/${store}/failover`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ slot }) });
  return { status: response.status, body: await response.text() };
}

async function mastersInForce(s: Serve): Promise<Record<string, string>> {
  const { stores } = (await (await fetch(`http://127.0.0.1:${s.httpPort}/api/stores`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { stores: Array<{ store: string; currentMaster: string }> };
  return Object.fromEntries(stores.map((s) => [s.store, s.currentMaster]));
}

function mastersInFile(file: string): Record<string, string> {
  const { stores } = parse(readFileSync(file, 'utf8')) as { stores: Record<string, { current_master: string }> };
  return Object.fromEntries(Object.entries(stores).map(([name, store]) => [name, store.current_master]));
}

test('failovers of ten stores asked of two instances sharing the store-map file at once are all kept, and both instances follow them', async () => {
  const storesFile = join(dir.path, 'shared.yaml');
  writeStores(storesFile);
  let a: Serve | undefined;
  let b: Serve | undefined;
  try {
    [a, b] = await Promise.all([serve('shared-a', storesFile), serve('shared-b', storesFile)]);
    const instances = [a, b];
    for (const [round, prefix] of ['b', 'a', 'b', 'a', 'b', 'a'].entries()) {
      const want = Object.fromEntries(Array.from({ length: STORES }, (_, n) => [`st${n}`, `${prefix}${n}`]));
      const answers = await Promise.all(Array.from({ length: STORES }, (_, n) => failover(instances[n % 2]!, `st${n}`, `${prefix}${n}`)));
      assert.deepEqual(answers.filter((r) => r.status !== 200), [], `round ${round}`);
      assert.deepEqual(mastersInFile(storesFile), want, `round ${round}: every failover answered 200 is in the file`);
      // Each instance reads the other's writes (its watch, 100 ms after the event).
      for (const s of instances) {
        const by = Date.now() + 5_000;
        let inForce = await mastersInForce(s);
        while (JSON.stringify(inForce) !== JSON.stringify(want) && Date.now() < by) {
          await sleep(100);
          inForce = await mastersInForce(s);
        }
        assert.deepEqual(inForce, want, `round ${round}: ${s.logFile} has every failover in force`);
      }
    }
    assert.match(readFileSync(storesFile, 'utf8'), /^# the operator's comment\n/);
    assert.deepEqual(readdirSync(dir.path).filter((name) => name.startsWith('.shared.yaml') && name !== '.shared.yaml.written'), [], 'no lock or temporary file is left');
    for (const s of instances) assert.deepEqual(logLines(s.logFile).filter((l) => l['event'] === 'storemap.change_undone'), [], `${s.logFile}: no change was undone`);
  } finally {
    await Promise.all([cleanUp(a), cleanUp(b)]);
  }
});

test("a failover's log lines are written before its 200: an instance killed as the answer arrives has them", async () => {
  const storesFile = join(dir.path, 'killed.yaml');
  writeStores(storesFile);
  for (const [round, slot] of ['b0', 'a0', 'b0'].entries()) {
    let s: Serve | undefined;
    try {
      s = await serve(`killed-${round}`, storesFile);
      const answer = await failover(s, 'st0', slot);
      // As an OOM kill or a node's loss would, the moment the answer is read.
      s.child.kill('SIGKILL');
      await s.exited;
      assert.equal(answer.status, 200, answer.body);
      const lines = logLines(s.logFile);
      assert.ok(
        lines.some((l) => l['event'] === 'admin.failover' && l['store'] === 'st0' && l['slot'] === slot),
        `round ${round}: admin.failover is in the log`,
      );
      assert.ok(
        lines.some((l) => l['event'] === 'storemap.failover_written' && l['store'] === 'st0' && l['to'] === slot),
        `round ${round}: storemap.failover_written is in the log`,
      );
      assert.equal(mastersInFile(storesFile)['st0'], slot);
    } finally {
      await cleanUp(s);
    }
  }
});
