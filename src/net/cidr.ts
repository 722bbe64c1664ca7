/**
 * IP address blocks (CIDR) for IPv4 and IPv6, and the address keys that per-address counters use.
 * IPv4 and IPv4-mapped IPv6 (`::ffff:a.b.c.d`) are one address space here: a dual-stack listener
 * reports IPv4 clients as `::ffff:10.1.2.3`, and that must match a rule written as `10.0.0.0/8`.
 * An IPv4 client behind a translator (NAT64, SIIT: `64:ff9b::10.1.2.3`) is a distinct IPv4 client
 * for the address keys only, not for blocks (see setNat64Prefixes()).
 * Must not: resolve host names, do I/O, or know what the blocks are used for.
 */
import { isIP } from 'node:net';

/**
 * IPv6 addresses are counted per /64 by default (connection limits; the throttle counts per throttle.ipv6_prefix_bits, a /56): a single customer line (or a single cloud VM) usually gets
 * a whole /64 (RFC 6177), so counting single IPv6 addresses would let one attacker rotate through
 * 2^64 of them.
 */
export const IPV6_SUBJECT_PREFIX_BITS = 64;

/** An address block in the 128-bit space (IPv4 blocks are stored as IPv4-mapped IPv6). */
export interface Cidr {
  /** The network address, 16 bytes, host bits zero. */
  readonly network: Uint8Array;
  /** Prefix length in the 128-bit space (an IPv4 /8 is 104 here). */
  readonly prefixBits: number;
  /** The block as written in the config, for messages. */
  readonly text: string;
}

const V4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

function parseV4(text: string): number[] | null {
  if (isIP(text) !== 4) return null;
  return text.split('.').map(Number);
}

