/**
 * A small validation toolkit for plain YAML data: each check reads one value at a path and
 * records every problem (path + what was expected) instead of stopping at the first, so an
 * operator sees all mistakes of a config file at once. Knows nothing of mailfront's schema.
 */
import { NAT64_WELL_KNOWN_PREFIX, parseCidr, parseNat64Prefix } from '../net/cidr.js';

/** One problem found in a config document. */
export interface ConfigIssue {
  readonly path: string;
  readonly expected: string;
  readonly found: string;
}

/** A key whose value is a secret (`bind_password`, `token`, …): its value is never described. */
export const SECRET_KEY = /(?:^|[._])(?:password|token|secret)$/i;

/**
 * A key whose value names a secret's file (`bind_password_file`, `token_file`, …): its value is
 * described by its shape only too, whatever its type. It may be the secret itself, written in
 * place of its file's name (`token_file: 4242424242424242`, which a number's description showed
 * in full); a string there is told by config/load.ts (secretFileShown()).
 */
export const SECRET_FILE_KEY = /(?:^|[._])(?:password|token|secret)_file$/i;

/** Collects issues while a document is read. */
export class IssueList {
  readonly issues: ConfigIssue[] = [];
  add(path: string, expected: string, value: unknown): void {
    // Issues reach logs, the CLI and the admin API's answer: a secret's value must not.
    const found = SECRET_KEY.test(path) || SECRET_FILE_KEY.test(path) ? describeShape(value) : describe(value);
    this.issues.push({ path, expected, found });
  }

  /**
   * An issue about a URL-valued setting (or a host:port a URL may have been written in place
   * of): described as add() does, but a string quoted without its userinfo nor its query's
   * values (urlShown()).
   */
  addUrl(path: string, expected: string, value: unknown): void {
    // Quoted or not as written (describe()); the length told is the value's own.
    const found = typeof value === 'string' && value.length <= QUOTED_CHARS ? JSON.stringify(urlShown(value)) : describe(value);
    this.issues.push({ path, expected, found });
  }

  /** An issue whose finding is already words, not a value (printed as is). */
  addFinding(path: string, expected: string, found: string): void {
    this.issues.push({ path, expected, found });
  }
}

/** What kind of value it is, without any of its content. */
function describeShape(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (typeof value === 'string') return value === '' ? 'an empty string' : 'a string (not shown: a secret)';
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (typeof value === 'object') return 'a mapping';
  return `a ${typeof value} (not shown: a secret)`;
}

/** The longest string describe() quotes; a longer one is told by its length. */
const QUOTED_CHARS = 40;

/** Short description of a value for an error message; never prints long strings in full. */
export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (typeof value === 'string') return value.length > QUOTED_CHARS ? `a string of ${value.length} characters` : JSON.stringify(value);
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (typeof value === 'object') return 'a mapping';
  return `${typeof value} ${String(value)}`;
}

/**
 * A URL-valued setting's value (or a host:port a URL may have been written in place of) as an
 * issue may show it: what precedes its last "@" is never shown, the scheme kept
 * (`https://[credentials hidden]@idp.example.org/introspect`). A URL's userinfo is a user and
 * password (`https://user:pass@host/...`, as Dovecot's oauth2 docs write an introspection URL),
 * and issues reach check-config's output, the config.rejected log line and the admin API's reload
 * answer. The last "@" of the whole text, not the URL parser's: a URL that does not parse may
 * still hold a password, and a password may hold "/", "?" or "#".
 *
 * Nor is a value of its query or its fragment shown (queryHidden()), the parameters' names kept
 * (`https://idp.example.org/introspect?client_secret=[hidden]`): some IdPs and Redis setups are
 * written with the secret there (`?client_secret=`, `?access_token=`, `?password=`, `?apikey=`).
 * Every value, not those of names that look secret: no list of names would be whole (`sig`,
 * `key`, `code`, ...), and the names are what lets the operator tell the URL.
 */
export function urlShown(text: string): string {
  const end = text.lastIndexOf('@');
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.exec(text)?.[0] ?? '';
  const hidden = queryHidden(text, scheme.length);
  let shown = end < 0 ? '' : `${scheme.length <= end ? scheme : ''}[credentials hidden]@`;
  for (let i = end + 1; i < text.length; ) {
    const from = i;
    while (i < text.length && hidden[i] === hidden[from]) i++;
    shown += hidden[from] ? '[hidden]' : text.slice(from, i);
  }
  return shown;
}

