/**
 * The PROXY protocol (HAProxy's spec, versions 1 and 2): a sans-I/O parser of the header a load
 * balancer puts in front of a client's bytes, a reader that takes exactly that header off a socket
 * and leaves everything after it in the socket for whoever reads next, the decision to believe a
 * header only from trusted peers, encoders for headers sent towards a backend, and the reader of
 * a listener's `proxy_protocol` section. It does not decide what a listener or session does with
 * the result, and it never closes a socket itself.
 */
import { SocketAddress, isIP, isIPv4, isIPv6 } from 'node:net';
import type { Socket } from 'node:net';
import { MailfrontError } from '../errors.js';
import { IssueList, at, int, readSection, strList } from '../config/validate.js';

/** A v1 header is at most 107 bytes, CRLF included (spec §2.1: "PROXY UNKNOWN" with two full IPv6 addresses). */
export const MAX_PROXY_V1_BYTES = 107;
/** The 16 fixed bytes of a v2 header (signature, version/command, family, length). */
export const PROXY_V2_FIXED_BYTES = 16;
/** Largest v2 address-and-TLV block accepted: addresses take at most 216 bytes, leaving room for TLVs (ALPN, authority, SSL details). */
export const MAX_PROXY_V2_PAYLOAD_BYTES = 2048;
/** Default time a trusted peer has to send its header after connecting (HAProxy writes it at once). */
export const DEFAULT_PROXY_HEADER_TIMEOUT_MS = 5_000;

const V1_SIGNATURE = Buffer.from('PROXY ', 'latin1');
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const CR = 0x0d;
const LF = 0x0a;

/** One end of a proxied connection. */
export interface ProxyEndpoint {
  readonly address: string;
  readonly port: number;
}

/** A header that names the client: use `source` as the client's address. */
export interface ProxiedHeader {
  readonly version: 1 | 2;
  readonly kind: 'proxied';
  readonly family: 'tcp4' | 'tcp6';
  readonly source: ProxyEndpoint;
  readonly destination: ProxyEndpoint;
  /** Bytes the header took on the wire. */
  readonly length: number;
  /**
   * From a v2 header's PP2_TYPE_SSL TLV (HAProxy's send-proxy-v2-ssl), when it has one: whether
   * the client's connection to the balancer used TLS (PP2_CLIENT_SSL). Absent: not said.
   */
  readonly clientTls?: boolean;
}

/**
 * A header that names no client: v2 LOCAL (the balancer's own health check), v1 UNKNOWN, or v2
 * PROXY over a family other than TCP/IP. The connection's own endpoints apply (spec §2.1, §2.2).
 */
export interface UnproxiedHeader {
  readonly version: 1 | 2;
  readonly kind: 'local' | 'unknown';
  readonly length: number;
}

/** A parsed PROXY header. */
export type ProxyHeader = ProxiedHeader | UnproxiedHeader;

/** What `parseProxyHeader` found in the bytes so far. */
export type ProxyParseResult =
  | { readonly status: 'incomplete' }
  | { readonly status: 'done'; readonly header: ProxyHeader; readonly rest: Buffer }
  | { readonly status: 'error'; readonly error: MailfrontError };

function fail(code: 'PROXY_HEADER_MISSING' | 'PROXY_HEADER_TOO_LONG' | 'PROXY_HEADER_MALFORMED' | 'PROXY_HEADER_UNSUPPORTED', message: string): ProxyParseResult {
  return { status: 'error', error: new MailfrontError(code, 'client-protocol', message) };
}

/** True when `bytes` and `signature` agree on their common length. */
function agreesWith(bytes: Uint8Array, signature: Uint8Array): boolean {
  const n = Math.min(bytes.length, signature.length);
  for (let i = 0; i < n; i++) if (bytes[i] !== signature[i]) return false;
  return true;
}

/**
 * True when `bytes` (a connection's first bytes) begin with a whole v1 or v2 signature. Lets a
 * session on a PROXY listener close an untrusted peer that sends a header instead of a command.
 */
export function startsWithProxySignature(bytes: Uint8Array): boolean {
  return (bytes.length >= V1_SIGNATURE.length && agreesWith(bytes, V1_SIGNATURE)) || (bytes.length >= V2_SIGNATURE.length && agreesWith(bytes, V2_SIGNATURE));
}

/**
 * What a connection's first bytes say so far: a whole v1 or v2 signature ('header'), bytes that
 * can no longer become one ('not'), or a beginning of one that more bytes will decide ('more': a
 * header sent a few bytes at a time must be found as surely as one sent whole).
 */
