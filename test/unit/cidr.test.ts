import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CidrSet, NAT64_WELL_KNOWN_PREFIX, addressKey, parseAddress, parseCidr, parseNat64Prefix, setNat64Prefixes } from '../../src/net/cidr.js';

test('IPv4 blocks match IPv4 and IPv4-mapped IPv6 clients', () => {
  const set = new CidrSet(['10.0.0.0/8', '192.0.2.128/25', '198.51.100.7']);
  assert.equal(set.contains('10.200.3.4'), true);
  assert.equal(set.contains('::ffff:10.200.3.4'), true);
  assert.equal(set.contains('::FFFF:10.0.0.1'), true);
  assert.equal(set.contains('::ffff:a00:1'), true, 'the mapped address written in hex');
  assert.equal(set.contains('11.0.0.1'), false);
  assert.equal(set.contains('192.0.2.127'), false);
  assert.equal(set.contains('192.0.2.128'), true);
  assert.equal(set.contains('192.0.2.255'), true);
  assert.equal(set.contains('198.51.100.7'), true);
  assert.equal(set.contains('198.51.100.8'), false);
  // An IPv4 rule must not match IPv6 addresses that merely end in the same bytes.
  assert.equal(set.contains('::10.200.3.4'), false);
  assert.equal(set.contains('64:ff9b::10.200.3.4'), false);
});

test('IPv6 blocks, compressed forms, zone ids and non-byte prefix lengths', () => {
  const set = new CidrSet(['2001:db8::/32', 'fd00:1:2::/47', '::1']);
  assert.equal(set.contains('2001:db8:ffff::1'), true);
  assert.equal(set.contains('2001:0db8:0000:0000:0000:0000:0000:0001'), true);
  assert.equal(set.contains('2001:db9::1'), false);
  assert.equal(set.contains('fd00:1:2::1'), true);
  assert.equal(set.contains('fd00:1:3:ffff::1'), true, '/47 covers fd00:1:2:: to fd00:1:3:ffff:…');
  assert.equal(set.contains('fd00:1:4::1'), false);
  assert.equal(set.contains('::1'), true);
  assert.equal(set.contains('::2'), false);
  assert.equal(set.contains('fe80::1%eth0'), false);
  assert.equal(new CidrSet(['fe80::/10']).contains('fe80::1%eth0'), true);
  assert.equal(new CidrSet(['::ffff:10.0.0.0/104']).contains('10.9.9.9'), true, 'a mapped block matches plain IPv4');
  assert.equal(new CidrSet(['0.0.0.0/0']).contains('203.0.113.9'), true);
  assert.equal(new CidrSet(['0.0.0.0/0']).contains('2001:db8::1'), false, 'IPv4 "everything" is not IPv6 everything');
  assert.equal(new CidrSet(['::/0']).contains('2001:db8::1'), true);
});

test('anything that is not an address never matches and never throws', () => {
  const set = new CidrSet(['0.0.0.0/0', '::/0']);
  for (const junk of ['', 'unknown', 'localhost', '1.2.3', '1.2.3.4.5', '01.2.3.4', '1.2.3.256', ':::', '1::2::3', 'g::1', '::ffff:1.2.3.999']) {
    assert.equal(set.contains(junk), false, junk);
    assert.equal(parseAddress(junk), null, junk);
  }
});

test('config blocks: typos and host bits are refused', () => {
  for (const bad of ['10.0.0.1/8', '10.0.0.0/33', '2001:db8::1/32', '2001:db8::/129', '10.0.0.0/', '10.0.0.0/-1', '10.0.0.0/08x', 'example.org/24', 'fe80::%eth0/64', '']) {
    assert.equal(parseCidr(bad), null, bad);
  }
  assert.equal(parseCidr('10.0.0.0/8')?.prefixBits, 104);
  assert.equal(parseCidr('2001:db8::/32')?.prefixBits, 32);
  assert.equal(parseCidr('192.0.2.1')?.prefixBits, 128);
  assert.throws(() => new CidrSet(['10.0.0.1/8']), /not an address block/);
});

