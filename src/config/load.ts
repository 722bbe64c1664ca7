/**
 * Loading configuration and store-map files from disk: YAML parsing with line numbers,
 * `*_file` secrets, relative paths, and one ConfigError listing every problem at once.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { LineCounter, isMap, isNode, isScalar, parseDocument, visit } from 'yaml';
import type { Document, YAMLMap } from 'yaml';
import { MailfrontError } from '../errors.js';
import type { Config } from './schema.js';
import { readAdminInstances, readConfig } from './schema.js';
import { StoreMap, readStoreMap } from '../routing/storemap.js';
import type { ConfigIssue } from './validate.js';
import { IssueList, SECRET_KEY, at, deepFreeze, optStr, readMapping, readSection } from './validate.js';
import { checkBearerToken, readHttpConfig } from '../server/http.js';
import type { HttpConfig } from '../server/http.js';

export { resolverFor };

/** A config or store-map file that cannot be used; `issues` lists every problem. */
export class ConfigError extends MailfrontError {
  constructor(
    readonly file: string,
    readonly issues: readonly ConfigIssue[],
  ) {
    super('CONFIG_INVALID', 'config', `${file}: ${issues.length} problem${issues.length === 1 ? '' : 's'}\n${issues.map((i) => `  ${i.path || '(top)'}: expected ${i.expected}, found ${i.found}`).join('\n')}`);
  }
}

/** What a YAML problem is told to be short of; most come from a value that needed quotes. */
const YAML_EXPECTED = 'valid YAML (quote a value that starts with *, &, !, |, >, %, @, `, [, ], {, }, # or a quote)';

/** The problems no quoting cures, by the library's error code: a hint about quotes would mislead. */
const YAML_EXPECTED_BY_CODE: Readonly<Record<string, string>> = {
  DUPLICATE_KEY: 'each key at most once in a mapping',
  TAB_AS_INDENT: 'spaces, not tabs, for indentation',
  MULTIPLE_DOCS: 'one YAML document (no --- between two)',
};

/** The ConfigError of a file that could not be read; `error`: what reading it threw. */
export function unreadableFile(file: string, error: unknown): ConfigError {
  return new ConfigError(file, [{ path: '', expected: 'a readable file', found: (error as NodeJS.ErrnoException).code ?? String(error) }]);
}

function parseYamlFile(file: string, check?: (doc: Document.Parsed, text: string, lines: LineCounter, file: string) => void): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw unreadableFile(file, error);
  }
  return parseYaml(text, file, check).value;
}

/** A problem of the YAML text where the library reports one: its code, and its offset first. */
interface YamlProblem {
  readonly code: string;
  readonly pos: readonly [number, ...number[]];
}

/**
 * Parses YAML `text` (the content of `file`) into its document and value; throws ConfigError
 * naming each problem by line and column, then the problems `check` finds in the document.
 */
