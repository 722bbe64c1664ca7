// What a user is told of the directory's password policy warnings (directory.password_policy as a
// mapping: expiring_alert, grace_alert, alert_interval_ms): the config's checks, each naming its
// path and what was expected, and PasswordAlerts: the texts with their placeholders, an expiring
// password told at most once per interval per entry, a grace login every time, '' telling nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_EXPIRING_ALERT, DEFAULT_GRACE_ALERT, DEFAULT_PASSWORD_ALERTS, PasswordAlerts } from '../../src/auth/password-policy.js';
import type { PasswordAlertsConfig } from '../../src/auth/password-policy.js';
import { readConfig } from '../../src/config/schema.js';
import type { Config } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';

/** A minimal valid config whose directory.password_policy is `policy` (absent: not written): the config read, and its issues as "path: expected …, found …". */
function read(policy?: unknown): { readonly config: Config; readonly issues: string[] } {
  const doc = {
    listeners: [{ protocol: 'imap', host: '127.0.0.1', port: 1143, tls: 'none', plaintext_without_tls: true }],
    directory: { urls: ['ldap://127.0.0.1:389'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x', ...(policy !== undefined ? { password_policy: policy } : {}) },
    store_map: { file: '/nonexistent/stores.yaml' },
  };
  const issues = new IssueList();
  const config = readConfig(doc, '/nonexistent/mailfront.yaml', (p) => p, issues);
  return { config, issues: issues.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`) };
}

const EXPECTED_EXPIRING = 'a text of printable ASCII (IMAP\'s response text is 7-bit: no CR, LF, NUL or other control character) of at most 300 characters, whose only placeholders are {left}, {days} and {hours}, or "" to tell nothing';
const EXPECTED_GRACE = 'a text of printable ASCII (IMAP\'s response text is 7-bit: no CR, LF, NUL or other control character) of at most 300 characters, whose only placeholder is {grace}, or "" to tell nothing';

test('directory.password_policy: true (the default) and a mapping are on with alerts; false is off', () => {
  for (const policy of [undefined, true]) {
    const { config, issues } = read(policy);
    assert.deepEqual(issues, []);
    assert.equal(config.directory.passwordPolicy, true);
    assert.deepEqual(config.directory.passwordAlerts, DEFAULT_PASSWORD_ALERTS);
  }
  const off = read(false);
  assert.deepEqual(off.issues, []);
  assert.equal(off.config.directory.passwordPolicy, false);
  const mapped = read({ expiring_alert: 'Change it at https://pw.example.org/ within {days} days ({hours} h).', grace_alert: '', alert_interval_ms: 0 });
  assert.deepEqual(mapped.issues, []);
  assert.equal(mapped.config.directory.passwordPolicy, true);
  assert.deepEqual(mapped.config.directory.passwordAlerts, { expiringAlert: 'Change it at https://pw.example.org/ within {days} days ({hours} h).', graceAlert: '', alertIntervalMs: 0 });
  // What is not given keeps its default.
  assert.deepEqual(read({}).config.directory.passwordAlerts, DEFAULT_PASSWORD_ALERTS);
  assert.deepEqual(read({ grace_alert: '{grace} left' }).config.directory.passwordAlerts, { ...DEFAULT_PASSWORD_ALERTS, graceAlert: '{grace} left' });
});

test('directory.password_policy: each wrong value is an issue naming its path and what was expected', () => {
  assert.deepEqual(read('yes').issues, ['directory.password_policy: expected true, false, or a mapping of expiring_alert, grace_alert and alert_interval_ms (the policy on), found "yes"']);
  assert.deepEqual(read({ expiring_alert: 'x', graceAlert: 'y' }).issues, ['directory.password_policy.graceAlert: expected one of the known keys (expiring_alert, grace_alert, alert_interval_ms), found an unknown key "graceAlert"']);
  const cases: ReadonlyArray<readonly [Record<string, unknown>, string]> = [
    [{ expiring_alert: 'Change it\r\n* OK [ALERT] forged' }, `directory.password_policy.expiring_alert: expected ${EXPECTED_EXPIRING}, found a character that is not printable ASCII (a control character such as CR, LF or NUL, or 8-bit text)`],
    [{ expiring_alert: 'Change it\0' }, `directory.password_policy.expiring_alert: expected ${EXPECTED_EXPIRING}, found a character that is not printable ASCII (a control character such as CR, LF or NUL, or 8-bit text)`],
    [{ expiring_alert: 'Ihr Passwort läuft in {days} Tagen ab' }, `directory.password_policy.expiring_alert: expected ${EXPECTED_EXPIRING}, found a character that is not printable ASCII (a control character such as CR, LF or NUL, or 8-bit text)`],
    [{ expiring_alert: 'x'.repeat(301) }, `directory.password_policy.expiring_alert: expected ${EXPECTED_EXPIRING}, found 301 characters`],
    [{ expiring_alert: '{days} days, {grace} logins, %{hours}' }, `directory.password_policy.expiring_alert: expected ${EXPECTED_EXPIRING}, found unknown placeholders "{grace}", "%{hours}"`],
    [{ grace_alert: '{days} days left' }, `directory.password_policy.grace_alert: expected ${EXPECTED_GRACE}, found an unknown placeholder "{days}"`],
    [{ expiring_alert: 'Days left: {{days}}' }, `directory.password_policy.expiring_alert: expected ${EXPECTED_EXPIRING}, found a brace that is no placeholder (\`{{days}}\` would be sent as \`{9}\`, which a client can read as a literal)`],
    [{ grace_alert: 'Logins left: {grace' }, `directory.password_policy.grace_alert: expected ${EXPECTED_GRACE}, found a brace that is no placeholder (\`{{days}}\` would be sent as \`{9}\`, which a client can read as a literal)`],
    [{ expiring_alert: '   ' }, `directory.password_policy.expiring_alert: expected ${EXPECTED_EXPIRING}, found spaces only`],
    [{ grace_alert: 3 }, `directory.password_policy.grace_alert: expected ${EXPECTED_GRACE}, found number 3`],
    [{ grace_alert: null }, `directory.password_policy.grace_alert: expected ${EXPECTED_GRACE}, found null`],
    [{ alert_interval_ms: -1 }, 'directory.password_policy.alert_interval_ms: expected an integer from 0 to 2592000000, found number -1'],
    [{ alert_interval_ms: '1d' }, 'directory.password_policy.alert_interval_ms: expected an integer from 0 to 2592000000, found "1d"'],
  ];
  for (const [policy, issue] of cases) assert.deepEqual(read(policy).issues, [issue], JSON.stringify(policy));
  // 300 characters and only known placeholders: fine.
  assert.deepEqual(read({ expiring_alert: 'x'.repeat(300), grace_alert: 'y'.repeat(300) }).issues, []);
});

const CONFIG: PasswordAlertsConfig = { expiringAlert: 'Expires in {days} days ({hours} hours): {days}.', graceAlert: 'Expired, {grace} left.', alertIntervalMs: 1_000 };
const DAY_MS = 86_400_000;

test('PasswordAlerts: an expiring password is told once per interval per entry, the time left as of now; a grace login every time', () => {
  const alerts = new PasswordAlerts();
  const at = 1_000_000;
  const expiring = { kind: 'expiring', expiresAt: at + 3 * DAY_MS + 5 * 3_600_000 + 1 } as const;
  assert.deepEqual(alerts.take(expiring, 'uid=a', CONFIG, 100, at), { state: 'told', text: 'Expires in 3 days (77 hours): 3.' });
  assert.deepEqual(alerts.take(expiring, 'uid=a', CONFIG, 100, at), { state: 'interval' });
  // Another entry is told, whatever the first.
  assert.deepEqual(alerts.take(expiring, 'uid=b', CONFIG, 100, at), { state: 'told', text: 'Expires in 3 days (77 hours): 3.' });
  // A grace login is told every time, within the interval too.
  for (const graceLeft of [2, 1, 0]) assert.deepEqual(alerts.take({ kind: 'grace', graceLeft }, 'uid=a', CONFIG, 100, at), { state: 'told', text: `Expired, ${graceLeft} left.` });
  // An expiry already past (a cached login's, answered late): nothing is told (see below).
  assert.deepEqual(alerts.take({ kind: 'expiring', expiresAt: at - 5 }, 'uid=c', CONFIG, 100, at), { state: 'expired' });
  // '' tells nothing, and does not count as told.
  assert.deepEqual(alerts.take(expiring, 'uid=d', { ...CONFIG, expiringAlert: '' }, 100, at), { state: 'off' });
  assert.deepEqual(alerts.take({ kind: 'grace', graceLeft: 1 }, 'uid=d', { ...CONFIG, graceAlert: '' }, 100, at), { state: 'off' });
  assert.equal(alerts.take(expiring, 'uid=d', CONFIG, 100, at).state, 'told');
  // 0: at every login.
  for (let i = 0; i < 3; i++) assert.equal(alerts.take(expiring, 'uid=e', { ...CONFIG, alertIntervalMs: 0 }, 100, at).state, 'told');
});

test('PasswordAlerts: told again once the interval has passed; the defaults read well', async () => {
  const alerts = new PasswordAlerts();
  const config = { ...CONFIG, alertIntervalMs: 50 };
  const expiring = { kind: 'expiring', expiresAt: performance.now() + 10 * DAY_MS } as const;
  assert.equal(alerts.take(expiring, 'uid=a', config, 100).state, 'told');
  assert.equal(alerts.take(expiring, 'uid=a', config, 100).state, 'interval');
  await new Promise((resolve) => setTimeout(resolve, 80));
  assert.deepEqual(alerts.take(expiring, 'uid=a', config, 100), { state: 'told', text: 'Expires in 9 days (239 hours): 9.' });
  assert.deepEqual(alerts.take(expiring, 'uid=b', DEFAULT_PASSWORD_ALERTS, 100), { state: 'told', text: 'Your password expires in 9 days, please change it soon.' });
  assert.equal(DEFAULT_EXPIRING_ALERT, 'Your password expires in {left}, please change it soon.');
  assert.deepEqual(alerts.take({ kind: 'grace', graceLeft: 2 }, 'uid=b', DEFAULT_PASSWORD_ALERTS, 100), { state: 'told', text: 'Your password has expired, please change it now. Logins left with it: 2.' });
  assert.equal(DEFAULT_GRACE_ALERT, 'Your password has expired, please change it now. Logins left with it: {grace}.');
});

test('PasswordAlerts: {left} says the time left in words, and the last day does not read "0 days"', () => {
  const alerts = new PasswordAlerts();
  const config = { expiringAlert: '{left} ({days} d, {hours} h)', graceAlert: '', alertIntervalMs: 0 };
  const HOUR_MS = 3_600_000;
  const cases: [number, string][] = [
    [10 * DAY_MS, '10 days (10 d, 240 h)'],
    [2 * DAY_MS + 5, '2 days (2 d, 48 h)'],
    [DAY_MS + 23 * HOUR_MS, '1 day (1 d, 47 h)'],
    [DAY_MS, '1 day (1 d, 24 h)'],
    [DAY_MS - 1, '23 hours (0 d, 23 h)'],
    [2 * HOUR_MS, '2 hours (0 d, 2 h)'],
    [HOUR_MS + 59 * 60_000, '1 hour (0 d, 1 h)'],
    [HOUR_MS - 1, 'less than an hour (0 d, 0 h)'],
    [1, 'less than an hour (0 d, 0 h)'],
  ];
  for (const [leftMs, text] of cases) {
    assert.deepEqual(alerts.take({ kind: 'expiring', expiresAt: 1_000_000_000 + leftMs }, 'uid=a', config, 100, 1_000_000_000), { state: 'told', text }, `${leftMs} ms left`);
  }  // A cached login's warning whose expiry has passed: "expires in ..." would be untrue; nothing is
  // told, and the user is not taken as told (the alert comes at the next warning).
  const interval = { ...config, alertIntervalMs: 60_000 };
  for (const leftMs of [0, -1, -5 * HOUR_MS]) assert.deepEqual(alerts.take({ kind: 'expiring', expiresAt: 1_000_000_000 + leftMs }, 'uid=b', interval, 100, 1_000_000_000), { state: 'expired' }, `${leftMs} ms left`);
  assert.equal(alerts.take({ kind: 'expiring', expiresAt: 1_000_000_000 + DAY_MS }, 'uid=b', interval, 100, 1_000_000_000).state, 'told');
});

test('PasswordAlerts: bounded by the caches\' size; a user it forgot is told again', () => {
  const alerts = new PasswordAlerts();
  const expiring = { kind: 'expiring', expiresAt: 10 * DAY_MS } as const;
  for (const dn of ['uid=a', 'uid=b', 'uid=c']) assert.equal(alerts.take(expiring, dn, CONFIG, 2, 0).state, 'told');
  assert.equal(alerts.take(expiring, 'uid=c', CONFIG, 2, 0).state, 'interval');
  assert.equal(alerts.take(expiring, 'uid=a', CONFIG, 2, 0).state, 'told', 'the oldest was forgotten');
});

test('only IMAP has a line to tell it: an untagged OK [ALERT], safe and bounded as a backend\'s', () => {
  assert.equal(imapAdapter.loginAlert?.('Your password expires in 3 days.'), '* OK [ALERT] Your password expires in 3 days.\r\n');
  // A text the config could not hold (a control character, too long) still makes one line.
  assert.equal(imapAdapter.loginAlert?.(`a\r\nb${'c'.repeat(500)}`), `* OK [ALERT] a  b${'c'.repeat(396)}...\r\n`);
  assert.equal(pop3Adapter.loginAlert, undefined);
  assert.equal(managesieveAdapter.loginAlert, undefined);
});
