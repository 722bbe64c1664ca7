/**
 * How the values of a user's hold attribute (directory.hold_attribute) are read, as a store's
 * mailfrontMaintenance is: TRUE, FALSE in any case, a reason; anything that cannot be told holds
 * with the default reason. (hold-cache.test.ts: the cache of logins and the config key.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_HOLD_REASON, holdOf } from '../../src/auth/directory.js';

test('a hold value is read as a store maintenance is: FALSE or none is no hold, TRUE the default reason, a printable reason itself, in any case', () => {
  assert.deepEqual(holdOf([]), { reason: null });
  for (const off of ['FALSE', 'false', 'False', 'fAlSe']) assert.deepEqual(holdOf([off]), { reason: null }, off);
  for (const on of ['TRUE', 'true', 'True', 'tRuE']) assert.deepEqual(holdOf([on]), { reason: DEFAULT_HOLD_REASON }, on);
  assert.match(DEFAULT_HOLD_REASON, /wait/, 'says "wait", for fetchmail');
  const reason = 'Mailbox moving to store2 until 06:00 UTC, please wait and try again later.';
  assert.deepEqual(holdOf([reason]), { reason });
  assert.deepEqual(holdOf(['x'.repeat(200)]), { reason: 'x'.repeat(200) });
});

test('a hold value that cannot be told still holds the user, with the default reason, and says why', () => {
  const bad = [
    'Umzug läuft, bitte warten', // not ASCII: IMAP's response text is 7-bit
    'moving\tplease wait', // a control character
    'moving\r\n* OK forged', // a line break
    'x'.repeat(201), // too long
    '[ALERT] moving', // a response code it would fake
    ' moving', // a leading space
    'off', // a word for off: write FALSE
    'No',
    '0',
    null, // not UTF-8
  ];
  for (const value of bad) {
    const hold = holdOf([value]);
    assert.equal(hold.reason, DEFAULT_HOLD_REASON, JSON.stringify(value));
    assert.match(hold.problem ?? '', /printable ASCII of 1 to 200 characters/, JSON.stringify(value));
  }
  // LDAP values have no order: of several, none is taken, and FALSE among them undoes nothing.
  const several = holdOf(['FALSE', 'moving']);
  assert.equal(several.reason, DEFAULT_HOLD_REASON);
  assert.match(several.problem ?? '', /^2 values; it must have one/);
});