function parseYaml(text: string, file: string, check?: (doc: Document.Parsed, text: string, lines: LineCounter, file: string) => void): { readonly doc: Document.Parsed; readonly value: unknown } {
  const lineCounter = new LineCounter();
  // Keys are checked once each below: the library's own check (uniqueKeys) compares each key with
  // every key before it in its mapping, O(keys²): a store map of 25,000 stores took 7.9 s to parse
  // with it and 2.7 s without, 50,000 took 59 s and 17 s.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: false });
  // A secret with a tag or an anchor before it (`! abc`, `!!str abc`, `&a abc`) loses that part
  // without a word: an unquoted password starting with "!" or "&". Quoted, it would be kept.
  const secretsDecorated: Array<{ path: string; expected: string; found: string }> = [];
  /** Keys given twice in one mapping, where the library told them (at the second one). */
  const duplicates: YamlProblem[] = [];
  visit(doc, {
    Map(_key, map) {
      // As the library's uniqueKeys compares them: one node, or scalars of one value (so `101:`
      // and `"101":` are two keys here; checkStoreMapNames refuses those in a store map).
      const seen = new Set<unknown>();
      for (const pair of map.items) {
        const key: unknown = isScalar(pair.key) ? pair.key.value : pair.key;
        // NaN is no value equal to itself: two `.nan:` keys are two keys to the library.
        if (typeof key === 'number' && Number.isNaN(key)) continue;
        if (!seen.has(key)) seen.add(key);
        else if (isNode(pair.key) && pair.key.range) duplicates.push({ code: 'DUPLICATE_KEY', pos: [pair.key.range[0]] });
      }
    },
    Pair(_key, pair) {
      const key = isScalar(pair.key) ? String(pair.key.value) : '';
      const value = pair.value;
      if (!SECRET_KEY.test(key) || !isScalar(value) || (value.tag === undefined && value.anchor === undefined)) return;
      const line = value.range ? lineCounter.linePos(value.range[0]).line : 0;
      secretsDecorated.push({ path: `line ${line}`, expected: `${key}: a value in quotes (it starts with a YAML tag or anchor, ! or &, which would be dropped from it)`, found: 'a tag or an anchor (not shown: a secret)' });
    },
  });
  // An unknown tag (`!abc`, a password starting with "!") is only a warning to the library, which
  // then drops the tag from the value: a password would change without a word. It is an error here.
  const problems: YamlProblem[] = [...doc.errors, ...doc.warnings.filter((w) => w.code === 'TAG_RESOLVE_FAILED'), ...duplicates].sort((a, b) => a.pos[0] - b.pos[0]);
  if (problems.length === 0 && secretsDecorated.length > 0) throw new ConfigError(file, secretsDecorated);
  if (problems.length > 0) {
    // By the library's error code, never its message: the message quotes the text at fault,
    // which may be an unquoted secret (a password starting with "|" or "]", say).
    throw new ConfigError(
      file,
      problems.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return { path: `line ${pos.line} column ${pos.col}`, expected: YAML_EXPECTED_BY_CODE[e.code] ?? YAML_EXPECTED, found: e.code.toLowerCase().replaceAll('_', ' ') };
      }),
    );
  }
  check?.(doc, text, lineCounter, file);
  try {
    return { doc, value: doc.toJS({ maxAliasCount: 100 }) };
  } catch {
    // An alias (*name) with no anchor before it: a value that starts with "*", such as an
    // unquoted password. The library's message names the alias, so it would show the secret.
    let line: number | undefined;
    visit(doc, {
      Alias(_key, node) {
        if (line === undefined && node.resolve(doc) === undefined && node.range !== undefined && node.range !== null) line = lineCounter.linePos(node.range[0]).line;
      },
    });
    throw new ConfigError(file, [
      {
        path: line === undefined ? '' : `line ${line}`,
        expected: `${YAML_EXPECTED}, whose aliases (*name) each follow their anchor (&name) and expand to at most 100 nodes`,
        found: line === undefined ? 'too many aliases' : 'an alias without an anchor',
      },
    ]);
  }
}

/**
 * A secret key's `*_file` value as an issue may show it: the file name, when it reads as one (of
 * the characters file names are made of, and absolute, starting ./ or ../, ending in an
 * extension, or a relative path such as `secrets/ldap`); else the folder only. A value like
 * `token_file: 3f9a…`, the secret written in place of its file's name, went to the journal
 * (ExecStartPre's check-config) in "expected a readable file (/etc/mailfront/3f9a…)". A "/"
 * alone is no sign of a name: base64 has it (`q8Zk3/Yw1b…`, and never a "."), so a relative path
 * that mixes capitals, small letters and digits, as a base64 secret does, is not shown either.
 */
