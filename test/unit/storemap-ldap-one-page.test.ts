/**
 * A store-map LDAP server that ignores paging (RFC 2696) answers the whole map in one page. With
 * about 200,000 entries in it, the page was handed on as call arguments (`push(...entries)`, in
 * ldapts when the search's answer ended and in the source when it gathered the pages), past what
 * V8's stack holds: the read failed with "Maximum call stack size exceeded". A fake LDAP server
 * whose messages are written by hand in BER (RFC 4511 §4) plays the directory: real slapd pages.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
import { LdapStoreMapSource } from '../../src/routing/sources.js';

// BER, definite lengths (RFC 4511 §5.1).
function length(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(n);
  return Buffer.concat([Buffer.from([0x84]), bytes]);
}
function tlv(tag: number, ...parts: Array<Buffer | string>): Buffer {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
  return Buffer.concat([Buffer.from([tag]), length(body.length), body]);
}
function message(id: number, operation: Buffer): Buffer {
  return tlv(0x30, tlv(0x02, Buffer.from([id >> 24, id >> 16, id >> 8, id].map((b) => b & 0xff))), operation);
}
/** An LDAPResult with resultCode success, as [APPLICATION tag]. */
function success(tag: number): Buffer {
  return tlv(tag, tlv(0x0a, Buffer.from([0])), tlv(0x04, ''), tlv(0x04, ''));
}
/** A SearchResultEntry with `attributes` (each of one value). */
function entryOf(id: number, dn: string, attributes: Record<string, string>): Buffer {
  return message(id, tlv(0x64, tlv(0x04, dn), tlv(0x30, ...Object.entries(attributes).map(([type, value]) => tlv(0x30, tlv(0x04, type), tlv(0x31, tlv(0x04, value)))))));
}

const BASE = 'ou=stores,dc=example,dc=org';
/** Stores of one slot each: twice as many entries. */
const STORES = 100_000;

/** The store map's entries, each store followed by its slot, as one answer (no paging control in its SearchResultDone). */
function wholeMap(id: number): Buffer {
  const entries: Buffer[] = [];
  for (let i = 0; i < STORES; i++) {
    const store = `cn=s${i},${BASE}`;
    entries.push(entryOf(id, store, { objectClass: 'mailfrontStore', cn: `s${i}`, mailfrontCurrentMaster: `s${i}a` }));
    entries.push(entryOf(id, `cn=s${i}a,${store}`, { objectClass: 'mailfrontSlot', cn: `s${i}a`, mailfrontHost: '127.0.0.1', mailfrontImapPort: '143' }));
  }
  entries.push(message(id, success(0x65)));
  return Buffer.concat(entries);
}

/** A server that answers binds, and every search under BASE with the whole map at once; the root DSE names nothing. */
async function serverIgnoringPaging(): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buffered = Buffer.alloc(0);
    socket.on('data', (data) => {
      buffered = Buffer.concat([buffered, data]);
      while (buffered.length > 2) {
        let at = 1;
        let size = buffered[at++]!;
        if (size & 0x80) {
          const count = size & 0x7f;
          size = 0;
          for (let i = 0; i < count; i++) size = size * 256 + buffered[at++]!;
        }
        if (buffered.length < at + size) return;
        const request = buffered.subarray(0, at + size);
        buffered = buffered.subarray(at + size);
        const idSize = request[at + 1]!;
        let id = 0;
        for (let i = 0; i < idSize; i++) id = id * 256 + request[at + 2 + i]!;
        const operation = request[at + 2 + idSize];
        if (operation === 0x60) socket.write(message(id, success(0x61)));
        else if (operation === 0x42) socket.end();
        else if (operation === 0x63) {
          // The base DN: the SearchRequest's first OCTET STRING (its length in one byte: the DNs here are short).
          let op = at + 3 + idSize;
          op += (request[op]! & 0x80) !== 0 ? 1 + (request[op]! & 0x7f) : 1;
          const base = request[op] === 0x04 && request[op + 1]! < 0x80 ? request.subarray(op + 2, op + 2 + request[op + 1]!).toString('utf8') : '';
          socket.write(base === '' ? message(id, success(0x65)) : wholeMap(id));
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ldap://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

test(`a store map of ${2 * STORES} entries in one page (a server ignoring paging) is read whole, without a stack overflow`, async () => {
  const server = await serverIgnoringPaging();
  // The deadline stands for a server that never answers, which this case is not about: the read
  // takes about 4 s of CPU alone, and took over 30 s beside another test file on a machine busy
  // with other work (load 9 on 2 cores). The most the config allows, 2 minutes.
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [server.url], bindDn: 'cn=mailfront,dc=example,dc=org', bindPassword: 'service-pw', baseDn: BASE, pollIntervalMs: 60_000, starttls: false, operationTimeoutMs: 120_000 });
  try {
    const document = (await source.load()) as { stores: Record<string, { current_master: string; slots: Record<string, unknown> }> };
    assert.equal(Object.keys(document.stores).length, STORES);
    assert.deepEqual(document.stores[`s${STORES - 1}`], { current_master: `s${STORES - 1}a`, slots: { [`s${STORES - 1}a`]: { host: '127.0.0.1', imap_port: 143 } } });
  } finally {
    await source.close();
    await server.close();
  }
});