export function proxySignatureSoFar(bytes: Uint8Array): 'header' | 'not' | 'more' {
  if (startsWithProxySignature(bytes)) return 'header';
  return agreesWith(bytes, V1_SIGNATURE) || agreesWith(bytes, V2_SIGNATURE) ? 'more' : 'not';
}

/** An address as mailfront prints it everywhere: IPv4-mapped IPv6 as plain IPv4, IPv6 in RFC 5952 form. */
export function plainAddress(address: string): string {
  if (isIPv4(address)) return address;
  if (!isIPv6(address) || address.includes('%')) return address;
  const canonical = new SocketAddress({ address, family: 'ipv6' }).address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(canonical);
  return mapped?.[1] ?? canonical;
}

function ipv6FromBytes(bytes: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return plainAddress(groups.join(':'));
}

const PORT_TEXT = /^(0|[1-9][0-9]{0,4})$/;

function v1Port(text: string): number | undefined {
  if (!PORT_TEXT.test(text)) return undefined;
  const port = Number(text);
  return port <= 65535 ? port : undefined;
}

/** Parses a complete v1 line (without CRLF); `length` is the header's size on the wire. */
function parseV1Line(line: string, length: number, rest: Buffer): ProxyParseResult {
  const parts = line.split(' ');
  const protocol = parts[1];
  if (protocol === 'UNKNOWN') return { status: 'done', header: { version: 1, kind: 'unknown', length }, rest };
  if (protocol !== 'TCP4' && protocol !== 'TCP6') return fail('PROXY_HEADER_MALFORMED', `PROXY v1: unknown protocol ${JSON.stringify(protocol ?? '')}`);
  if (parts.length !== 6) return fail('PROXY_HEADER_MALFORMED', 'PROXY v1: expected "PROXY TCP4|TCP6 <source> <destination> <source port> <destination port>"');
  const [, , sourceText, destinationText, sourcePortText, destinationPortText] = parts as [string, string, string, string, string, string];
  const validAddress = protocol === 'TCP4' ? isIPv4 : (a: string) => isIPv6(a) && !a.includes('%');
  if (!validAddress(sourceText) || !validAddress(destinationText)) return fail('PROXY_HEADER_MALFORMED', `PROXY v1: addresses that are not ${protocol === 'TCP4' ? 'IPv4' : 'IPv6'}`);
  const sourcePort = v1Port(sourcePortText);
  const destinationPort = v1Port(destinationPortText);
  if (sourcePort === undefined || destinationPort === undefined) return fail('PROXY_HEADER_MALFORMED', 'PROXY v1: ports must be decimal numbers from 0 to 65535');
  return {
    status: 'done',
    header: {
      version: 1,
      kind: 'proxied',
      family: protocol === 'TCP4' ? 'tcp4' : 'tcp6',
      source: { address: plainAddress(sourceText), port: sourcePort },
      destination: { address: plainAddress(destinationText), port: destinationPort },
      length,
    },
    rest,
  };
}

function parseV1(bytes: Buffer): ProxyParseResult {
  // Decided byte by byte in order, so the answer never depends on how the bytes were split.
  const scan = Math.min(bytes.length, MAX_PROXY_V1_BYTES);
  for (let i = 0; i < scan; i++) {
    const c = bytes[i]!;
    if (c === CR) {
      if (i + 2 > MAX_PROXY_V1_BYTES) return fail('PROXY_HEADER_TOO_LONG', `PROXY v1: no CRLF within ${MAX_PROXY_V1_BYTES} bytes`);
      if (i + 1 >= bytes.length) return { status: 'incomplete' };
      if (bytes[i + 1] !== LF) return fail('PROXY_HEADER_MALFORMED', 'PROXY v1: CR not followed by LF');
      return parseV1Line(bytes.toString('latin1', 0, i), i + 2, bytes.subarray(i + 2));
    }
    if (c < 0x20 || c > 0x7e) return fail('PROXY_HEADER_MALFORMED', 'PROXY v1: a byte that is not printable ASCII before CRLF');
  }
  if (bytes.length >= MAX_PROXY_V1_BYTES) return fail('PROXY_HEADER_TOO_LONG', `PROXY v1: no CRLF within ${MAX_PROXY_V1_BYTES} bytes`);
  return { status: 'incomplete' };
}