function secretFileShown(value: string, file: string, folder: string): string {
  const named =
    /^[\w.\-/]+$/.test(value) &&
    (/^\.{0,2}\//.test(value) || /\.[A-Za-z][A-Za-z0-9]{0,7}$/.test(value) || (value.includes('/') && !(/[A-Z]/.test(value) && /[a-z]/.test(value) && /[0-9]/.test(value))));
  if (named) return file;
  // The folder relative names resolve against, not the file's: that would show the value up to its last "/".
  return `a file ${value.includes('/') ? 'under' : 'in'} ${folder} whose name is not shown: not absolute, not starting ./ or ../, without an extension, it may be the secret itself, given in place of its file's name`;
}

/** Where an inlined secret came from: its `*_file` key's path as written, and the file as shown. */
interface SecretFrom {
  readonly path: string;
  readonly key: string;
  readonly file: string;
}

/** What inlineSecretFiles found besides its issues. */
interface InlinedSecrets {
  /** The paths of the keys left without a value because their file was not read (or was empty). */
  readonly unread: Set<string>;
  /** The keys given a file's content, by path (`directory.bind_password`), and where it came from. */
  readonly fromFiles: Map<string, SecretFrom>;
}

/**
 * Replaces every `<name>_password_file: PATH` (and `token_file`, `<name>_token_file`, `<name>_secret_file`) with the
 * key without `_file` set to the file's content, without the line breaks that end it (an
 * editor's, `echo`'s, or a blank line more: a password ending in a line break is never meant).
 * A file that cannot be read, or holds nothing else, is an issue of the `_file` key; the key is
 * then left without a value and its path is in `unread` (a problem named already: a second one,
 * "found nothing", would be noise).
 */
function inlineSecretFiles(node: unknown, resolvePath: (p: string) => string, path: string, issues: IssueList, found: InlinedSecrets = { unread: new Set(), fromFiles: new Map() }): InlinedSecrets {
  if (node === null || typeof node !== 'object') return found;
  for (const [key, value] of Object.entries(node as Record<string, unknown>)) {
    const childPath = Array.isArray(node) ? `${path}[${key}]` : path === '' ? key : `${path}.${key}`;
    if ((key.endsWith('_password_file') || key === 'token_file' || key.endsWith('_token_file') || key.endsWith('_secret_file')) && !Array.isArray(node)) {
      const target = key.slice(0, -'_file'.length);
      const targetPath = path === '' ? target : `${path}.${target}`;
      const obj = node as Record<string, unknown>;
      delete obj[key];
      if (obj[target] !== undefined) {
        issues.addFinding(childPath, `either ${target} or ${key}, not both`, 'both');
      } else if (typeof value !== 'string') {
        // By its shape only (SECRET_FILE_KEY): a number here may be the secret itself.
        issues.add(childPath, 'a file name', value);
        found.unread.add(targetPath);
      } else {
        const file = resolvePath(value);
        const shown = secretFileShown(value, file, resolvePath('.'));
        let content: string;
        try {
          content = readFileSync(file, 'utf8');
        } catch (error) {
          issues.addFinding(childPath, `a readable file (${shown})`, (error as NodeJS.ErrnoException).code ?? String(error));
          found.unread.add(targetPath);
          continue;
        }
        const secret = content.replace(/[\r\n]+$/, '');
        if (secret === '') {
          issues.addFinding(childPath, `a file holding the ${target} (${shown})`, content === '' ? 'an empty file' : 'line breaks only');
          found.unread.add(targetPath);
          continue;
        }
        obj[target] = secret;
        found.fromFiles.set(targetPath, { path: childPath, key, file: shown });
      }
    } else {
      inlineSecretFiles(value, resolvePath, childPath, issues, found);
    }
  }
  return found;
}

/**
 * `issues` without those about the values whose secret files were not read, and those about a
 * value read from a file told by the key written: `foo_password_file`, not `foo_password`.
 */
function asWritten(issues: IssueList, secrets: InlinedSecrets): ConfigIssue[] {
  return issues.issues
    .filter((i) => !secrets.unread.has(i.path))
    .map((i) => {
      const from = secrets.fromFiles.get(i.path);
      if (from === undefined) return i;
      const target = from.key.slice(0, -'_file'.length);
      if (i.found === `an unknown key ${JSON.stringify(target)}`) return { ...i, path: from.path, found: `an unknown key ${JSON.stringify(from.key)}` };
      return { ...i, path: from.path, expected: `${i.expected} in the file (${from.file})` };
    });
}

function resolverFor(file: string): (p: string) => string {
  return resolverIn(dirname(file));
}

function resolverIn(base: string): (p: string) => string {
  return (p) => (p === '' || isAbsolute(p) ? p : resolve(base, p));
}

/** Loads and validates a config file; throws ConfigError listing every problem. */
export function loadConfig(fileName: string): Config {
  const file = resolve(fileName);
  const resolvePath = resolverFor(file);
  const doc = parseYamlFile(file);
  const issues = new IssueList();
  const secrets = inlineSecretFiles(doc, resolvePath, '', issues);
  const config = readConfig(doc, file, resolvePath, issues);
  if (issues.issues.length > 0) throw new ConfigError(file, asWritten(issues, secrets));
  return deepFreeze(config);
}

/** What the operator commands need of a config file: the admin API's address and token, and the fleet's instances. */
export interface AdminAccess {
  /** Absolute path of the file. */
  readonly file: string;
  readonly http?: HttpConfig;
  readonly token?: string;
  /** admin.instances, when asked for and set. */
  readonly instances?: readonly string[];
}

/**
 * Reads the `http` and `admin` sections of a config file, and nothing else, for the operator
 * commands: whoever may read the file and the admin token need not read every secret serve
 * needs (an LDAP bind password file readable by mailfront alone, say), nor have a config that
 * serve would take. With `withToken` false (a token given otherwise), no secret file is read.
 * With `withInstances` (--all), admin.instances is read and checked as check-config does.
 */
export function loadAdminAccess(fileName: string, withToken: boolean, withInstances = false): AdminAccess {
  const file = resolve(fileName);
  const issues = new IssueList();
  const root = readMapping(parseYamlFile(file), '', issues) ?? {};
  // The address only: the metrics token's file is serve's.
  const http = readHttpConfig(root['http'], 'http', issues, true);
  let token: string | undefined;
  let instances: readonly string[] | undefined;
  if ((withToken || withInstances) && root['admin'] !== undefined && root['admin'] !== null) {
    const sections = { admin: root['admin'] };
    // The token's file only when the token is wanted.
    const secrets = withToken ? inlineSecretFiles(sections, resolverFor(file), '', issues) : undefined;
    const admin = readSection(sections.admin, 'admin', withToken ? ['token', 'instances'] : ['token', 'token_file', 'instances'], issues) ?? {};
    if (withToken) {
      token = optStr(admin, 'token', 'admin', issues);
      // As serve takes it: a token it would refuse would only get 401s.
      checkBearerToken(token, 'admin.token', issues);
    }
    if (withInstances) instances = readAdminInstances(admin, issues);
    if (issues.issues.length > 0) throw new ConfigError(file, secrets !== undefined ? asWritten(issues, secrets) : issues.issues);
  }
  if (issues.issues.length > 0) throw new ConfigError(file, issues.issues);
  return { file, ...(http !== undefined ? { http } : {}), ...(token !== undefined ? { token } : {}), ...(instances !== undefined ? { instances } : {}) };
}

/**
 * Reads a store-map YAML file into a plain document (secrets from files inlined). Relative names
 * of secret files resolve against `baseDir` (the config file's folder, as its other relative
 * names do), or the store map's own folder when there is no config.
 */
export function readStoreMapFile(fileName: string, baseDir?: string): unknown {
  const file = resolve(fileName);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw unreadableFile(file, error);
  }
  return parseStoreMap(text, file, baseDir).document;
}

