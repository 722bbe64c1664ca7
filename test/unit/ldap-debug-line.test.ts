/**
 * Requests sent with ldapts's debug log off are not serialised for it: ldapts (8.2) made the debug
 * line of every request it sent, JSON.stringify() of the whole request (of a copy of a bind's, the
 * password redacted), whether the log was on or not, which for each login's user search and bind
 * was 1.7 % of a cold mailfront's CPU. With NODE_DEBUG=ldapts the lines are written as ldapts
 * wrote them, the bind's password redacted. A fake LDAP server, its answers written by hand in BER
 * (RFC 4511 §4), answers the binds and searches.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { debuglog } from 'node:util';
import { Control, EqualityFilter } from 'ldapts';
import { openLdapClient } from '../../src/auth/ldap.js';

function tlv(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  assert.ok(body.length < 0x80);
  return Buffer.concat([Buffer.from([tag, body.length]), body]);
}

/** An LDAPResult with resultCode success, as [APPLICATION tag], for the request with message ID `id`. */
function success(id: number, tag: number): Buffer {
  return tlv(0x30, tlv(0x02, Buffer.from([id])), tlv(tag, tlv(0x0a, Buffer.from([0])), tlv(0x04), tlv(0x04)));
}

/** A server that answers each bind (0x60) with success and each search (0x63) with no entry. */
async function fakeServer(): Promise<{ server: Server; url: string }> {
  const server = createServer((socket) => {
    socket.on('data', (data) => {
      // SEQUENCE, its length (one byte: these requests are short), INTEGER of one byte, the operation.
      if (data[0] !== 0x30 || data[2] !== 0x02 || data[3] !== 1) return;
      const id = data[4]!;
      if (data[5] === 0x60) socket.write(success(id, 0x61));
      else if (data[5] === 0x63) socket.write(success(id, 0x65));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `ldap://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** A filter that counts how often it is serialised. */
class CountedFilter extends EqualityFilter {
  serialised = 0;
  toJSON(): unknown {
    this.serialised++;
    return { attribute: this.attribute };
  }
}

/** A bind control (not critical: the server ignores it) that counts how often it is serialised. */
class CountedControl extends Control {
  serialised = 0;
  constructor() {
    super('1.3.6.1.4.1.99999.1', { critical: false });
  }
  toJSON(): unknown {
    this.serialised++;
    return { type: this.type };
  }
}

const OPTIONS = { tls: {}, starttls: false, operationTimeoutMs: 5000, connectTimeoutMs: 5000, autoRebind: false } as const;

test('binds and searches with the debug log off are not serialised', async () => {
  assert.equal(debuglog('ldapts').enabled, false, 'run without NODE_DEBUG=ldapts');
  const { server, url } = await fakeServer();
  const client = await openLdapClient(url, OPTIONS);
  try {
    const filter = new CountedFilter({ attribute: 'uid', value: 'alice' });
    const control = new CountedControl();
    for (let i = 0; i < 3; i++) {
      await client.bind('uid=alice,ou=people,dc=example,dc=org', 'secret', control);
      const { searchEntries } = await client.search('dc=example,dc=org', { scope: 'sub', filter, attributes: ['mailStore'] });
      assert.deepEqual(searchEntries, []);
    }
    assert.equal(filter.serialised, 0, 'the search request was serialised for the debug log');
    assert.equal(control.serialised, 0, 'the bind request was serialised for the debug log');
  } finally {
    await client.unbind().catch(() => undefined);
    server.close();
  }
});

test('with NODE_DEBUG=ldapts, each request is written to the debug log, a bind with its password redacted', async () => {
  const { server, url } = await fakeServer();
  try {
    const script = `
      const { openLdapClient } = await import(${JSON.stringify(new URL('../../src/auth/ldap.js', import.meta.url).href)});
      const client = await openLdapClient(${JSON.stringify(url)}, ${JSON.stringify(OPTIONS)});
      await client.bind('uid=alice,ou=people,dc=example,dc=org', 'secret-of-alice');
      await client.search('dc=example,dc=org', { scope: 'sub', filter: '(uid=alice)', attributes: ['mailStore'] });
      await client.unbind();
    `;
    const { stderr } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, NODE_DEBUG: 'ldapts' }, encoding: 'utf8', timeout: 20_000 });
    const sent = stderr.split('\n').filter((line) => line.includes('Sending message: ')).map((line) => JSON.parse(line.slice(line.indexOf('Sending message: ') + 17)) as Record<string, unknown>);
    assert.equal(sent.length, 3, stderr);
    assert.deepEqual([sent[0]!['dn'], sent[0]!['password']], ['uid=alice,ou=people,dc=example,dc=org', '__redacted__']);
    assert.ok(!stderr.includes('secret-of-alice'));
    assert.deepEqual([sent[1]!['baseDN'], sent[1]!['filter'], sent[1]!['attributes']], ['dc=example,dc=org', { type: 0xa3, attribute: 'uid', value: 'alice' }, ['mailStore']]);
    assert.equal(sent[2]!['protocolOperation'], 0x42);
    assert.ok(stderr.includes('Message sent successfully.'), stderr);
    assert.ok(stderr.includes('Unbind success. Ending socket'), stderr);
  } finally {
    server.close();
  }
});