/** PP2_TYPE_SSL (spec §2.2.5): the client's connection to the balancer, TLS or not. */
const PP2_TYPE_SSL = 0x20;
/** Bit of PP2_TYPE_SSL's client field: the client connected over SSL/TLS. */
const PP2_CLIENT_SSL = 0x01;

/**
 * What the TLVs after a v2 address block (spec §2.2: type, 16-bit length, value) say of the
 * client's TLS: PP2_TYPE_SSL's PP2_CLIENT_SSL bit, or undefined without one. Other types are
 * skipped, as the spec asks. Bytes that are no whole TLV (padding, a sender's own layout) end
 * the walk without failing the header, which was accepted before TLVs were read; an SSL TLV too
 * short for its client field is no claim of TLS.
 */
function clientTlsOf(tlvs: Buffer): boolean | undefined {
  let clientTls: boolean | undefined;
  for (let offset = 0; offset + 3 <= tlvs.length; ) {
    const type = tlvs[offset]!;
    const length = tlvs.readUInt16BE(offset + 1);
    if (offset + 3 + length > tlvs.length) break;
    // client (1 byte) and verify (4 bytes), then sub-TLVs (version, cipher...) not needed here.
    if (type === PP2_TYPE_SSL && length >= 5) clientTls = (tlvs[offset + 3]! & PP2_CLIENT_SSL) !== 0;
    offset += 3 + length;
  }
  return clientTls;
}

function parseV2(bytes: Buffer): ProxyParseResult {
  if (bytes.length > 12) {
    const versionCommand = bytes[12]!;
    if (versionCommand >> 4 !== 2) return fail('PROXY_HEADER_MALFORMED', `PROXY v2: version ${versionCommand >> 4}, expected 2`);
    if ((versionCommand & 0x0f) > 1) return fail('PROXY_HEADER_MALFORMED', `PROXY v2: unknown command ${versionCommand & 0x0f}`);
  }
  if (bytes.length > 13) {
    const family = bytes[13]!;
    if (family >> 4 > 3 || (family & 0x0f) > 2) return fail('PROXY_HEADER_MALFORMED', `PROXY v2: unknown address family/transport byte 0x${family.toString(16)}`);
  }
  if (bytes.length < PROXY_V2_FIXED_BYTES) return { status: 'incomplete' };
  const payloadLength = bytes.readUInt16BE(14);
  if (payloadLength > MAX_PROXY_V2_PAYLOAD_BYTES) return fail('PROXY_HEADER_TOO_LONG', `PROXY v2: ${payloadLength} bytes of addresses and TLVs, at most ${MAX_PROXY_V2_PAYLOAD_BYTES} accepted`);
  const length = PROXY_V2_FIXED_BYTES + payloadLength;
  if (bytes.length < length) return { status: 'incomplete' };
  const rest = bytes.subarray(length);
  const command = bytes[12]! & 0x0f;
  const addressFamily = bytes[13]! >> 4;
  const transport = bytes[13]! & 0x0f;
  // LOCAL: the balancer speaks for itself (health checks); the address block is to be ignored (§2.2).
  if (command === 0) return { status: 'done', header: { version: 2, kind: 'local', length }, rest };
  // UNSPEC and AF_UNIX sources say nothing about a client on the network: the connection's own endpoints apply.
  if (addressFamily === 0 || addressFamily === 3) return { status: 'done', header: { version: 2, kind: 'unknown', length }, rest };
  if (transport !== 1) return fail('PROXY_HEADER_UNSUPPORTED', 'PROXY v2: only STREAM (TCP) connections can carry IMAP or POP3');
  const payload = bytes.subarray(PROXY_V2_FIXED_BYTES, length);
  if (addressFamily === 1) {
    if (payload.length < 12) return fail('PROXY_HEADER_MALFORMED', `PROXY v2: ${payload.length} bytes for an IPv4 address block of 12`);
    const ip = (offset: number): string => `${payload[offset]}.${payload[offset + 1]}.${payload[offset + 2]}.${payload[offset + 3]}`;
    return {
      status: 'done',
      header: { version: 2, kind: 'proxied', family: 'tcp4', source: { address: ip(0), port: payload.readUInt16BE(8) }, destination: { address: ip(4), port: payload.readUInt16BE(10) }, length, ...withClientTls(clientTlsOf(payload.subarray(12))) },
      rest,
    };
  }
  if (payload.length < 36) return fail('PROXY_HEADER_MALFORMED', `PROXY v2: ${payload.length} bytes for an IPv6 address block of 36`);
  return {
    status: 'done',
    header: {
      version: 2,
      kind: 'proxied',
      family: 'tcp6',
      source: { address: ipv6FromBytes(payload.subarray(0, 16)), port: payload.readUInt16BE(32) },
      destination: { address: ipv6FromBytes(payload.subarray(16, 32)), port: payload.readUInt16BE(34) },
      length,
      ...withClientTls(clientTlsOf(payload.subarray(36))),
    },
    rest,
  };
}

