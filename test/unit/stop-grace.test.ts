// A stop takes up to shutdown.unready_delay_ms + shutdown.drain_timeout_ms + the BYEs spread over
// failover.drain_spread_ms + 2 s to close + 5 s for the log's last lines; the shipped systemd unit and compose file give it 30 s before they kill
// it. The README says so, but nothing checked either: an operator who raised drain_timeout_ms to
// 30 s had the drain killed by the service manager with no word from check-config, and a change
// of a default or of the units could have left them below the default stop.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { DEFAULT_UNREADY_DELAY_MS, SHIPPED_STOP_GRACE_MS, configWarnings, stopTakesAtMostMs } from '../../src/config/schema.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const CLI = join(ROOT, 'dist/src/cli/main.js');

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mf-stop-grace-'));
  await writeFile(join(dir, 'stores.yaml'), 'stores:\n  a:\n    current_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 2001 }\n');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A duration of systemd's or compose's form ("30s", "1m30s", "90") in milliseconds. */
function durationMs(text: string): number {
  const parts = [...text.matchAll(/(\d+)\s*(min|m|s|ms)?/g)];
  assert.ok(parts.length > 0 && parts.map((p) => p[0]).join('') === text.replace(/\s+/g, ''), `a duration: ${text}`);
  return parts.reduce((sum, [, n, unit]) => sum + Number(n) * (unit === 'ms' ? 1 : unit === 'm' || unit === 'min' ? 60_000 : 1_000), 0);
}

test('the shipped systemd unit and compose file give a stop the time the code assumes, and more than a stop with the defaults takes', async () => {
  const unit = await readFile(join(ROOT, 'deploy/mailfront.service'), 'utf8');
  const compose = await readFile(join(ROOT, 'docker/compose.yaml'), 'utf8');
  const timeoutStop = /^TimeoutStopSec=(.+)$/m.exec(unit)?.[1];
  const grace = /^\s*stop_grace_period:\s*(\S+)\s*$/m.exec(compose)?.[1];
  assert.ok(timeoutStop !== undefined, 'deploy/mailfront.service sets TimeoutStopSec');
  assert.ok(grace !== undefined, 'docker/compose.yaml sets stop_grace_period');
  assert.equal(durationMs(timeoutStop), SHIPPED_STOP_GRACE_MS);
  assert.equal(durationMs(grace), SHIPPED_STOP_GRACE_MS);
  const byDefault = stopTakesAtMostMs({ shutdown: { unreadyDelayMs: DEFAULT_UNREADY_DELAY_MS, drainTimeoutMs: 10_000 }, failover: { drainSpreadMs: 2_000 }, http: {} });
  assert.equal(byDefault, 24_000);
  // Without an HTTP listener there is no unready delay (nothing reads /readyz).
  assert.equal(stopTakesAtMostMs({ shutdown: { unreadyDelayMs: DEFAULT_UNREADY_DELAY_MS, drainTimeoutMs: 10_000 }, failover: { drainSpreadMs: 2_000 } }), 19_000);
  assert.ok(byDefault + 5_000 <= SHIPPED_STOP_GRACE_MS, 'some room is left for the process to exit');
});

test('configWarnings names the shutdown key when a stop may outlast the shipped grace time, and not below it', () => {
  const session = { preauthTimeoutMs: 60_000 };
  const at = (unreadyDelayMs: number, drainTimeoutMs: number, drainSpreadMs = 2_000, http: object | null = { host: '127.0.0.1', port: 9143 }) =>
    configWarnings({ failover: { holdMs: 15_000, drainSpreadMs }, session, shutdown: { unreadyDelayMs, drainTimeoutMs }, ...(http !== null ? { http } : {}) } as Parameters<typeof configWarnings>[0]).filter((w) => w.event === 'config.stop_exceeds_shipped_grace');
  assert.deepEqual(at(5_000, 10_000), []);
  assert.deepEqual(at(5_000, 15_999), []);
  const long = at(5_000, 16_000);
  assert.equal(long.length, 1);
  assert.equal(long[0]!.path, 'shutdown.drain_timeout_ms');
  assert.match(long[0]!.text, /^a stop may take up to 30 s \(shutdown\.unready_delay_ms 5000 \+ shutdown\.drain_timeout_ms 16000 \+ failover\.drain_spread_ms 2000 \+ 7 s to close and write the log\), and the shipped systemd unit's TimeoutStopSec and compose's stop_grace_period are 30 s: raise them above 35 s/);
  assert.equal(at(60_000, 10_000)[0]?.path, 'shutdown.unready_delay_ms');
  assert.equal(at(5_000, 10_000, 30_000)[0]?.path, 'failover.drain_spread_ms');
  // No HTTP listener, no unready delay: 20 s of drain is 29 s in all, and a long unready delay is nothing.
  assert.deepEqual(at(5_000, 20_000, 2_000, null), []);
  assert.deepEqual(at(60_000, 10_000, 2_000, null), []);
  assert.match(at(5_000, 21_000, 2_000, null)[0]?.text ?? '', /^a stop may take up to 30 s \(shutdown\.drain_timeout_ms 21000 \+ failover\.drain_spread_ms 2000 \+ 7 s/);
});

test('check-config prints the warning and exits 0', async () => {
  const file = join(dir, 'long-drain.yaml');
  await writeFile(
    file,
    'listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, plaintext_without_tls: true }\ndirectory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nshutdown: { drain_timeout_ms: 60000 }\n',
  );
  const result = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
  assert.equal(result.code, 0, result.stderr);
  // This config has no http section: no unready delay counted.
  assert.match(result.stdout, /\nwarning: a stop may take up to 69 s \(shutdown\.drain_timeout_ms 60000 [^\n]*raise them above 74 s, or the service manager kills the drain\n$/);
});
