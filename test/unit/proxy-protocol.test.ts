import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import fc from 'fast-check';
import { IssueList } from '../../src/config/validate.js';
import { MailfrontError } from '../../src/errors.js';
import {
  MAX_PROXY_V1_BYTES,
  MAX_PROXY_V2_PAYLOAD_BYTES,
  acceptProxyHeader,
  backendProxyHeader,
  encodeProxyV1,
  encodeProxyV2,
  encodeProxyV2Local,
  isCidr,
  parseProxyHeader,
  plainAddress,
  readProxyConfig,
  readProxyHeader,
  proxySignatureSoFar,
  startsWithProxySignature,
} from '../../src/server/proxy-protocol.js';
import type { ProxyHeader, ProxyParseResult } from '../../src/server/proxy-protocol.js';

const SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const AFTER = Buffer.from('a001 CAPABILITY\r\n');

/** A v2 header from parts: version/command byte, family byte, payload (length is computed unless given). */
function v2(versionCommand: number, family: number, payload: Buffer, length = payload.length): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = versionCommand;
  fixed[1] = family;
  fixed.writeUInt16BE(length, 2);
  return Buffer.concat([SIG, fixed, payload]);
}

function ipv4Payload(src: number[], dst: number[], sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  Buffer.from(src).copy(b, 0);
  Buffer.from(dst).copy(b, 4);
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

function ipv6Payload(src: Buffer, dst: Buffer, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(36);
  src.copy(b, 0);
  dst.copy(b, 16);
  b.writeUInt16BE(sport, 32);
  b.writeUInt16BE(dport, 34);
  return b;
}

/** A comparable summary of a parse outcome (rest as text, error as its code). */
type Outcome = { status: 'incomplete' } | { status: 'done'; header: ProxyHeader; rest: string } | { status: 'error'; code: string };

/** Feeds chunks the way readProxyHeader does: accumulate, parse after each; bytes after a decision join the rest. */
function feed(chunks: readonly Buffer[]): Outcome {
  let received = Buffer.alloc(0);
  for (let i = 0; i < chunks.length; i++) {
    received = Buffer.concat([received, chunks[i]!]);
    const r: ProxyParseResult = parseProxyHeader(received);
    if (r.status === 'incomplete') continue;
    if (r.status === 'error') return { status: 'error', code: r.error.code };
    return { status: 'done', header: r.header, rest: Buffer.concat([r.rest, ...chunks.slice(i + 1)]).toString('latin1') };
  }
  return { status: 'incomplete' };
}

/** The outcome of `input` whole, after checking that every split point and byte-at-a-time give the same. */
function everySplit(input: Buffer): Outcome {
  const whole = feed([input]);
  for (let i = 1; i < input.length; i++) assert.deepEqual(feed([input.subarray(0, i), input.subarray(i)]), whole, `split at byte ${i}`);
  assert.deepEqual(feed([...input].map((b) => Buffer.from([b]))), whole, 'one byte at a time');
  return whole;
}

function done(input: Buffer): { header: ProxyHeader; rest: string } {
  const outcome = everySplit(input);
  assert.equal(outcome.status, 'done', JSON.stringify(outcome));
  return outcome as { status: 'done'; header: ProxyHeader; rest: string };
}

function errorCode(input: Buffer): string {
  const outcome = everySplit(input);
  assert.equal(outcome.status, 'error', JSON.stringify(outcome));
  return (outcome as { code: string }).code;
}

describe('proxy protocol v1', () => {
  it('parses TCP4 and leaves the bytes after the header', () => {
    const { header, rest } = done(Buffer.concat([Buffer.from('PROXY TCP4 192.0.2.7 198.51.100.1 56324 143\r\n'), AFTER]));
    assert.deepEqual(header, { version: 1, kind: 'proxied', family: 'tcp4', source: { address: '192.0.2.7', port: 56324 }, destination: { address: '198.51.100.1', port: 143 }, length: 45 });
    assert.equal(rest, AFTER.toString());
  });

  it('parses TCP6 and writes addresses in RFC 5952 form', () => {
    const { header } = done(Buffer.from('PROXY TCP6 2001:DB8:0:0:0:0:0:7 2001:db8::1 0 65535\r\n'));
    assert.deepEqual(header, { version: 1, kind: 'proxied', family: 'tcp6', source: { address: '2001:db8::7', port: 0 }, destination: { address: '2001:db8::1', port: 65535 }, length: 53 });
  });

  it('gives IPv4-mapped TCP6 addresses as plain IPv4', () => {
    const { header } = done(Buffer.from('PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 1 2\r\n'));
    assert.equal(header.kind === 'proxied' && header.source.address, '192.0.2.7');
  });

  it('takes UNKNOWN as "use the connection\'s own addresses", whatever follows it', () => {
    assert.deepEqual(done(Buffer.from('PROXY UNKNOWN\r\n')).header, { version: 1, kind: 'unknown', length: 15 });
    assert.equal(done(Buffer.concat([Buffer.from('PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n'), AFTER])).rest, AFTER.toString());
  });

  it('accepts the longest header of the spec (107 bytes) and refuses one byte more', () => {
    const full = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const longest = Buffer.from(`PROXY UNKNOWN ${full} ${full} 65535 65535\r\n`);
    assert.equal(longest.length, MAX_PROXY_V1_BYTES);
    assert.equal(done(longest).header.kind, 'unknown');
    assert.equal(errorCode(Buffer.from(`PROXY UNKNOWN ${full} ${full} 65535 655355\r\n`)), 'PROXY_HEADER_TOO_LONG');
    assert.equal(errorCode(Buffer.from(`PROXY TCP4 ${'1'.repeat(200)}`)), 'PROXY_HEADER_TOO_LONG');
  });

  it('waits while the header is incomplete', () => {
    assert.deepEqual(feed([Buffer.from('PROXY TCP4 192.0.2.7 198.51.100.1 56324 143\r')]), { status: 'incomplete' });
    assert.deepEqual(feed([Buffer.from('PRO')]), { status: 'incomplete' });
  });

  const malformed: Record<string, string> = {
    'bare LF': 'PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n',
    'CR without LF': 'PROXY TCP4 192.0.2.7 198.51.100.1 1 2\rX',
    'unknown protocol': 'PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n',
    'lower-case protocol': 'PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n',
    'missing port': 'PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n',
    'extra field': 'PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n',
    'double space': 'PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n',
    'IPv6 in TCP4': 'PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n',
    'IPv4 in TCP6': 'PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n',
    'zone id': 'PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n',
    'leading zero in address': 'PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n',
    'port above 65535': 'PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n',
    'port with leading zero': 'PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n',
    'negative port': 'PROXY TCP4 192.0.2.7 198.51.100.1 -1 2\r\n',
    'no protocol': 'PROXY \r\n',
    'control byte': 'PROXY TCP4 192.0.2.7\t198.51.100.1 1 2\r\n',
    'NUL': 'PROXY TCP4 192.0.2.7\x00198.51.100.1 1 2\r\n',
    'non-ASCII': 'PROXY TCP4 192.0.2.7 198.51.100.1 1 2é\r\n',
  };
  for (const [name, text] of Object.entries(malformed)) {
    it(`refuses a header with ${name}`, () => {
      assert.equal(errorCode(Buffer.from(text, 'utf8')), 'PROXY_HEADER_MALFORMED');
    });
  }
});

describe('proxy protocol v2', () => {
  it('parses PROXY over TCP/IPv4 and leaves the bytes after the header', () => {
    const header = v2(0x21, 0x11, ipv4Payload([192, 0, 2, 7], [198, 51, 100, 1], 56324, 143));
    const parsed = done(Buffer.concat([header, AFTER]));
    assert.deepEqual(parsed.header, { version: 2, kind: 'proxied', family: 'tcp4', source: { address: '192.0.2.7', port: 56324 }, destination: { address: '198.51.100.1', port: 143 }, length: 28 });
    assert.equal(parsed.rest, AFTER.toString());
  });

  it('parses PROXY over TCP/IPv6', () => {
    const src = Buffer.from('20010db8000000000000000000000007', 'hex');
    const dst = Buffer.from('20010db8000000010000000000000000', 'hex');
    const { header } = done(v2(0x21, 0x21, ipv6Payload(src, dst, 1, 993)));
    assert.deepEqual(header, { version: 2, kind: 'proxied', family: 'tcp6', source: { address: '2001:db8::7', port: 1 }, destination: { address: '2001:db8:0:1::', port: 993 }, length: 52 });
  });

  it('gives IPv4-mapped IPv6 sources as plain IPv4', () => {
    const mapped = Buffer.from('00000000000000000000ffffc0000207', 'hex');
    const { header } = done(v2(0x21, 0x21, ipv6Payload(mapped, mapped, 1, 2)));
    assert.equal(header.kind === 'proxied' && header.source.address, '192.0.2.7');
  });

  it('skips TLVs after the addresses', () => {
    const tlvs = Buffer.from([0x04, 0x00, 0x03, 0x61, 0x62, 0x63, 0x20, 0x00, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00]);
    const header = v2(0x21, 0x11, Buffer.concat([ipv4Payload([192, 0, 2, 7], [198, 51, 100, 1], 1, 2), tlvs]));
    const parsed = done(Buffer.concat([header, AFTER]));
    assert.equal(parsed.header.length, 16 + 12 + tlvs.length);
    assert.equal(parsed.rest, AFTER.toString());
  });

  it('reads PP2_TYPE_SSL: whether the client reached the balancer over TLS (PP2_CLIENT_SSL), among other TLVs', () => {
    const addresses = ipv4Payload([192, 0, 2, 7], [198, 51, 100, 1], 1, 2);
    // As HAProxy's send-proxy-v2-ssl writes it: client 0x01 (+ 0x02/0x04 for a certificate), verify, then sub-TLVs (version "TLSv1.3").
    const ssl = (client: number): Buffer => Buffer.concat([Buffer.from([0x20, 0x00, 5 + 10, client, 0, 0, 0, 0, 0x21, 0x00, 0x07]), Buffer.from('TLSv1.3')]);
    const alpn = Buffer.from([0x01, 0x00, 0x04, 0x69, 0x6d, 0x61, 0x70]);
    const parse = (tlvs: Buffer): ProxyHeader => done(v2(0x21, 0x11, Buffer.concat([addresses, tlvs]))).header;
    assert.equal((parse(Buffer.concat([alpn, ssl(0x01)])) as { clientTls?: boolean }).clientTls, true);
    assert.equal((parse(ssl(0x07)) as { clientTls?: boolean }).clientTls, true);
    // The TLV says the client did not use TLS (send-proxy-v2-ssl on a plain bind).
    assert.equal((parse(ssl(0x00)) as { clientTls?: boolean }).clientTls, false);
    // Over IPv6 too.
    const src = Buffer.from('20010db8000000000000000000000007', 'hex');
    assert.equal((done(v2(0x21, 0x21, Buffer.concat([ipv6Payload(src, src, 1, 2), ssl(0x01)]))).header as { clientTls?: boolean }).clientTls, true);
    // No SSL TLV: nothing said (the field is absent).
    assert.ok(!('clientTls' in parse(alpn)));
    // An SSL TLV too short for its fields, or one cut off by the end of the block: no claim of TLS, and the header stands.
    assert.ok(!('clientTls' in parse(Buffer.from([0x20, 0x00, 0x01, 0x01]))));
    assert.ok(!('clientTls' in parse(Buffer.from([0x20, 0x00, 0x05, 0x01, 0x00]))));
  });

  it('takes LOCAL as "use the connection\'s own addresses", with or without an address block', () => {
    assert.deepEqual(done(v2(0x20, 0x00, Buffer.alloc(0))).header, { version: 2, kind: 'local', length: 16 });
    assert.deepEqual(done(v2(0x20, 0x11, ipv4Payload([1, 2, 3, 4], [5, 6, 7, 8], 1, 2))).header, { version: 2, kind: 'local', length: 28 });
    assert.deepEqual(done(encodeProxyV2Local()).header, { version: 2, kind: 'local', length: 16 });
  });

  it('takes UNSPEC and AF_UNIX sources as unknown (the connection\'s own addresses)', () => {
    assert.deepEqual(done(v2(0x21, 0x00, Buffer.alloc(0))).header, { version: 2, kind: 'unknown', length: 16 });
    assert.deepEqual(done(v2(0x21, 0x31, Buffer.alloc(216))).header, { version: 2, kind: 'unknown', length: 232 });
  });

  it('accepts a payload of exactly the bound and refuses one byte more', () => {
    const payload = Buffer.concat([ipv4Payload([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), Buffer.alloc(MAX_PROXY_V2_PAYLOAD_BYTES - 12)]);
    assert.equal(done(v2(0x21, 0x11, payload)).header.length, 16 + MAX_PROXY_V2_PAYLOAD_BYTES);
    // Refused from the length field alone: the bytes it announces are never waited for.
    assert.equal(errorCode(v2(0x21, 0x11, Buffer.alloc(0), MAX_PROXY_V2_PAYLOAD_BYTES + 1)), 'PROXY_HEADER_TOO_LONG');
    assert.equal(errorCode(v2(0x21, 0x11, Buffer.alloc(0), 0xffff)), 'PROXY_HEADER_TOO_LONG');
  });

  it('waits while the header is incomplete', () => {
    const header = v2(0x21, 0x11, ipv4Payload([192, 0, 2, 7], [198, 51, 100, 1], 1, 2));
    for (let i = 1; i < header.length; i++) assert.deepEqual(feed([header.subarray(0, i)]), { status: 'incomplete' }, `first ${i} bytes`);
  });

  const malformed: Record<string, Buffer> = {
    'version 1 in the version nibble': v2(0x11, 0x11, ipv4Payload([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)),
    'version 3': v2(0x31, 0x11, ipv4Payload([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)),
    'command 2': v2(0x22, 0x11, ipv4Payload([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)),
    'address family 4': v2(0x21, 0x41, Buffer.alloc(12)),
    'transport 3': v2(0x21, 0x13, Buffer.alloc(12)),
    'IPv4 block too short': v2(0x21, 0x11, Buffer.alloc(11)),
    'IPv6 block too short': v2(0x21, 0x21, Buffer.alloc(35)),
  };
  for (const [name, input] of Object.entries(malformed)) {
    it(`refuses a header with ${name}`, () => {
      assert.equal(errorCode(input), 'PROXY_HEADER_MALFORMED');
    });
  }

  it('refuses DGRAM (UDP) sources', () => {
    assert.equal(errorCode(v2(0x21, 0x12, ipv4Payload([1, 2, 3, 4], [5, 6, 7, 8], 1, 2))), 'PROXY_HEADER_UNSUPPORTED');
  });
});

describe('proxy protocol: not a header', () => {
  for (const text of ['a001 CAPABILITY\r\n', 'GET / HTTP/1.1\r\n', 'PROXI TCP4', 'proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n', '\r\n\r\nX', 'USER a\r\n']) {
    it(`refuses ${JSON.stringify(text)} as soon as it differs from both signatures`, () => {
      assert.equal(errorCode(Buffer.from(text)), 'PROXY_HEADER_MISSING');
    });
  }

  it('never throws and stays within its bounds on arbitrary bytes', () => {
    const prefixed = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([Buffer.from('PROXY '), b])),
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([SIG, b])),
    );
    fc.assert(
      fc.property(prefixed, (bytes) => {
        const r = parseProxyHeader(Buffer.from(bytes));
        if (r.status === 'incomplete') assert.ok(bytes.length < 16 + MAX_PROXY_V2_PAYLOAD_BYTES);
        if (r.status === 'done') assert.equal(r.header.length + r.rest.length, bytes.length);
        if (r.status === 'error') assert.ok(r.error instanceof MailfrontError);
      }),
      { numRuns: 2000 },
    );
  });

  it('recognises a whole signature at the start of a first chunk', () => {
    assert.equal(startsWithProxySignature(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n')), true);
    assert.equal(startsWithProxySignature(encodeProxyV2Local()), true);
    assert.equal(startsWithProxySignature(Buffer.from('PROXY')), false);
    assert.equal(startsWithProxySignature(Buffer.from('a001 LOGIN')), false);
  });

  it('tells, from a first few bytes, a signature, a beginning of one, and bytes that cannot become one', () => {
    assert.equal(proxySignatureSoFar(Buffer.from('PROXY TCP4')), 'header');
    assert.equal(proxySignatureSoFar(encodeProxyV2Local()), 'header');
    for (const start of ['P', 'PROX', 'PROXY', '\r\n', '\r\n\r\n\0\r\nQUI', '']) assert.equal(proxySignatureSoFar(Buffer.from(start, 'latin1')), 'more', JSON.stringify(start));
    for (const other of ['a', 'PROXYX', 'PRO ', '\r\nx', 'a001 NOOP\r\n']) assert.equal(proxySignatureSoFar(Buffer.from(other, 'latin1')), 'not', JSON.stringify(other));
  });
});

describe('proxy protocol: encoders', () => {
  const endpoints: Array<[string, string]> = [
    ['192.0.2.7', '198.51.100.1'],
    ['2001:db8::7', '2001:db8::1'],
    ['192.0.2.7', '2001:db8::1'],
  ];
  for (const [source, destination] of endpoints) {
    it(`round-trips ${source} → ${destination} through v2 and v1`, () => {
      for (const encoded of [encodeProxyV2({ address: source, port: 50000 }, { address: destination, port: 143 }), encodeProxyV1({ address: source, port: 50000 }, { address: destination, port: 143 })]) {
        const { header, rest } = done(Buffer.concat([encoded, AFTER]));
        assert.equal(header.kind, 'proxied');
        assert.deepEqual(header.kind === 'proxied' && [header.source, header.destination], [{ address: source, port: 50000 }, { address: destination, port: 143 }]);
        assert.equal(rest, AFTER.toString());
      }
    });
  }

  it('writes the exact v2 bytes for TCP/IPv4', () => {
    const encoded = encodeProxyV2({ address: '192.0.2.7', port: 0x1234 }, { address: '198.51.100.1', port: 143 });
    assert.equal(encoded.toString('hex'), `${SIG.toString('hex')}2111000cc0000207c63364011234008f`);
  });

  it('uses the v2 IPv6 family with a mapped address when one side is IPv6', () => {
    const encoded = encodeProxyV2({ address: '192.0.2.7', port: 1 }, { address: '2001:db8::1', port: 2 });
    assert.equal(encoded[13], 0x21);
    assert.equal(encoded.subarray(16, 32).toString('hex'), '00000000000000000000ffffc0000207');
  });

  it('refuses what cannot be encoded', () => {
    assert.throws(() => encodeProxyV2({ address: 'mail.example.org', port: 1 }, { address: '192.0.2.1', port: 2 }), /PROXY header/);
    assert.throws(() => encodeProxyV2({ address: '192.0.2.7', port: 70000 }, { address: '192.0.2.1', port: 2 }), /port 70000/);
  });

  it('writes v1 lines a parser takes, whatever spelling the addresses come in (mapped IPv4, zone ids)', () => {
    const cases: Array<[string, string, string]> = [
      ['::ffff:192.0.2.1', '10.0.0.1', 'PROXY TCP4 192.0.2.1 10.0.0.1 5000 143\r\n'],
      ['::ffff:192.0.2.1', '2001:db8::1', 'PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 5000 143\r\n'],
      ['fe80::1%eth0', '10.0.0.1', 'PROXY TCP6 fe80::1 ::ffff:10.0.0.1 5000 143\r\n'],
      ['2001:DB8:0:0::7', '::ffff:10.0.0.1', 'PROXY TCP6 2001:db8::7 ::ffff:10.0.0.1 5000 143\r\n'],
    ];
    for (const [source, destination, line] of cases) {
      const encoded = encodeProxyV1({ address: source, port: 5000 }, { address: destination, port: 143 });
      assert.equal(encoded.toString('latin1'), line);
      const parsed = parseProxyHeader(encoded);
      assert.equal(parsed.status, 'done', `${line}: ${JSON.stringify(parsed)}`);
    }
  });

  it('picks the header of a backend proxy_protocol mode', () => {
    const client = { address: '192.0.2.7', port: 1 };
    const local = { address: '198.51.100.1', port: 143 };
    assert.deepEqual(backendProxyHeader('v1', client, { local }), encodeProxyV1(client, local));
    assert.deepEqual(backendProxyHeader('v2', client, { local }), encodeProxyV2(client, local));
    // `none` must not read the local address: for a connection without a header that is a system call.
    const unread = {
      get local(): never {
        throw new Error('the local address was read');
      },
    };
    assert.equal(backendProxyHeader('none', client, unread), null);
  });

  it('prints addresses plainly', () => {
    assert.equal(plainAddress('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(plainAddress('2001:DB8:0::1'), '2001:db8::1');
    assert.equal(plainAddress('192.0.2.7'), '192.0.2.7');
  });
});

describe('proxy protocol: config', () => {
  it('reads trusted networks and the header timeout', () => {
    const issues = new IssueList();
    assert.deepEqual(readProxyConfig({ trusted_networks: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'], header_timeout_ms: 2000 }, 'listeners[0].proxy_protocol', issues), {
      trustedNetworks: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'],
      headerTimeoutMs: 2000,
    });
    assert.deepEqual(issues.issues, []);
    assert.equal(readProxyConfig(undefined, 'x', issues), undefined);
    assert.deepEqual(readProxyConfig({ trusted_networks: '10.1.2.3/32' }, 'x', issues), { trustedNetworks: ['10.1.2.3/32'], headerTimeoutMs: 5000 });
  });

  it('reports every bad entry with its path', () => {
    const issues = new IssueList();
    readProxyConfig({ trusted_networks: ['10.0.0.0/33', 'haproxy.local', '2001:db8::/129', '10.0.0.0/08'], header_timeout_ms: 0, colour: 'red' }, 'listeners[1].proxy_protocol', issues);
    assert.deepEqual(issues.issues.map((i) => i.path).sort(), [
      'listeners[1].proxy_protocol.colour',
      'listeners[1].proxy_protocol.header_timeout_ms',
      'listeners[1].proxy_protocol.trusted_networks[0]',
      'listeners[1].proxy_protocol.trusted_networks[1]',
      'listeners[1].proxy_protocol.trusted_networks[2]',
      'listeners[1].proxy_protocol.trusted_networks[3]',
    ]);
    const missing = new IssueList();
    readProxyConfig({}, 'p', missing);
    assert.deepEqual(missing.issues.map((i) => i.path), ['p.trusted_networks']);
  });

  it('takes a CIDR parser from outside when given one', () => {
    const issues = new IssueList();
    readProxyConfig({ trusted_networks: ['anything'] }, 'p', issues, () => true);
    assert.deepEqual(issues.issues, []);
    assert.equal(isCidr('0.0.0.0/0'), true);
    assert.equal(isCidr('::/0'), true);
  });
});

/** A loopback server whose connections are handed to `onSocket`; returns a connector. */
async function withServer(onSocket: (socket: Socket) => void, body: (port: number) => Promise<void>): Promise<void> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    onSocket(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    await body((server.address() as AddressInfo).port);
  } finally {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** Connects, writes `chunks` with a pause between them, and returns the socket. */
async function sendChunks(port: number, chunks: readonly Buffer[]): Promise<Socket> {
  const client = connect({ host: '127.0.0.1', port });
  client.on('error', () => undefined);
  await new Promise<void>((resolve) => client.once('connect', resolve));
  client.setNoDelay(true);
  for (const chunk of chunks) {
    client.write(chunk);
    await new Promise((r) => setTimeout(r, 5));
  }
  return client;
}

/** Reads everything the socket emits as 'data' until `bytes` bytes arrived. */
function collect(socket: Socket, bytes: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (got.length >= bytes) resolve(got.toString('latin1'));
    });
    socket.once('error', reject);
  });
}

describe('proxy protocol: reading from a socket', () => {
  const header = encodeProxyV2({ address: '192.0.2.7', port: 40000 }, { address: '198.51.100.1', port: 143 });
  const after = Buffer.from('a001 LOGIN user pass\r\na002 NOOP\r\n');
  const wire = Buffer.concat([header, after]);
  const splits: Array<[string, Buffer[]]> = [
    ['in one write', [wire]],
    ['split inside the header', [wire.subarray(0, 7), wire.subarray(7)]],
    ['split right after the header', [wire.subarray(0, header.length), wire.subarray(header.length)]],
    ['one byte at a time', [...wire].map((b) => Buffer.from([b]))],
  ];
  for (const [name, chunks] of splits) {
    it(`takes exactly the header off the socket (${name}) and leaves the rest for the next reader`, async () => {
      let result: Promise<{ header: ProxyHeader; rest: string }> | undefined;
      await withServer(
        (socket) => {
          result = readProxyHeader(socket, { timeoutMs: 5_000 }).then(async (h) => ({ header: h, rest: await collect(socket, after.length) }));
        },
        async (port) => {
          const client = await sendChunks(port, chunks);
          while (result === undefined) await new Promise((r) => setTimeout(r, 5));
          const { header: h, rest } = await result;
          assert.deepEqual(h.kind === 'proxied' && h.source, { address: '192.0.2.7', port: 40000 });
          assert.equal(rest, after.toString('latin1'));
          client.destroy();
        },
      );
    });
  }

  it('rejects a malformed header and leaves the socket open for the caller to close', async () => {
    let outcome: Promise<unknown> | undefined;
    let serverSocket: Socket | undefined;
    await withServer(
      (socket) => {
        serverSocket = socket;
        outcome = readProxyHeader(socket, { timeoutMs: 5_000 }).catch((e: unknown) => e);
      },
      async (port) => {
        const client = await sendChunks(port, [Buffer.from('a001 CAPABILITY\r\n')]);
        while (outcome === undefined) await new Promise((r) => setTimeout(r, 5));
        const error = (await outcome) as MailfrontError;
        assert.equal(error.code, 'PROXY_HEADER_MISSING');
        assert.equal(serverSocket?.destroyed, false);
        client.destroy();
      },
    );
  });

  it('gives up after its deadline, when the peer closes first, and when aborted', async () => {
    const outcomes: Array<Promise<unknown>> = [];
    const abort = new AbortController();
    let n = 0;
    await withServer(
      (socket) => {
        n += 1;
        const options = n === 3 ? { timeoutMs: 5_000, signal: abort.signal } : { timeoutMs: n === 1 ? 100 : 5_000 };
        outcomes.push(readProxyHeader(socket, options).catch((e: unknown) => (e as MailfrontError).code));
      },
      async (port) => {
        const slow = await sendChunks(port, [Buffer.from('PROXY TCP4 ')]);
        while (outcomes.length < 1) await new Promise((r) => setTimeout(r, 5));
        assert.equal(await outcomes[0], 'PROXY_HEADER_TIMEOUT');
        const closing = await sendChunks(port, [header.subarray(0, 10)]);
        while (outcomes.length < 2) await new Promise((r) => setTimeout(r, 5));
        closing.end();
        assert.equal(await outcomes[1], 'PROXY_HEADER_CLOSED');
        const aborted = await sendChunks(port, []);
        while (outcomes.length < 3) await new Promise((r) => setTimeout(r, 5));
        abort.abort();
        assert.equal(await outcomes[2], 'ABORTED');
        slow.destroy();
        aborted.destroy();
      },
    );
  });

  it('believes a header only from trusted peers and reads nothing from others', async () => {
    const results: Array<Promise<unknown>> = [];
    let trusted = true;
    await withServer(
      (socket) => {
        results.push(
          acceptProxyHeader(socket, { timeoutMs: 5_000, isTrusted: (ip) => trusted && ip === '127.0.0.1' }).then(async (endpoints) => ({
            endpoints,
            rest: await collect(socket, after.length),
          })),
        );
      },
      async (port) => {
        const a = await sendChunks(port, [wire]);
        while (results.length < 1) await new Promise((r) => setTimeout(r, 5));
        const fromTrusted = (await results[0]) as { endpoints: { client: unknown; local: unknown; peer: { address: string } }; rest: string };
        assert.deepEqual(fromTrusted.endpoints.client, { address: '192.0.2.7', port: 40000 });
        assert.deepEqual(fromTrusted.endpoints.local, { address: '198.51.100.1', port: 143 });
        assert.equal(fromTrusted.endpoints.peer.address, '127.0.0.1');
        assert.equal(fromTrusted.rest, after.toString('latin1'));
        trusted = false;
        const b = await sendChunks(port, [wire]);
        while (results.length < 2) await new Promise((r) => setTimeout(r, 5));
        const fromOther = (await results[1]) as { endpoints: { client: { address: string }; local: { address: string; port: number }; header?: unknown }; rest: string };
        assert.equal(fromOther.endpoints.client.address, '127.0.0.1');
        assert.equal(fromOther.endpoints.header, undefined);
        // Without a header the local end is the socket's own, asked of the kernel when first read.
        assert.deepEqual(fromOther.endpoints.local, { address: '127.0.0.1', port });
        // Nothing was consumed: the session sees the header bytes and must close the connection.
        assert.ok(startsWithProxySignature(Buffer.from(fromOther.rest, 'latin1')));
        a.destroy();
        b.destroy();
      },
    );
  });

  it('uses the peer\'s own addresses for LOCAL', async () => {
    let result: Promise<{ client: { address: string; port: number }; header?: ProxyHeader }> | undefined;
    await withServer(
      (socket) => {
        result = acceptProxyHeader(socket, { timeoutMs: 5_000, isTrusted: () => true });
      },
      async (port) => {
        const client = await sendChunks(port, [encodeProxyV2Local()]);
        while (result === undefined) await new Promise((r) => setTimeout(r, 5));
        const endpoints = await result;
        assert.deepEqual(endpoints.client, { address: '127.0.0.1', port: client.localPort });
        assert.equal(endpoints.header?.kind, 'local');
        client.destroy();
      },
    );
  });
});