function withClientTls(clientTls: boolean | undefined): { clientTls?: boolean } {
  return clientTls === undefined ? {} : { clientTls };
}

/**
 * Parses a PROXY v1 or v2 header at the start of `bytes` (everything received so far): `incomplete`
 * until it can decide, then the header and the bytes after it, or an error as soon as the bytes
 * cannot become a valid header. Of v2's TLVs, PP2_TYPE_SSL is read (`clientTls`); the others are skipped.
 */
export function parseProxyHeader(bytes: Buffer): ProxyParseResult {
  if (bytes.length === 0) return { status: 'incomplete' };
  if (bytes[0] === V1_SIGNATURE[0]) {
    if (!agreesWith(bytes, V1_SIGNATURE)) return fail('PROXY_HEADER_MISSING', 'the connection did not start with a PROXY protocol header');
    return bytes.length < V1_SIGNATURE.length ? { status: 'incomplete' } : parseV1(bytes);
  }
  if (!agreesWith(bytes, V2_SIGNATURE)) return fail('PROXY_HEADER_MISSING', 'the connection did not start with a PROXY protocol header');
  return bytes.length < V2_SIGNATURE.length ? { status: 'incomplete' } : parseV2(bytes);
}

export interface ReadProxyHeaderOptions {
  /** Deadline for the whole header from now. */
  readonly timeoutMs: number;
  /** Stops waiting (e.g. the server is stopping). */
  readonly signal?: AbortSignal;
}

/**
 * Reads exactly one PROXY header from `socket` and puts every byte after it back into the socket
 * (`unshift`), so the next reader, a TLS layer included, sees the client's first byte first.
 * Rejects with a MailfrontError (PROXY_HEADER_MISSING, _MALFORMED, _TOO_LONG, _UNSUPPORTED,
 * _TIMEOUT, _CLOSED, ABORTED); the socket is left open for the caller to close.
 */
export function readProxyHeader(socket: Socket, options: ReadProxyHeaderOptions): Promise<ProxyHeader> {
  return new Promise<ProxyHeader>((resolve, reject) => {
    let received: Buffer = Buffer.alloc(0);
    let settled = false;
    const settle = (outcome: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      options.signal?.removeEventListener('abort', onAbort);
      outcome();
    };
    const failWith = (code: string, kind: 'client-protocol' | 'limit' | 'aborted', message: string): void =>
      settle(() => reject(new MailfrontError(code, kind, message)));
    // Paused mode (read()) rather than 'data': no byte is emitted to anyone else while we look,
    // and the bytes after the header go back to the front of the socket's buffer.
    function onReadable(): void {
      for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
        received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
        const result = parseProxyHeader(received);
        if (result.status === 'incomplete') continue;
        if (result.status === 'error') return settle(() => reject(result.error));
        return settle(() => {
          if (result.rest.length > 0) socket.unshift(result.rest);
          resolve(result.header);
        });
      }
    }
    function onEnd(): void {
      failWith('PROXY_HEADER_CLOSED', 'client-protocol', 'the connection ended before a complete PROXY header');
    }
    function onError(error: Error): void {
      failWith('PROXY_HEADER_CLOSED', 'client-protocol', `the connection failed before a complete PROXY header: ${error.message}`);
    }
    function onAbort(): void {
      failWith('ABORTED', 'aborted', 'stopped waiting for a PROXY header');
    }
    const timer = setTimeout(() => failWith('PROXY_HEADER_TIMEOUT', 'limit', `no complete PROXY header within ${options.timeoutMs} ms`), options.timeoutMs);
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);
  });
}

/** Who is on the other end of an accepted connection, after any PROXY header. */
export interface ConnectionEndpoints {
  /** The client: the header's source when a trusted peer sent a proxied header, else the peer. */
  readonly client: ProxyEndpoint;
  /** The address the client connected to (the header's destination, or our own socket's). */
  readonly local: ProxyEndpoint;
  /** The directly connected peer (the load balancer when proxied). */
  readonly peer: ProxyEndpoint;
  /** The header, when the peer is trusted and sent one. */
  readonly header?: ProxyHeader;
}