function parseV6(text: string): Uint8Array | null {
  if (isIP(text) !== 6) return null;
  let body = text;
  // An IPv4 tail ("::ffff:1.2.3.4") becomes two hex groups.
  const lastColon = body.lastIndexOf(':');
  if (body.indexOf('.', lastColon) >= 0) {
    const v4 = parseV4(body.slice(lastColon + 1));
    if (v4 === null) return null;
    const [a, b, c, d] = v4 as [number, number, number, number];
    body = `${body.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = body.split('::');
  const head = halves[0] === undefined || halves[0] === '' ? [] : halves[0].split(':');
  const tail = halves.length < 2 || halves[1] === undefined || halves[1] === '' ? [] : halves[1].split(':');
  const missing = 8 - head.length - tail.length;
  if (missing < 0 || (halves.length === 1 && missing !== 0)) return null;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail];
  const out = new Uint8Array(16);
  groups.forEach((group, i) => {
    const value = parseInt(group, 16);
    out[i * 2] = value >> 8;
    out[i * 2 + 1] = value & 0xff;
  });
  return out;
}

/** Parses an IP literal into 16 bytes (IPv4 as IPv4-mapped IPv6); a zone id (`%eth0`) is ignored; null when it is not an IP literal. */
export function parseAddress(text: string): Uint8Array | null {
  const zone = text.indexOf('%');
  const bare = zone >= 0 ? text.slice(0, zone) : text;
  const v4 = parseV4(bare);
  if (v4 !== null) return Uint8Array.from([...V4_MAPPED_PREFIX, ...v4]);
  return parseV6(bare);
}

/** `ipv4` for 0.0.0.0 (every IPv4 address), `all` for :: (every address, bound dual-stack as node does), else undefined. */
export function isWildcard(address: string): 'ipv4' | 'all' | undefined {
  const bytes = parseAddress(address);
  if (bytes === null) return undefined;
  if (bytes.every((byte) => byte === 0)) return 'all';
  return isV4Mapped(bytes) && bytes.subarray(12).every((byte) => byte === 0) ? 'ipv4' : undefined;
}

/**
 * Whether two listening addresses would take the same port from each other on Linux: the same
 * address in any spelling (`::ffff:127.0.0.1` is 127.0.0.1; a zone id tells link-local ones
 * apart), or a wildcard that covers the other (see isWildcard). `exactly`: the same address only.
 */
export function bindAddressesOverlap(a: string, b: string, exactly = false): boolean {
  const x = parseAddress(a);
  const y = parseAddress(b);
  if (x === null || y === null) return a === b;
  if (!exactly) {
    const wa = isWildcard(a);
    const wb = isWildcard(b);
    if (wa === 'all' || wb === 'all') return true;
    if ((wa === 'ipv4' && isV4Mapped(y)) || (wb === 'ipv4' && isV4Mapped(x))) return true;
  }
  const zone = (text: string): string => (text.includes('%') ? text.slice(text.indexOf('%')) : '');
  return x.every((byte, i) => byte === y[i]) && zone(a) === zone(b);
}

function isV4Mapped(bytes: Uint8Array): boolean {
  return V4_MAPPED_PREFIX.every((b, i) => bytes[i] === b);
}

function maskInPlace(bytes: Uint8Array, prefixBits: number): void {
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, prefixBits - i * 8));
    bytes[i] = (bytes[i] as number) & ((0xff << (8 - keep)) & 0xff);
  }
}

/**
 * Parses `10.0.0.0/8`, `2001:db8::/32`, or a single address (`192.0.2.7` = /32, `::1` = /128).
 * Null when it is not a block, or when host bits are set (`10.0.0.1/8` is almost always a typo).
 */
export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf('/');
  const addressText = slash < 0 ? text : text.slice(0, slash);
  if (addressText.includes('%')) return null;
  const address = parseAddress(addressText);
  if (address === null) return null;
  const v4 = isIP(addressText) === 4;
  const maxBits = v4 ? 32 : 128;
  let bits = maxBits;
  if (slash >= 0) {
    const suffix = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(suffix) || Number(suffix) > maxBits) return null;
    bits = Number(suffix);
  }
  const prefixBits = v4 ? 96 + bits : bits;
  const network = Uint8Array.from(address);
  maskInPlace(network, prefixBits);
  if (!network.every((b, i) => b === address[i])) return null;
  return { network, prefixBits, text };
}

function inBlock(address: Uint8Array, block: Cidr): boolean {
  const full = block.prefixBits >> 3;
  for (let i = 0; i < full; i++) if (address[i] !== block.network[i]) return false;
  const rest = block.prefixBits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((address[full] as number) & mask) === block.network[full];
}

/** A set of address blocks that answers "is this client address inside one of them?". */
export class CidrSet {
  private readonly blocks: readonly Cidr[];

  /** Throws on a text that is not a block: validate config with parseCidr first. */
  constructor(blocks: readonly (Cidr | string)[]) {
    this.blocks = blocks.map((b) => {
      if (typeof b !== 'string') return b;
      const parsed = parseCidr(b);
      if (parsed === null) throw new Error(`not an address block: ${b}`);
      return parsed;
    });
  }

  /** Number of blocks. */
  get size(): number {
    return this.blocks.length;
  }

  /** True when `address` (an IP literal as a socket reports it) is in one of the blocks; false for anything that is not an IP literal. */
  contains(address: string): boolean {
    if (this.blocks.length === 0) return false;
    const parsed = parseAddress(address);
    if (parsed === null) return false;
    return this.blocks.some((block) => inBlock(parsed, block));
  }
}

/** A dotted quad in canonical form (no leading zeros), as sockets report IPv4 peers. */
const DOTTED_QUAD = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** The well-known prefix of IPv4-embedded IPv6 addresses (RFC 6052 §2.1), used by NAT64 and SIIT translators. */
export const NAT64_WELL_KNOWN_PREFIX = '64:ff9b::/96';

/** Prefix length of the translator prefixes read (RFC 6052 §2.2: only at /96 is the IPv4 address the last 32 bits). */
export const NAT64_PREFIX_BITS = 96;

/**
 * A translator prefix (`64:ff9b::/96`, `2001:db8:46::/96`): an IPv6 block of exactly /96
 * without host bits; null for anything else (IPv4 blocks, other lengths, host bits set).
 */
export function parseNat64Prefix(text: string): Cidr | null {
  const block = text.includes(':') ? parseCidr(text) : null;
  return block !== null && block.prefixBits === NAT64_PREFIX_BITS ? block : null;
}

const WELL_KNOWN: readonly Cidr[] = Object.freeze([parseNat64Prefix(NAT64_WELL_KNOWN_PREFIX) as Cidr]);

/** The translator prefixes addressKey() reads IPv4 addresses from, unless given others. */
let nat64InForce: readonly Cidr[] = WELL_KNOWN;

/**
 * Sets the translator prefixes in force for the whole process (the config's `nat64_prefixes`, at
 * start and at each reload): behind one, every IPv4 client reaches mailfront as the prefix and its
 * own IPv4 address, which addressKey() keys as that IPv4 address rather than one /64 for all.
 * Throws on a text that is not a /96: validate config with parseNat64Prefix first.
 */
export function setNat64Prefixes(prefixes: readonly string[]): void {
  nat64InForce = prefixes.map((text) => {
    const parsed = parseNat64Prefix(text);
    if (parsed === null) throw new Error(`not an IPv6 /96 prefix: ${text}`);
    return parsed;
  });
}

/**
 * The key a per-address counter uses for a client: the dotted IPv4 address (also for
 * IPv4-mapped IPv6, and for an address in one of the translator prefixes `nat64`, whose last 32
 * bits are an IPv4 client's), or the IPv6 network of `ipv6PrefixBits` as `2001:db8:0:1::/64`.
 * Anything that is not an IP literal is returned as it is.
 */
export function addressKey(address: string, ipv6PrefixBits = IPV6_SUBJECT_PREFIX_BITS, nat64: readonly Cidr[] = nat64InForce): string {
  // A dotted quad as sockets report it is its own key (the common case, on every connection).
  if (DOTTED_QUAD.test(address)) return address;
  const parsed = parseAddress(address);
  if (parsed === null) return address;
  // Behind a translator every IPv4 client shares its /64: keyed by the /64, they would all share
  // one connection limit and one throttle count (one attacker's failures would refuse them all).
  if (isV4Mapped(parsed) || nat64.some((prefix) => inBlock(parsed, prefix))) return Array.from(parsed.subarray(12)).join('.');
  maskInPlace(parsed, ipv6PrefixBits);
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((parsed[i] as number) << 8) | (parsed[i + 1] as number)).toString(16));
  // Written uncompressed after the last non-zero group within the prefix: stable and unambiguous.
  const kept = Math.ceil(ipv6PrefixBits / 16);
  return `${groups.slice(0, kept).join(':')}${kept < 8 ? '::' : ''}/${ipv6PrefixBits}`;
}
