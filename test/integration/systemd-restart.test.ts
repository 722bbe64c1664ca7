// deploy/mailfront.service keeps restarting while what check-config needs at boot is not there
// yet (an LDAP store map whose directory refuses connections): systemd's start limit must not
// leave it stopped for good.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const UNIT = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../../deploy/mailfront.service'), 'utf8');

/** The value of `key` in `section` of the unit, if set. */
function setting(section: string, key: string): string | undefined {
  const body = UNIT.split(/^\[/m).find((s) => s.startsWith(`${section}]`)) ?? '';
  return new RegExp(`^${key}=(.*)$`, 'm').exec(body)?.[1]?.trim();
}

/** Seconds in a systemd time span as the unit writes them ("2s", "30s", "5min", "0"). */
function seconds(span: string): number {
  const m = /^(\d+)(s|min)?$/.exec(span);
  assert.ok(m, `a time span systemd understands: ${span}`);
  return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
}

test('the unit restarts a failed start for as long as it fails: no start limit it could reach', () => {
  assert.equal(setting('Service', 'Restart'), 'on-failure');
  // systemd's defaults: DefaultStartLimitIntervalSec=10s, DefaultStartLimitBurst=5.
  const interval = seconds(setting('Unit', 'StartLimitIntervalSec') ?? '10s');
  const burst = Number(setting('Unit', 'StartLimitBurst') ?? '5');
  const restartEvery = seconds(setting('Service', 'RestartSec') ?? '0');
  // Failing starts come every RestartSec at most (check-config fails at once): more than `burst`
  // of them within `interval` puts the unit in start-limit-hit, where it stays.
  assert.ok(interval === 0 || burst * restartEvery > interval, `${burst} starts in ${interval} s, one every ${restartEvery} s: the limit is reached`);
  // The setting belongs to [Unit]: under [Service] systemd ignores it (with a warning).
  assert.equal(setting('Service', 'StartLimitIntervalSec'), undefined);
});

test('the unit restarts mailfront when a reload\'s SIGHUP ends it before node runs its code', () => {
  // `systemctl start mailfront; systemctl reload mailfront`: with Type=simple the SIGHUP can come
  // while node starts up, when its default action still ends the process, and systemd counts
  // death by SIGHUP as clean: Restart=on-failure alone leaves the unit stopped.
  const forced = (setting('Service', 'RestartForceExitStatus') ?? '').split(/\s+/);
  assert.ok(forced.includes('SIGHUP') || forced.includes('HUP'), `RestartForceExitStatus=${forced.join(' ')}`);
});
