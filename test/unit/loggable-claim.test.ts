// What the log shows of a value a client sent with ID: short, and without the characters a log
// viewer could misread (the ones normalizeUser refuses in a login name).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeUser } from '../../src/auth/directory.js';
import { loggableClaim } from '../../src/session/session.js';

test('a claim is cut to its first 64 characters, a character beyond the BMP counting as one', () => {
  assert.equal(loggableClaim('x'.repeat(1024)), 'x'.repeat(64));
  assert.equal(loggableClaim('192.0.2.1'), '192.0.2.1');
  assert.equal(loggableClaim('\u{1f600}'.repeat(70)), '\u{1f600}'.repeat(64));
});

test('line and paragraph separators, NEL and bidi controls are replaced', () => {
  assert.equal(loggableClaim('10.0.0.1\u0085{"level":"error"}\u2028x\u2029\u202Eevil\u2066'), '10.0.0.1\ufffd{"level":"error"}\ufffdx\ufffd\ufffdevil\ufffd');
  assert.equal(loggableClaim('a\ud800b'), 'a\ufffdb', 'a lone surrogate');
});

test('replaces exactly the characters normalizeUser refuses in a login name', () => {
  const config = { lowercase: false };
  const differ: string[] = [];
  for (let cp = 0; cp <= 0x10ffff; cp++) {
    const ch = String.fromCodePoint(cp);
    const refused = normalizeUser(`a${ch}b`, config) === null;
    const replaced = loggableClaim(ch) === '\ufffd';
    if (refused !== replaced) differ.push(cp.toString(16));
  }
  assert.deepEqual(differ, [], 'code points where the log and normalizeUser disagree');
});
