// A store's `maintenance` key in the store map: off, on with the default text, or on with a
// reason; anything else is refused with an issue naming the store's path and what was expected.
// The LDAP attribute mailfrontMaintenance reads into the same key, and a toggle is a new version
// (maintenanceChanges says which stores went in or out).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, buildStoreMap } from '../../src/config/load.js';
import { readConfig } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { maintenanceChanges } from '../../src/routing/holder.js';
import { storeEntriesToDocument } from '../../src/routing/sources.js';
import { DEFAULT_MAINTENANCE_REASON } from '../../src/routing/storemap.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { MailfrontError } from '../../src/errors.js';

const config = readConfig({}, '/etc/mailfront/mailfront.yaml', (p) => p, new IssueList());

function mapWith(maintenance: unknown, version = 1): StoreMap {
  const alpha: Record<string, unknown> = { current_master: 'a1', slots: { a1: { host: '127.0.0.1', imap_port: 143 } } };
  if (maintenance !== undefined) alpha['maintenance'] = maintenance;
  return buildStoreMap({ stores: { alpha, beta: { current_master: 'b1', slots: { b1: { host: '127.0.0.1', imap_port: 143 } } } } }, '/etc/mailfront/stores.yaml', version, config);
}

function issuesOf(maintenance: unknown): Array<{ path: string; expected: string; found: string }> {
  try {
    mapWith(maintenance);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error.issues.map((i) => ({ ...i }));
  }
  return [];
}

test('absent or false is off; true is on with the default text; a string is on with that reason', () => {
  assert.equal(mapWith(undefined).stores.get('alpha')!.maintenance, null);
  assert.equal(mapWith(false).stores.get('alpha')!.maintenance, null);
  assert.equal(mapWith(true).stores.get('alpha')!.maintenance, DEFAULT_MAINTENANCE_REASON);
  assert.match(DEFAULT_MAINTENANCE_REASON, /wait/, 'fetchmail reads a POP3 -ERR without "wait" as a wrong password');
  assert.equal(mapWith('Dovecot upgrade until 06:00 UTC, please wait.').stores.get('alpha')!.maintenance, 'Dovecot upgrade until 06:00 UTC, please wait.');
  assert.equal(mapWith(true).stores.get('beta')!.maintenance, null, 'only the store that says so');
});

test('a store in maintenance has no route: currentMaster throws kind maintenance with the reason for the client', () => {
  const map = mapWith('Back at six, please wait.');
  assert.throws(
    () => map.currentMaster('alpha'),
    (error: unknown) => error instanceof MailfrontError && error.kind === 'maintenance' && error.code === 'STORE_MAINTENANCE' && error.clientText === 'Back at six, please wait.' && /store "alpha" is in maintenance/.test(error.message),
  );
  assert.equal(map.currentMaster('beta').slot.name, 'b1');
});

test('anything else is refused, naming the path and what was expected', () => {
  const bad: unknown[] = [null, '', 'yes\r\nA1 OK forged', 'tab\there', 'nul\u0000', 'bidi \u202e txet', '[ALERT] fake code', ' leading space', 'trailing space ', 'x'.repeat(201), 1, ['a'], { reason: 'x' }];
  // IMAP4rev1's response text is 7-bit (RFC 3501 §9), and mailfront offers no UTF8=ACCEPT before login.
  bad.push('Wartung bis 6 Uhr – bitte später.', 'ü'.repeat(10), 'caf\u00e9');
  // Words for off (YAML 1.1's, LDAP's in another case, a person's): as a reason they would turn it on.
  bad.push('off', 'OFF', 'no', 'No', 'n', 'false', 'False', 'FALSE', 'TRUE', 'yes', 'on', '0', 'disabled');
  for (const value of bad) {
    const issues = issuesOf(value);
    assert.equal(issues.length, 1, `${JSON.stringify(value)}: ${JSON.stringify(issues)}`);
    assert.equal(issues[0]!.path, 'stores.alpha.maintenance');
    assert.match(issues[0]!.expected, /^false, true, or the reason clients are told: printable ASCII of 1 to 200 characters \(IMAP's response text is 7-bit\), that does not begin with "\[".* is not a word such as "off" or "no"/);
  }
  assert.equal(issuesOf('x'.repeat(200)).length, 0);
  // A word for off inside a sentence is a sentence.
  assert.equal(issuesOf('Off for an upgrade, please wait.').length, 0);
  // A "]" or "[" inside the text fakes nothing.
  assert.equal(issuesOf('Moving to [new] hardware, please wait.').length, 0);
});

test('mailfrontMaintenance: TRUE is the default text, FALSE is off, any other value the reason', () => {
  const entry = (value: string | undefined): unknown => {
    const store: Record<string, unknown> & { dn: string } = { dn: 'cn=alpha,ou=stores', objectClass: 'mailfrontStore', cn: 'alpha', mailfrontCurrentMaster: 'a1' };
    if (value !== undefined) store['mailfrontMaintenance'] = value;
    return storeEntriesToDocument([store, { dn: 'cn=a1,cn=alpha,ou=stores', objectClass: 'mailfrontSlot', cn: 'a1', mailfrontHost: '127.0.0.1', mailfrontImapPort: '143' }]);
  };
  const maintenanceOf = (doc: unknown): unknown => (doc as { stores: { alpha: Record<string, unknown> } }).stores.alpha['maintenance'];
  assert.equal(maintenanceOf(entry(undefined)), undefined);
  assert.equal(maintenanceOf(entry('TRUE')), true);
  assert.equal(maintenanceOf(entry('FALSE')), false);
  // LDAP's Boolean syntax is upper case; whoever wrote another case meant the same.
  assert.equal(maintenanceOf(entry('false')), false);
  assert.equal(maintenanceOf(entry('True')), true);
  assert.equal(maintenanceOf(entry('Migration, please wait.')), 'Migration, please wait.');
});

test('a toggle is a change: maintenanceChanges names the store, with its reason when it went in', () => {
  assert.deepEqual(maintenanceChanges(mapWith(false), mapWith('Back soon, please wait.', 2)), [{ store: 'alpha', reason: 'Back soon, please wait.' }]);
  assert.deepEqual(maintenanceChanges(mapWith(true), mapWith(undefined, 2)), [{ store: 'alpha', reason: null }]);
  assert.deepEqual(maintenanceChanges(mapWith(true), mapWith('Another reason, please wait.', 2)), [], 'a new reason while on drains nothing');
  assert.deepEqual(maintenanceChanges(mapWith(false), mapWith(false, 2)), []);
});