/**
 * Which characters of `text` (a URL, or what was written for one) are a value of its query or
 * its fragment: after the first "=" of each "&"-separated parameter, a parameter without "=" whole
 * (`?SECRET`), and all after "#". Read from the first "?" or "#" after the scheme (`from`), of the
 * whole text: where one comes before the last "@", that "@" may be a query value's
 * (`?password=p@ss`), and what follows it the value's end, which urlShown() would otherwise show
 * (an "@" of the userinfo, in a password holding "?", hides the host then too: less shown, never
 * more).
 */
function queryHidden(text: string, from: number): boolean[] {
  const hidden = new Array<boolean>(text.length).fill(false);
  const start = text.slice(from).search(/[?#]/);
  if (start < 0) return hidden;
  let state: 'name' | 'value' | 'fragment' = text[from + start] === '#' ? 'fragment' : 'name';
  let parameter = from + start + 1;
  const bare = (to: number): void => {
    if (state === 'name') hidden.fill(true, parameter, to);
  };
  for (let i = parameter; i < text.length; i++) {
    const c = text[i];
    if (state === 'fragment') hidden[i] = true;
    else if (c === '#') {
      bare(i);
      state = 'fragment';
    } else if (c === '&') {
      bare(i);
      state = 'name';
      parameter = i + 1;
    } else if (c === '=' && state === 'name') state = 'value';
    else if (state === 'value') hidden[i] = true;
  }
  bare(text.length);
  return hidden;
}

/** Joins a path and a key the way issues print them (`a.b[2].c`). */
export function at(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return path === '' ? key : `${path}.${key}`;
}

/** A plain mapping, or undefined (with an issue) when the value is something else. */
export function readMapping(v: unknown, path: string, issues: IssueList): Record<string, unknown> | undefined {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  issues.add(path, 'a mapping', v);
  return undefined;
}

/** Reports keys that the schema does not know (typos must not pass silently). */
export function rejectUnknownKeys(obj: Record<string, unknown>, known: readonly string[], path: string, issues: IssueList): void {
  for (const key of Object.keys(obj)) {
    if (!known.includes(key)) issues.addFinding(at(path, key), `one of the known keys (${known.join(', ')})`, `an unknown key ${JSON.stringify(key)}`);
  }
}

/** Reads a mapping with only the listed keys. */
export function readSection(v: unknown, path: string, known: readonly string[], issues: IssueList): Record<string, unknown> | undefined {
  const obj = readMapping(v, path, issues);
  if (obj) rejectUnknownKeys(obj, known, path, issues);
  return obj;
}

/** A non-empty string. */
export function str(obj: Record<string, unknown>, key: string, path: string, issues: IssueList, fallback?: string): string {
  const v = obj[key];
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v === 'string' && v.length > 0) return v;
  issues.add(at(path, key), 'a non-empty string', v);
  return fallback ?? '';
}

/** An optional non-empty string. */
export function optStr(obj: Record<string, unknown>, key: string, path: string, issues: IssueList): string | undefined {
  if (obj[key] === undefined || obj[key] === null) return undefined;
  return str(obj, key, path, issues);
}

/** A boolean with a default. */
export function bool(obj: Record<string, unknown>, key: string, path: string, issues: IssueList, fallback: boolean): boolean {
  const v = obj[key];
  if (v === undefined) return fallback;
  if (typeof v === 'boolean') return v;
  issues.add(at(path, key), 'true or false', v);
  return fallback;
}

/** An integer within [min, max], with a default (`??` semantics: an explicit 0 is kept). */
export function int(obj: Record<string, unknown>, key: string, path: string, issues: IssueList, min: number, max: number, fallback?: number): number {
  const v = obj[key];
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max) return v;
  issues.add(at(path, key), `an integer from ${min} to ${max}`, v);
  return fallback ?? min;
}

/**
 * 0 (off) or an integer within [min, max], with a default: a period whose 0 turns its work off
 * and whose small values would flood (health.interval_ms: 1 ms made 2,192 probe connections to
 * one slot in 3 s).
 */
export function offOrInt(obj: Record<string, unknown>, key: string, path: string, issues: IssueList, min: number, max: number, fallback?: number): number {
  const v = obj[key];
  if (v === undefined && fallback !== undefined) return fallback;
  if (v === 0 || (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max)) return v;
  issues.add(at(path, key), `0 (off) or an integer from ${min} to ${max}`, v);
  return fallback ?? 0;
}

/** One of a fixed set of words. */
export function oneOf<T extends string>(obj: Record<string, unknown>, key: string, path: string, issues: IssueList, choices: readonly T[], fallback?: T): T {
  const v = obj[key];
  if (v === undefined && fallback !== undefined) return fallback;
  if (typeof v === 'string' && (choices as readonly string[]).includes(v)) return v as T;
  issues.add(at(path, key), `one of ${choices.map((c) => JSON.stringify(c)).join(', ')}`, v);
  return fallback ?? (choices[0] as T);
}

