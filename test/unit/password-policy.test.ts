// The password policy control (auth/password-policy.ts): the request as sent, and the answer's
// BER read as draft-behera-ldap-password-policy-10 §6.2 writes it (OpenLDAP's ppolicy encodes it
// so), or refused as unreadable.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BerReader, BerWriter } from 'ldapts';
import { PASSWORD_POLICY_OID, PasswordPolicyRequest, decodePasswordPolicy } from '../../src/auth/password-policy.js';

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');

test('the request: the OID, not critical, no value', () => {
  const writer = new BerWriter();
  new PasswordPolicyRequest().write(writer);
  // SEQUENCE { OCTET STRING oid, BOOLEAN FALSE }
  const oid = Buffer.from(PASSWORD_POLICY_OID, 'latin1');
  assert.deepEqual(writer.buffer, Buffer.concat([Buffer.from([0x30, oid.length + 5, 0x04, oid.length]), oid, Buffer.from([0x01, 0x01, 0x00])]));
});

test('answers as OpenLDAP sends them', () => {
  // No warning, no error (a bind without anything to say).
  assert.deepEqual(decodePasswordPolicy(hex('30 00')), {});
  // passwordExpired (0), accountLocked (1), changeAfterReset (2).
  assert.deepEqual(decodePasswordPolicy(hex('30 03 81 01 00')), { error: 'passwordExpired' });
  assert.deepEqual(decodePasswordPolicy(hex('30 03 81 01 01')), { error: 'accountLocked' });
  assert.deepEqual(decodePasswordPolicy(hex('30 03 81 01 02')), { error: 'changeAfterReset' });
  // timeBeforeExpiration 86399 (0x0151 7f), graceAuthNsRemaining 1.
  assert.deepEqual(decodePasswordPolicy(hex('30 07 a0 05 80 03 01 51 7f')), { expiresInS: 86_399 });
  assert.deepEqual(decodePasswordPolicy(hex('30 05 a0 03 81 01 01')), { graceLeft: 1 });
  assert.deepEqual(decodePasswordPolicy(hex('30 05 a0 03 81 01 00')), { graceLeft: 0 });
  // Both, and a long-form length; the largest value (maxInt) with its leading zero.
  assert.deepEqual(decodePasswordPolicy(hex('30 81 08 a0 03 81 01 02 81 01 02')), { graceLeft: 2, error: 'changeAfterReset' });
  assert.deepEqual(decodePasswordPolicy(hex('30 08 a0 06 80 04 7f ff ff ff')), { expiresInS: 2_147_483_647 });
  assert.deepEqual(decodePasswordPolicy(hex('30 09 a0 07 80 05 00 ff ff ff ff')), { expiresInS: 4_294_967_295 });
  // An error value the draft does not name.
  assert.deepEqual(decodePasswordPolicy(hex('30 03 81 01 2a')), { error: 'error 42' });
});

test('what is no PasswordPolicyResponseValue is refused, never half read', () => {
  for (const bad of [
    '', // nothing (a control without a value)
    '31 00', // not a SEQUENCE
    '30 03 81 01', // truncated
    '30 00 00', // trailing bytes
    '30 02 81 00', // an empty ENUMERATED
    '30 03 81 01 ff', // a negative one
    '30 05 a0 03 82 01 01', // a warning of another kind
    '30 04 a0 02 80 00', // an empty INTEGER
    '30 08 a0 03 81 01 01 80 01 00', // something after the warning that is no error
    '30 03 82 01 00', // an element of another tag
    '30 03 81 01 00 81', // the outer length shorter than what follows
    '30 0a a0 08 80 06 01 00 00 00 00 00', // past 4 bytes of value
    '30 05 a0 03 80 01 01 81', // a SEQUENCE announcing less than the warning and error
    '30 07 a0 05 80 01 01 81 01', // the warning's length past its content
    '30 84 ff ff ff ff', // a length past the bytes
  ]) {
    assert.equal(decodePasswordPolicy(hex(bad)), null, bad);
  }
});

test('the request reads the answer ldapts hands it, or takes it as unreadable', () => {
  const request = new PasswordPolicyRequest();
  assert.equal(request.answer, undefined, 'no answer until the server sends one');
  request.parse(new BerReader(hex('30 03 81 01 00')));
  assert.deepEqual(request.answer, { error: 'passwordExpired' });
  const garbled = new PasswordPolicyRequest();
  garbled.parse(new BerReader(hex('30 03 81')));
  assert.equal(garbled.answer, 'unreadable');
});