/** A store-map file's text parsed: its YAML document and the plain document readStoreMapFile gives. */
export interface ParsedStoreMap {
  /** The YAML document, to edit keeping the operator's comments and layout (a failover). */
  readonly yaml: Document.Parsed;
  readonly document: unknown;
  /** How many secret files (`*_password_file`, …) `document` holds the content of: read anew at each parse. */
  readonly secretFiles: number;
}

/**
 * Parses `text`, the content of the store-map file `fileName`, as readStoreMapFile does (secrets
 * from files inlined; ConfigError listing every problem), keeping the YAML document too.
 */
export function parseStoreMap(text: string, fileName: string, baseDir?: string): ParsedStoreMap {
  const file = resolve(fileName);
  const { doc, value } = parseYaml(text, file, checkStoreMapNames);
  const issues = new IssueList();
  const inlined = inlineSecretFiles(value, baseDir === undefined ? resolverFor(file) : resolverIn(baseDir), '', issues);
  if (issues.issues.length > 0) throw new ConfigError(file, issues.issues);
  return { yaml: doc, document: value, secretFiles: inlined.fromFiles.size };
}

/**
 * Refuses store and slot names, and masters, that YAML does not read as the text written: an
 * unquoted 0101, 1e3 or 0x1A is the number 101, 1000 or 26, which names store "101", "1000",
 * "26" without a word; true, null or 1.50 no name written either. A number that reads back as
 * written (101) is that name, as it always was. The map's text is needed for this: the document
 * readStoreMapFile gives holds the numbers only, so it runs on the parsed file (parseYaml). Two keys that read as one name (`101:` and
 * `"101":`, which YAML holds distinct, a number and a string) are refused too: the map would hold
 * the last one, and a failover would be written to the first.
 */
