/**
 * What the session needs from a directory, independent of LDAP: check a user's password and
 * name the user's store. Also the one username normalisation every other part uses, so that
 * no two spellings of one user are treated differently.
 */
import type { UsernameConfig } from '../config/schema.js';

/** A user the directory has authenticated. */
export interface DirectoryUser {
  /** The normalised user name. */
  readonly user: string;
  /** Where the directory keeps the user (an LDAP DN); for logs. */
  readonly dn: string;
  /** The user's store, or null when the entry names none. */
  readonly store: string | null;
}

/** A directory of users. */
export interface Directory {
  /**
   * Checks `password` for `user` (already normalised). Resolves with the user, or rejects with
   * a MailfrontError of kind `auth-failed` (wrong password, unknown user) or `auth-tempfail`
   * (the directory could not answer), or `aborted` when `signal` fired first.
   */
  authenticate(user: string, password: string, signal: AbortSignal): Promise<DirectoryUser>;
  /** Releases connections. */
  close(): Promise<void>;
}

/** The longest user name accepted; longer ones are refused before any directory lookup. */
export const MAX_USER_BYTES = 256;

/** Normalises a login name (trim, optional lower-casing); null when it can never be valid. */
export function normalizeUser(raw: string, config: UsernameConfig): string | null {
  const trimmed = raw.trim();
  if (trimmed.length === 0 || Buffer.byteLength(trimmed) > MAX_USER_BYTES) return null;
  // Control characters have no place in a login name and could forge log lines or protocol lines.
  if (/[\u0000-\u001f\u007f]/.test(trimmed)) return null;
  return config.lowercase ? trimmed.toLowerCase() : trimmed;
}
