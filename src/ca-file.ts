/**
 * Reading and checking a CA file the config names (the directory's and the LDAP store map's LDAP
 * over TLS, the throttle's Redis TLS; check-config checks every one, the backends' too), at start
 * or a reload: a failure names the config key, where a bare ENOENT would leave the operator guessing.
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { berLength } from './ber.js';
import { MailfrontError } from './errors.js';

export function readCaFile(file: string, key: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new MailfrontError('CA_FILE_UNREADABLE', 'config', `${key}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
  }
}

/**
 * PEM certificate blocks: a certificate, or OpenSSL's TRUSTED CERTIFICATE (`openssl x509
 * -trustout`: the certificate followed by the uses it is trusted for), which Node's TLS takes
 * as a CA too. An END must be of the BEGIN's kind.
 */
const PEM_BEGIN = /-----BEGIN (?:TRUSTED )?CERTIFICATE-----/g;
const PEM_BLOCK = /-----BEGIN ((?:TRUSTED )?)CERTIFICATE-----([^-]*)-----END \1CERTIFICATE-----/g;

/** A DER element at `at` of `der`: its tag and where its content lies; null when it does not fit. */
function derElement(der: Buffer, at: number): { tag: number; start: number; end: number } | null {
  const length = berLength(der, at);
  if (typeof length === 'string' || length.start + length.length > der.length) return null;
  return { tag: der[at]!, start: length.start, end: length.start + length.length };
}

/**
 * The certificate of a TRUSTED CERTIFICATE block's DER: its first element (X509Certificate
 * cannot read the trust settings after it). The whole DER when it does not begin with a DER
 * SEQUENCE of definite length that fits: X509Certificate then says what is wrong.
 */
function leadingCertificate(der: Buffer): Buffer {
  const element = derElement(der, 0);
  return element !== null && element.tag === 0x30 ? der.subarray(0, element.end) : der;
}

/** The OBJECT IDENTIFIERs (as DER content, hex) directly inside der[start, end). */
function oidsIn(der: Buffer, start: number, end: number): string[] {
  const oids: string[] = [];
  for (let at = start; at < end; ) {
    const element = derElement(der, at);
    if (element === null) break;
    if (element.tag === 0x06) oids.push(der.subarray(element.start, element.end).toString('hex'));
    at = element.end;
  }
  return oids;
}

/** id-kp-serverAuth (1.3.6.1.5.5.7.3.1) and anyExtendedKeyUsage (2.5.29.37.0), as DER content. */
const SERVER_AUTH = '2b06010505070301';
const ANY_USE = '551d2500';

/**
 * Why the trust settings after a TRUSTED CERTIFICATE's certificate (OpenSSL's X509_CERT_AUX:
 * SEQUENCE { trust SEQUENCE OF OID OPTIONAL, reject [0] SEQUENCE OF OID OPTIONAL, … }) keep it
 * from vouching for a server's certificate, or null. mailfront only ever checks servers (the
 * directory, Redis, backends): a CA trusted only for e-mail, or that rejects serverAuth, parses
 * and then fails every connection ("unsuitable certificate purpose").
 */
function trustProblem(der: Buffer, certificateEnd: number): string | null {
  const aux = derElement(der, certificateEnd);
  if (aux === null || aux.tag !== 0x30) return null;
  let trusted: string[] | null = null;
  let rejected: string[] = [];
  for (let at = aux.start; at < aux.end; ) {
    const element = derElement(der, at);
    if (element === null) break;
    if (element.tag === 0x30) trusted = oidsIn(der, element.start, element.end);
    else if (element.tag === 0xa0) rejected = oidsIn(der, element.start, element.end);
    at = element.end;
  }
  if (rejected.includes(SERVER_AUTH) || rejected.includes(ANY_USE)) return 'its trust settings reject serverAuth (openssl x509 -addreject): it vouches for no TLS server';
  if (trusted !== null && trusted.length > 0 && !trusted.includes(SERVER_AUTH) && !trusted.includes(ANY_USE)) return 'its trust settings do not include serverAuth (openssl x509 -addtrust): it vouches for no TLS server';
  return null;
}

/**
 * Why `content` is no usable CA file, or null: it must hold at least one PEM certificate (plain
 * or TRUSTED), and every certificate block in it must parse. Node's TLS takes a CA file with none
 * (empty, garbage, caught half-written by a renewal tool) without a word, and then trusts
 * nothing: every connection fails verification, so a reload that set a working directory up anew
 * with it would refuse every login.
 */
export function caCertificatesProblem(content: Buffer): string | null {
  const text = content.toString('latin1');
  const blocks = [...text.matchAll(PEM_BLOCK)];
  const begun = text.match(PEM_BEGIN)?.length ?? 0;
  if (begun === 0) return `holds no PEM certificate (-----BEGIN CERTIFICATE----- or -----BEGIN TRUSTED CERTIFICATE-----): ${content.length === 0 ? 'the file is empty' : `${content.length} bytes of something else`}`;
  // A BEGIN without its END: the file was cut short (being written?).
  if (blocks.length !== begun) return `ends inside a PEM certificate (${begun - blocks.length} of ${begun} without its -----END …CERTIFICATE-----): a file cut short`;
  for (const [i, [block, trusted, body]] of blocks.entries()) {
    try {
      if (trusted === '') new X509Certificate(block);
      else {
        if (!/^[\sA-Za-z0-9+/]*={0,2}\s*$/.test(body!)) throw new Error('its body is not base64');
        const der = Buffer.from(body!, 'base64');
        const certificate = leadingCertificate(der);
        new X509Certificate(certificate);
        const problem = trustProblem(der, certificate.length);
        if (problem !== null) throw new Error(problem);
      }
    } catch (error) {
      return `holds a PEM certificate that cannot be parsed (certificate ${i + 1} of ${blocks.length}: ${error instanceof Error ? error.message : String(error)})`;
    }
  }
  return null;
}

/** Throws, naming `key` and `file`, unless `content` is a usable CA file (caCertificatesProblem). */
export function checkCaCertificates(content: Buffer, file: string, key: string): void {
  const problem = caCertificatesProblem(content);
  if (problem !== null) throw new MailfrontError('CA_FILE_UNUSABLE', 'config', `${key}: ${file} ${problem}`);
}

/** The content of a CA file, read once: at least one certificate, each parsable (checkCaCertificates). */
export function readCaCertificates(file: string, key: string): Buffer {
  const content = readCaFile(file, key);
  checkCaCertificates(content, file, key);
  return content;
}
