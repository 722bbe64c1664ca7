// The adapters' last words: to a connection refused by a limit, and to a client whose login an
// operator's kick cut short (the same 'total' refusal), one line each, in each protocol's form.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';

test('the last word to a refused or kicked client: an untagged BYE, a POP3 -ERR [SYS/TEMP], a ManageSieve BYE (TRYLATER)', () => {
  const text = 'Disconnected by an administrator';
  assert.equal(imapAdapter.connectionRefusal('total', text), '* BYE [UNAVAILABLE] Disconnected by an administrator\r\n');
  assert.equal(imapAdapter.connectionRefusal('address', 'Too many'), '* BYE [LIMIT] Too many\r\n');
  assert.equal(pop3Adapter.connectionRefusal('total', text), '-ERR [SYS/TEMP] Disconnected by an administrator\r\n');
  assert.equal(managesieveAdapter.connectionRefusal('total', text), 'BYE (TRYLATER) "Disconnected by an administrator"\r\n');
  // Text that could break the line is made safe in every protocol.
  for (const adapter of [imapAdapter, pop3Adapter, managesieveAdapter]) {
    const line = adapter.connectionRefusal('total', 'two\r\nlines\0');
    assert.equal(line.indexOf('\r\n'), line.length - 2, `${adapter.name}: one line`);
    assert.ok(!line.includes('\0'), `${adapter.name}: no NUL`);
  }
});