export interface AcceptProxyOptions extends ReadProxyHeaderOptions {
  /** True for peers allowed (and required) to send a PROXY header; gets plain addresses (no ::ffff:). */
  readonly isTrusted: (address: string) => boolean;
}

/**
 * The endpoints of a connection taken without a PROXY header: the peer is the client, and the
 * local address is the socket's own, asked of the kernel (getsockname) only when something reads
 * it. Only a PROXY header to the backend does, so a login without one skips the system call.
 * Addresses are in plain form. A class, not an object with a getter, so that a session holds no
 * closure for it.
 */
class SocketEndpoints implements ConnectionEndpoints {
  readonly client: ProxyEndpoint;
  readonly peer: ProxyEndpoint;
  #local: ProxyEndpoint | undefined;

  constructor(private readonly socket: Socket) {
    this.peer = { address: plainAddress(socket.remoteAddress ?? 'unknown'), port: socket.remotePort ?? 0 };
    this.client = this.peer;
  }

  get local(): ProxyEndpoint {
    this.#local ??= { address: plainAddress(this.socket.localAddress ?? 'unknown'), port: this.socket.localPort ?? 0 };
    return this.#local;
  }
}

/** The endpoints of `socket` itself (see SocketEndpoints). */
export function socketEndpoints(socket: Socket): ConnectionEndpoints {
  return new SocketEndpoints(socket);
}

/**
 * For a listener with PROXY protocol on: a trusted peer must start with a header, which then names
 * the client; any other peer is the client itself and nothing is read (the session must still
 * close it if it sends a header: see `startsWithProxySignature`). Rejects like `readProxyHeader`.
 */
export async function acceptProxyHeader(socket: Socket, options: AcceptProxyOptions): Promise<ConnectionEndpoints> {
  const own = socketEndpoints(socket);
  if (!options.isTrusted(own.peer.address)) return own;
  const header = await readProxyHeader(socket, options);
  if (header.kind === 'proxied') return { client: header.source, local: header.destination, peer: own.peer, header };
  return { client: own.peer, local: own.local, peer: own.peer, header };
}

function addressFamily(source: ProxyEndpoint, destination: ProxyEndpoint): 4 | 6 {
  const s = isIP(source.address);
  const d = isIP(destination.address);
  if (s === 0 || d === 0) throw new MailfrontError('PROXY_ADDRESS_INVALID', 'internal', `cannot encode a PROXY header for ${source.address} → ${destination.address}`);
  return s === 4 && d === 4 ? 4 : 6;
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new MailfrontError('PROXY_ADDRESS_INVALID', 'internal', `cannot encode port ${port} in a PROXY header`);
  return port;
}