function checkStoreMapNames(doc: Document.Parsed, text: string, lines: LineCounter, file: string): void {
  const issues = new IssueList();
  /** True when `node` (a key or a value) is a string, or a number whose text is the one written. */
  const asWritten = (node: unknown, path: string, what: string): void => {
    if (isScalar(node)) {
      const written = node.source ?? (node.range ? text.slice(node.range[0], node.range[1]) : undefined);
      if (typeof node.value === 'string' || (typeof node.value === 'number' && String(node.value) === written)) return;
      issues.add(path, `${what} YAML reads as written: quote it ("${written ?? String(node.value)}")`, node.value);
    } else issues.addFinding(path, `${what} written as plain text`, 'a key that is a mapping, a list or an alias');
  };
  const entries = (map: unknown, path: string, what: string, each: (value: unknown, path: string) => void): void => {
    if (!isMap(map)) return;
    /** The keys seen so far by the name they read as: as written, and on which line. */
    const seen = new Map<string, string>();
    for (const pair of (map as YAMLMap).items) {
      const name = isScalar(pair.key) ? String(pair.key.source ?? pair.key.value) : String(pair.key);
      asWritten(pair.key, at(path, name), what);
      if (isScalar(pair.key) && pair.key.range) {
        const written = `${text.slice(pair.key.range[0], pair.key.range[1])} (line ${lines.linePos(pair.key.range[0]).line})`;
        const named = String(pair.key.value);
        const before = seen.get(named);
        if (before === undefined) seen.set(named, written);
        else issues.addFinding(at(path, name), `${what} given once (keep one of the keys)`, `${before} and ${written}, both read as "${named}"`);
      }
      each(pair.value, at(path, name));
    }
  };
  entries(doc.get('stores'), 'stores', 'a store name', (store, path) => {
    if (!isMap(store)) return;
    entries(store.get('slots'), at(path, 'slots'), 'a slot name', () => undefined);
    for (const key of ['current_master', 'preferred_master']) {
      const value = store.get(key, true);
      if (value !== undefined && isScalar(value) && value.value !== null) asWritten(value, at(path, key), 'a slot name');
    }
  });
  if (issues.issues.length > 0) throw new ConfigError(file, issues.issues);
}

/**
 * Builds store-map version `version` from a document; throws ConfigError (naming `origin`)
 * listing every problem. Relative file names in it (a store's `ca_file`) resolve against the
 * config file's folder, as the config's own do; without a config file, against `origin`'s.
 */
export function buildStoreMap(doc: unknown, origin: string, version: number, config: Pick<Config, 'backend' | 'backendProfiles'> & { readonly file?: string }, resolvePath: (p: string) => string = resolverFor(resolve(config.file ?? origin))): StoreMap {
  const issues = new IssueList();
  const map = readStoreMap(doc, version, config.backend, config.backendProfiles, resolvePath, issues);
  if (issues.issues.length > 0) throw new ConfigError(origin, issues.issues);
  return map;
}

/** Loads and validates a store-map file as version `version`; throws ConfigError listing every problem. */
export function loadStoreMap(fileName: string, version: number, config: Pick<Config, 'backend' | 'backendProfiles'>): StoreMap {
  return buildStoreMap(readStoreMapFile(fileName), resolve(fileName), version, config);
}

