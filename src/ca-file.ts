/**
 * Reading a CA file the config names (for LDAP over TLS and the LDAP store map), at start or a
 * reload: a failure names the config key, where a bare ENOENT would leave the operator guessing.
 */
import { readFileSync } from 'node:fs';
import { MailfrontError } from './errors.js';

export function readCaFile(file: string, key: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new MailfrontError('CA_FILE_UNREADABLE', 'config', `${key}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
  }
}
