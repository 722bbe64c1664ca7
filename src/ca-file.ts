/**
 * Reading a CA file the config names (for LDAP over TLS and the LDAP store map), at start or a
 * reload: a failure names the config key, where a bare ENOENT would leave the operator guessing.
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
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

/**
 * The certificate of a TRUSTED CERTIFICATE block's DER: its first element (X509Certificate
 * cannot read the trust settings after it). The whole DER when it does not begin with a DER
 * SEQUENCE of definite length that fits: X509Certificate then says what is wrong.
 */
function leadingCertificate(der: Buffer): Buffer {
  if (der.length < 2 || der[0] !== 0x30) return der;
  let length = der[1]!;
  let at = 2;
  if (length & 0x80) {
    const size = length & 0x7f;
    if (size === 0 || size > 4 || der.length < 2 + size) return der;
    length = 0;
    for (; at < 2 + size; at++) length = length * 256 + der[at]!;
  }
  return at + length <= der.length ? der.subarray(0, at + length) : der;
}

/**
 * Throws unless `content` holds at least one PEM certificate (plain or TRUSTED) and every
 * certificate block in it parses. Node's TLS takes a CA file with none (empty, garbage, caught
 * half-written by a renewal tool) without a word, and then trusts nothing: every connection
 * fails verification, so a reload that set a working directory up anew with it would refuse
 * every login.
 */
export function checkCaCertificates(content: Buffer, file: string, key: string): void {
  const text = content.toString('latin1');
  const blocks = [...text.matchAll(PEM_BLOCK)];
  const begun = text.match(PEM_BEGIN)?.length ?? 0;
  const unusable = (why: string): MailfrontError => new MailfrontError('CA_FILE_UNUSABLE', 'config', `${key}: ${file} ${why}`);
  if (begun === 0) throw unusable(`holds no PEM certificate (-----BEGIN CERTIFICATE----- or -----BEGIN TRUSTED CERTIFICATE-----): ${content.length === 0 ? 'the file is empty' : `${content.length} bytes of something else`}`);
  // A BEGIN without its END: the file was cut short (being written?).
  if (blocks.length !== begun) throw unusable(`ends inside a PEM certificate (${begun - blocks.length} of ${begun} without its -----END …CERTIFICATE-----): a file cut short`);
  for (const [i, [block, trusted, body]] of blocks.entries()) {
    try {
      if (trusted === '') new X509Certificate(block);
      else {
        if (!/^[\sA-Za-z0-9+/]*={0,2}\s*$/.test(body!)) throw new Error('its body is not base64');
        new X509Certificate(leadingCertificate(Buffer.from(body!, 'base64')));
      }
    } catch (error) {
      throw unusable(`holds a PEM certificate that cannot be parsed (certificate ${i + 1} of ${blocks.length}: ${error instanceof Error ? error.message : String(error)})`);
    }
  }
}

/** The content of a CA file, read once: at least one certificate, each parsable (checkCaCertificates). */
export function readCaCertificates(file: string, key: string): Buffer {
  const content = readCaFile(file, key);
  checkCaCertificates(content, file, key);
  return content;
}