function ipv6Bytes(address: string): Buffer {
  const text = isIPv4(address) ? `::ffff:${address}` : new SocketAddress({ address, family: 'ipv6' }).address;
  const groups = (part: string | undefined): number[] =>
    part === undefined || part === ''
      ? []
      : part.split(':').flatMap((group) => {
          if (!group.includes('.')) return [parseInt(group, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = group.split('.').map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const [head, tail] = text.split('::');
  const first = groups(head);
  const last = groups(tail);
  const all = tail === undefined ? first : [...first, ...new Array<number>(8 - first.length - last.length).fill(0), ...last];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

/**
 * A PROXY v2 header (PROXY command, STREAM) announcing `source` → `destination`; IPv4 when both
 * are IPv4, else IPv6 with IPv4 addresses mapped (::ffff:a.b.c.d).
 */
export function encodeProxyV2(source: ProxyEndpoint, destination: ProxyEndpoint): Buffer {
  const family = addressFamily(source, destination);
  const payload = Buffer.alloc(family === 4 ? 12 : 36);
  if (family === 4) {
    Buffer.from(source.address.split('.').map(Number)).copy(payload, 0);
    Buffer.from(destination.address.split('.').map(Number)).copy(payload, 4);
    payload.writeUInt16BE(checkPort(source.port), 8);
    payload.writeUInt16BE(checkPort(destination.port), 10);
  } else {
    ipv6Bytes(source.address).copy(payload, 0);
    ipv6Bytes(destination.address).copy(payload, 16);
    payload.writeUInt16BE(checkPort(source.port), 32);
    payload.writeUInt16BE(checkPort(destination.port), 34);
  }
  const fixed = Buffer.alloc(4);
  fixed[0] = 0x21; // version 2, command PROXY
  fixed[1] = family === 4 ? 0x11 : 0x21; // AF_INET or AF_INET6, STREAM
  fixed.writeUInt16BE(payload.length, 2);
  return Buffer.concat([V2_SIGNATURE, fixed, payload]);
}

/** A PROXY v2 LOCAL header: the connection is the sender's own (health checks). */
export function encodeProxyV2Local(): Buffer {
  return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
}

/** A PROXY v1 header line for `source` → `destination` (TCP4 when both are IPv4, else TCP6). */
export function encodeProxyV1(source: ProxyEndpoint, destination: ProxyEndpoint): Buffer {
  // Plain forms first (::ffff:a.b.c.d is IPv4; no zone id, which v1 cannot carry), then the
  // family: in a TCP6 line an IPv4 address is written mapped.
  const plain = (e: ProxyEndpoint): ProxyEndpoint => ({ address: plainAddress(e.address.split('%')[0] ?? e.address), port: e.port });
  const [from, to] = [plain(source), plain(destination)];
  const family = addressFamily(from, to);
  const text = (e: ProxyEndpoint): string => (family === 4 || !isIPv4(e.address) ? e.address : `::ffff:${e.address}`);
  return Buffer.from(`PROXY TCP${family} ${text(from)} ${text(to)} ${checkPort(from.port)} ${checkPort(to.port)}\r\n`, 'latin1');
}

/** A listener's `proxy_protocol` section. */
export interface ProxyListenerConfig {
  /** CIDR blocks (or single addresses) of the load balancers that must send a header. */
  readonly trustedNetworks: readonly string[];
  readonly headerTimeoutMs: number;
}

/** Keys of a listener's `proxy_protocol` section. */
export const PROXY_LISTENER_KEYS = ['trusted_networks', 'header_timeout_ms'] as const;

/** True for `a.b.c.d`, `a.b.c.d/n` (n ≤ 32), an IPv6 address, or one with `/n` (n ≤ 128). */
export function isCidr(text: string): boolean {
  const [address = '', prefix, extra] = text.split('/');
  if (extra !== undefined || address.includes('%')) return false;
  const family = isIP(address);
  if (family === 0) return false;
  if (prefix === undefined) return true;
  if (!/^(0|[1-9][0-9]{0,2})$/.test(prefix)) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

/**
 * Reads a listener's optional `proxy_protocol` section (undefined when absent: no PROXY protocol
 * on that listener). `validNetwork` checks one entry of `trusted_networks` (the CIDR matcher's
 * parser, when there is one; a syntax check by default).
 */
export function readProxyConfig(v: unknown, path: string, issues: IssueList, validNetwork: (text: string) => boolean = isCidr): ProxyListenerConfig | undefined {
  if (v === undefined || v === null) return undefined;
  const o = readSection(v, path, PROXY_LISTENER_KEYS, issues) ?? {};
  const trustedNetworks = strList(o, 'trusted_networks', path, issues);
  trustedNetworks.forEach((n, i) => {
    // Worded as the top-level trusted_networks: 10.0.0.1/8 (host bits set) is refused there too.
    if (!validNetwork(n)) issues.add(at(at(path, 'trusted_networks'), i), 'an address block such as 10.0.0.0/8 or 2001:db8::/32, without host bits', n);
  });
  return { trustedNetworks, headerTimeoutMs: int(o, 'header_timeout_ms', path, issues, 100, 60_000, DEFAULT_PROXY_HEADER_TIMEOUT_MS) };
}

/** How mailfront announces the client to a backend slot (`backend.proxy_protocol`). */
export type BackendProxyProtocol = 'none' | 'v1' | 'v2';

/** The choices of `backend.proxy_protocol`, for the backend section reader. */
export const BACKEND_PROXY_PROTOCOLS: readonly BackendProxyProtocol[] = ['none', 'v1', 'v2'];

/**
 * The header to write first on a backend connection, or null for `none`. Takes the connection's
 * endpoints, not its local address, so that `none` never reads `local` (for a connection without
 * a PROXY header that read is a getsockname).
 */
export function backendProxyHeader(mode: BackendProxyProtocol, client: ProxyEndpoint, endpoints: Pick<ConnectionEndpoints, 'local'>): Buffer | null {
  switch (mode) {
    case 'none':
      return null;
    case 'v1':
      return encodeProxyV1(client, endpoints.local);
    case 'v2':
      return encodeProxyV2(client, endpoints.local);
  }
}