test('address keys: IPv4 as is (also when mapped), IPv6 by its /64', () => {
  assert.equal(addressKey('192.0.2.9'), '192.0.2.9');
  assert.equal(addressKey('::ffff:192.0.2.9'), '192.0.2.9');
  assert.equal(addressKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd'), '2001:db8:1:2::/64');
  assert.equal(addressKey('2001:db8:1:2::1'), addressKey('2001:0DB8:1:2:ffff::9'), 'one /64, one key');
  assert.notEqual(addressKey('2001:db8:1:2::1'), addressKey('2001:db8:1:3::1'));
  assert.equal(addressKey('2001:db8::1', 128), '2001:db8:0:0:0:0:0:1/128');
  assert.equal(addressKey('2001:db8::1', 48), '2001:db8:0::/48');
  assert.equal(addressKey('unknown'), 'unknown');
});

test('address keys behind a translator: an address of the well-known prefix 64:ff9b::/96 (RFC 6052) is keyed by the IPv4 address it embeds', () => {
  assert.equal(addressKey('64:ff9b::c633:6401'), '198.51.100.1');
  assert.equal(addressKey('64:ff9b::198.51.100.1'), '198.51.100.1', 'written with a dotted tail');
  assert.equal(addressKey('0064:FF9B:0:0:0:0:C633:6401'), '198.51.100.1', 'written in full, upper case');
  assert.notEqual(addressKey('64:ff9b::c633:6401'), addressKey('64:ff9b::cb00:7101'), 'two IPv4 clients, two keys (both were 64:ff9b:0:0::/64)');
  assert.equal(addressKey('64:ff9b::198.51.100.1'), addressKey('198.51.100.1'), 'the same key as the client reaching mailfront over IPv4');
  assert.equal(addressKey('64:ff9b::198.51.100.1'), addressKey('::ffff:198.51.100.1'));
  // Outside the /96 (64:ff9b:0:0:1::/80 is in the same /64 but not the prefix): the /64, as any IPv6 address.
  assert.equal(addressKey('64:ff9b::1:0:c633:6401'), '64:ff9b:0:0::/64');
  assert.equal(addressKey('64:ff9b:1::c633:6401'), '64:ff9b:1:0::/64', 'the local-use /48 (RFC 8215) is read only where a /96 of it is configured');
  assert.equal(addressKey('64:ff9b::c633:6401', 64, []), '64:ff9b:0:0::/64', 'no prefixes: the /64');
});

test('address keys: configured translator prefixes replace the well-known one, for the whole process', () => {
  try {
    setNat64Prefixes(['2001:db8:46::/96', '64:ff9b:1:abcd::/96']);
    assert.equal(addressKey('2001:db8:46::c633:6401'), '198.51.100.1');
    assert.equal(addressKey('2001:db8:46::cb00:7101'), '203.0.113.1');
    assert.equal(addressKey('64:ff9b:1:abcd::10.1.2.3'), '10.1.2.3');
    assert.equal(addressKey('2001:db8:46:0:1::1'), '2001:db8:46:0::/64', 'the rest of the /64 is native IPv6');
    assert.equal(addressKey('64:ff9b::c633:6401'), '64:ff9b:0:0::/64', 'a list replaces the default');
    setNat64Prefixes([]);
    assert.equal(addressKey('2001:db8:46::c633:6401'), '2001:db8:46:0::/64');
    assert.throws(() => setNat64Prefixes(['64:ff9b::/64']), /not an IPv6 \/96 prefix/);
  } finally {
    setNat64Prefixes([NAT64_WELL_KNOWN_PREFIX]);
  }
  assert.equal(addressKey('64:ff9b::c633:6401'), '198.51.100.1');
});

test('translator prefixes are IPv6 /96 blocks only; trusted networks do not look inside them', () => {
  for (const good of ['64:ff9b::/96', '2001:db8:46::/96', '64:ff9b:1:abcd::/96', '2001:db8:46::0.0.0.0/96']) assert.equal(parseNat64Prefix(good)?.prefixBits, 96, good);
  for (const bad of ['64:ff9b::/64', '64:ff9b:1::/48', '2001:db8::/32', '64:ff9b::1/96', '64:ff9b::', '0.0.0.0/0', '10.0.0.0/8', '', 'nat64']) assert.equal(parseNat64Prefix(bad), null, bad);
  // An IPv4 rule is not matched through a translator (a grant must name what it trusts); the
  // translated block itself may be listed.
  assert.equal(new CidrSet(['10.0.0.0/8']).contains('64:ff9b::10.1.2.3'), false);
  assert.equal(new CidrSet(['64:ff9b::10.0.0.0/104']).contains('64:ff9b::a01:203'), true);
});

test('bindAddressesOverlap: the same address in any spelling, and wildcards, take a port from each other', async () => {
  const { bindAddressesOverlap } = await import('../../src/net/cidr.js');
  for (const [a, b] of [['127.0.0.1', '127.0.0.1'], ['127.0.0.1', '::ffff:127.0.0.1'], ['0.0.0.0', '127.0.0.2'], ['::', '127.0.0.1'], ['::', '::1'], ['0:0:0:0:0:0:0:1', '::1'], ['::', '0.0.0.0']]) {
    assert.equal(bindAddressesOverlap(a!, b!), true, `${a} and ${b}`);
    assert.equal(bindAddressesOverlap(b!, a!), true, `${b} and ${a}`);
  }
  for (const [a, b] of [['127.0.0.1', '127.0.0.2'], ['0.0.0.0', '::1'], ['::1', '127.0.0.1'], ['10.0.0.1', '::ffff:10.0.0.2']]) {
    assert.equal(bindAddressesOverlap(a!, b!), false, `${a} and ${b}`);
  }
});

test('host bits just past the prefix are refused, at every bit of a partial byte, and an IPv6 key keeps no bit past its prefix', () => {
  // The first host bit, not only the last byte's: 10.128.0.0/8 and 192.0.2.128/24 are typos too.
  for (const bad of ['10.128.0.0/8', '192.0.2.128/24', '192.0.2.64/25', '11.0.0.0/7', '2001:db8:8000::/32', '2001:db8::8000:0:0:0/64']) {
    assert.equal(parseCidr(bad), null, bad);
  }
  for (const good of ['10.0.0.0/8', '192.0.2.0/24', '192.0.2.128/25', '2001:db8::/33', '2001:db8:0:0:8000::/65', '192.0.2.7/32', '::1/128']) {
    assert.equal(parseCidr(good)?.text, good, good);
  }
  // One /56 is one key, whatever the bits after its 56th (the throttle's ipv6_prefix_bits).
  assert.equal(addressKey('2001:db8:1:2ff:ffff::1', 56), addressKey('2001:db8:1:200::1', 56));
  assert.equal(addressKey('2001:db8:1:2ff::1', 56), '2001:db8:1:200::/56');
  assert.notEqual(addressKey('2001:db8:1:300::1', 56), addressKey('2001:db8:1:200::1', 56));
});

test('bindAddressesOverlap: link-local addresses of two interfaces (zone ids) are two addresses; exactly compares no wildcard', async () => {
  const { bindAddressesOverlap } = await import('../../src/net/cidr.js');
  assert.equal(bindAddressesOverlap('fe80::1%eth0', 'fe80::1%eth1'), false);
  assert.equal(bindAddressesOverlap('fe80::1%eth0', 'fe80::1%eth0'), true);
  assert.equal(bindAddressesOverlap('fe80::1%eth0', 'fe80::1'), false);
  assert.equal(bindAddressesOverlap('::', 'fe80::1%eth0'), true, 'the wildcard covers every interface');
  assert.equal(bindAddressesOverlap('::', '127.0.0.1', true), false);
  assert.equal(bindAddressesOverlap('127.0.0.1', '::ffff:127.0.0.1', true), true);
});
