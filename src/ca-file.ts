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

const PEM_BEGIN = /-----BEGIN CERTIFICATE-----/g;
const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g;

/**
 * Throws unless `content` holds at least one PEM certificate and every certificate block in it
 * parses. Node's TLS takes a CA file with none (empty, garbage, caught half-written by a renewal
 * tool) without a word, and then trusts nothing: every connection fails verification, so a
 * reload that set a working directory up anew with it would refuse every login.
 */
export function checkCaCertificates(content: Buffer, file: string, key: string): void {
  const text = content.toString('latin1');
  const blocks = text.match(PEM_BLOCK) ?? [];
  const begun = text.match(PEM_BEGIN)?.length ?? 0;
  const unusable = (why: string): MailfrontError => new MailfrontError('CA_FILE_UNUSABLE', 'config', `${key}: ${file} ${why}`);
  if (begun === 0) throw unusable(`holds no PEM certificate (-----BEGIN CERTIFICATE-----): ${content.length === 0 ? 'the file is empty' : `${content.length} bytes of something else`}`);
  // A BEGIN without its END: the file was cut short (being written?).
  if (blocks.length !== begun) throw unusable(`ends inside a PEM certificate (${begun - blocks.length} of ${begun} without -----END CERTIFICATE-----): a file cut short`);
  for (const [i, block] of blocks.entries()) {
    try {
      new X509Certificate(block);
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