/** A TCP port number. */
export function port(obj: Record<string, unknown>, key: string, path: string, issues: IssueList): number {
  return int(obj, key, path, issues, 1, 65535);
}

/** An optional TCP port number. */
export function optPort(obj: Record<string, unknown>, key: string, path: string, issues: IssueList): number | undefined {
  return obj[key] === undefined ? undefined : port(obj, key, path, issues);
}

/** A non-empty list of non-empty strings (a single string is taken as a list of one). */
export function strList(obj: Record<string, unknown>, key: string, path: string, issues: IssueList): string[] {
  const v = obj[key];
  const list = typeof v === 'string' ? [v] : v;
  if (Array.isArray(list) && list.length > 0 && list.every((s) => typeof s === 'string' && s.length > 0)) return list as string[];
  issues.add(at(path, key), 'a non-empty list of strings', v);
  return [];
}

/**
 * An ldap:// or ldaps:// URL with a host and an optional port, and nothing after it: no path, no
 * query (RFC 4516's `?attributes?scope?filter`) nor fragment, which the client ignores and the
 * logs would quote as written (each server's state, the store map's source), a secret included.
 */
const LDAP_URL = /^ldaps?:\/\/[^/?#]+\/?$/;
/**
 * A user and password in one (ldap://cn=admin:secret@host): an LDAP URL has none (RFC 4516), the
 * client ignores them and binds as bind_dn, and the URL is logged as written (each server's
 * state, the store map's source): refused, shown without them.
 */
const LDAP_URL_USERINFO = /^ldaps?:\/\/[^/]*@/;

/** A non-empty list of LDAP server URLs (strList); each that is not one is an issue naming its index. */
export function ldapUrlList(obj: Record<string, unknown>, key: string, path: string, issues: IssueList): string[] {
  const urls = strList(obj, key, path, issues);
  urls.forEach((u, i) => {
    if (LDAP_URL_USERINFO.test(u)) issues.addUrl(at(at(path, key), i), 'an ldap:// or ldaps:// URL with host and optional port, and no user or password in it (bind_dn and its password say who binds)', u);
    else if (!LDAP_URL.test(u)) issues.addUrl(at(at(path, key), i), 'an ldap:// or ldaps:// URL with host and optional port', u);
  });
  return urls;
}

/** Reads a list of address blocks (a single string is a list of one; absent is empty). */
export function readNetworks(o: Record<string, unknown>, key: string, path: string, issues: IssueList): string[] {
  const v = o[key];
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list)) {
    issues.add(at(path, key), 'a list of address blocks such as 10.0.0.0/8 or 2001:db8::/32', v);
    return [];
  }
  const out: string[] = [];
  list.forEach((item, i) => {
    if (typeof item === 'string' && parseCidr(item) !== null) out.push(item);
    else issues.add(at(at(path, key), i), 'an address block such as 10.0.0.0/8 or 2001:db8::/32, without host bits', item);
  });
  return out;
}

/**
 * Reads a list of translator prefixes (`nat64_prefixes`; a single string is a list of one; absent
 * is the well-known prefix, `[]` none). Only /96: RFC 6052 §2.2 puts the IPv4 address of a
 * shorter prefix across the u octet (bits 64-71), which the address keys do not read.
 */
export function readNat64Prefixes(o: Record<string, unknown>, key: string, path: string, issues: IssueList): string[] {
  const v = o[key];
  if (v === undefined || v === null) return [NAT64_WELL_KNOWN_PREFIX];
  const list = typeof v === 'string' ? [v] : v;
  const prefix = 'IPv6 /96 prefix without host bits whose last 32 bits are an IPv4 address (RFC 6052), such as 64:ff9b::/96 or 2001:db8:46::/96; only /96 is read';
  if (!Array.isArray(list)) {
    issues.add(at(path, key), `a list of translator prefixes, each an ${prefix}`, v);
    return [NAT64_WELL_KNOWN_PREFIX];
  }
  const out: string[] = [];
  list.forEach((item, i) => {
    if (typeof item === 'string' && parseNat64Prefix(item) !== null) out.push(item);
    else issues.add(at(at(path, key), i), `an ${prefix}`, item);
  });
  return out;
}

/** Deep-freezes a plain data structure so that nothing can change a loaded config. */
export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value as object)) deepFreeze(child);
  }
  return value;
}
