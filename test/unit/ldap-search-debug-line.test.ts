/**
 * A search sent with ldapts's debug log off does not serialise its request: ldapts (8.2) makes the
 * debug line of every request it sends, JSON.stringify() of the whole request, whether the log is
 * on or not, which for a user search (the filter's tree, the attributes, the controls) was about
 * 1 % of a cold login's CPU. With NODE_DEBUG=ldapts the line still holds the whole request. A fake
 * LDAP server, its answers written by hand in BER (RFC 4511 §4), answers the search.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { EqualityFilter } from 'ldapts';
import { debuglog } from 'node:util';
import { openLdapClient } from '../../src/auth/ldap.js';

function tlv(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  assert.ok(body.length < 0x80);
  return Buffer.concat([Buffer.from([tag, body.length]), body]);
}

/** searchResDone, success, no entry, for the request with message ID `id`. */
function searchDone(id: number): Buffer {
  return tlv(0x30, tlv(0x02, Buffer.from([id])), tlv(0x65, tlv(0x0a, Buffer.from([0])), tlv(0x04), tlv(0x04)));
}

/** A filter that counts how often it is serialised. */
class CountedFilter extends EqualityFilter {
  serialised = 0;
  toJSON(): unknown {
    this.serialised++;
    return { attribute: this.attribute };
  }
}

test('a search with the debug log off does not serialise its request', async () => {
  assert.equal(debuglog('ldapts').enabled, false, 'run without NODE_DEBUG=ldapts');
  const server = createServer((socket) => {
    socket.on('data', (data) => {
      // The message ID: SEQUENCE, its length (one byte: these requests are short), INTEGER of one byte.
      if (data[0] === 0x30 && data[2] === 0x02 && data[3] === 1) socket.write(searchDone(data[4]!));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `ldap://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = await openLdapClient(url, { tls: {}, starttls: false, operationTimeoutMs: 5000, connectTimeoutMs: 5000, autoRebind: false });
  try {
    const filter = new CountedFilter({ attribute: 'uid', value: 'alice' });
    for (let i = 0; i < 3; i++) {
      const { searchEntries } = await client.search('dc=example,dc=org', { scope: 'sub', filter, attributes: ['mailStore'] });
      assert.deepEqual(searchEntries, []);
    }
    assert.equal(filter.serialised, 0, 'the search request was serialised for the debug log');
  } finally {
    await client.unbind().catch(() => undefined);
    server.close();
  }
});

test('with NODE_DEBUG=ldapts, a search request serialises whole, as ldapts wrote it', () => {
  const script = `
    await import(${JSON.stringify(new URL('../../src/auth/ldap.js', import.meta.url).href)});
    const { debuglog } = await import('node:util');
    const { FilterParser, SearchRequest } = await import('ldapts');
    const request = new SearchRequest({ messageId: 7, baseDN: 'dc=example,dc=org', filter: FilterParser.parseString('(uid=alice)'), attributes: ['mailStore'] });
    process.stdout.write(JSON.stringify({ debug: debuglog('ldapts').enabled, line: JSON.parse(JSON.stringify(request)) }));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, NODE_DEBUG: 'ldapts' }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const { debug, line } = JSON.parse(out) as { debug: boolean; line: Record<string, unknown> };
  assert.equal(debug, true);
  assert.equal(line['messageId'], 7);
  assert.equal(line['baseDN'], 'dc=example,dc=org');
  assert.deepEqual(line['filter'], { type: 0xa3, attribute: 'uid', value: 'alice' });
  assert.deepEqual(line['attributes'], ['mailStore']);
});
