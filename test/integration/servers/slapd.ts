// A private OpenLDAP slapd (plain slapd.conf, back_mdb) on a free loopback port.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeCerts } from './certs.js';
import { freePort, onFreshPorts } from './ports.js';
import { lifecycleOf, restartable, run, spawnDaemon, waitForPort, type Daemon } from './process.js';
import { tmpDir, type TmpDir } from './tmp.js';
import type { DirectoryConfig } from '../../../src/config/schema.js';

export const LDAP_BASE_DN = 'dc=example,dc=org';
export const LDAP_PEOPLE_DN = `ou=people,${LDAP_BASE_DN}`;
export const LDAP_SERVICE_DN = `cn=mailfront,${LDAP_BASE_DN}`;
export const LDAP_ROOT_DN = `cn=admin,${LDAP_BASE_DN}`;
/** The custom schema: auxiliary objectClass `mailfrontUser` with the single-valued `mailStore`. */
export const LDAP_USER_OBJECT_CLASS = 'mailfrontUser';
export const LDAP_STORE_ATTRIBUTE = 'mailStore';

/** The schema mailfront ships (config/ldap/mailfront.schema): users' mailStore, store and slot entries. */
export const MAILFRONT_SCHEMA = readFileSync(join(repoRootDir(), 'config/ldap/mailfront.schema'), 'utf8');
/** Where store entries live in the test directory. */
export const LDAP_STORES_DN = `ou=stores,${LDAP_BASE_DN}`;

/** The checkout's root folder (the one holding config/ldap/mailfront.schema). */
export function repoRootDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'config/ldap/mailfront.schema'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('slapd: cannot find config/ldap/mailfront.schema above the harness');
    dir = parent;
  }
  return dir;
}

export interface SlapdUser {
  readonly uid: string;
  readonly password: string;
  /** Value of mailStore (the user's store name); omitted when not given. */
  readonly store?: string;
  readonly mail?: string;
  /**
   * More attributes of the entry, by name (e.g. pwdReset, pwdChangedTime, pwdPolicySubentry with
   * `ppolicy`): written at start by slapadd, which takes operational attributes too.
   */
  readonly attributes?: Readonly<Record<string, string | readonly string[]>>;
}

/** OpenLDAP's password policy overlay (ppolicy) on the database, and its policy entries. */
export interface SlapdPasswordPolicies {
  /** Policy entries under ou=policies (slapdPolicyDn()), by cn: their pwdPolicy attributes (pwdAttribute: userPassword is added). */
  readonly policies: Readonly<Record<string, Readonly<Record<string, string>>>>;
  /** The cn of the policy of every user without a pwdPolicySubentry (ppolicy_default); none without it. */
  readonly default?: string;
  /** ppolicy_use_lockout: a locked account's bind is answered accountLocked (whatever the password). */
  readonly useLockout?: boolean;
}

/** The DN of the policy entry `cn` of SlapdOptions.ppolicy. */
export function slapdPolicyDn(cn: string): string {
  return `cn=${escapeDnValue(cn)},ou=policies,${LDAP_BASE_DN}`;
}

export interface SlapdOptions {
  readonly users: readonly SlapdUser[];
  /** Also listen on ldaps:// with the test certificate (StartTLS on ldap:// works too then). */
  readonly tls?: boolean;
  /** Password of the service account cn=mailfront (default: a fixed test password). */
  readonly servicePassword?: string;
  /**
   * `limits` lines of the database (slapd.conf(5)), each "WHO LIMIT ...", e.g.
   * `dn.exact="cn=mailfront,dc=example,dc=org" size=5`: one bind account's own size limits
   * (the rootdn has none). Without it every account has the global `sizelimit 1000`.
   */
  readonly limits?: readonly string[];
  /**
   * `access` directives of the database (slapd.access(5)), each one whole ("access to WHAT by
   * WHO ACCESS ..."), placed before the default ones: slapd takes the first that matches an
   * entry and attribute, so they narrow or widen the defaults for what they name. E.g. write on
   * mailfrontCurrentMaster of the store entries for the service account, which may only read
   * everything else.
   */
  readonly access?: readonly string[];
  /** Load the ppolicy module and put the overlay on the database, with these policies. Without it slapd has no password policy (nor its schema). */
  readonly ppolicy?: SlapdPasswordPolicies;
  /** More schema (slapd.conf `attributetype` and `objectclass` lines), e.g. another server's attributes as user ones. */
  readonly schema?: string;
}

export interface Slapd {
  readonly host: '127.0.0.1';
  /** ldap://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** ldaps://127.0.0.1:PORT when tls */
  readonly ldapsUrl?: string;
  readonly ldapsPort?: number;
  /** The test CA that signed the server certificate, when tls. */
  readonly caFile?: string;
  readonly baseDn: string;
  readonly usersDn: string;
  /** The service account (cn=mailfront,dc=example,dc=org) that may search and read ou=people. */
  readonly bindDn: string;
  readonly bindPassword: string;
  /** The rootdn (bypasses ACLs); used by modify(). */
  readonly rootDn: string;
  readonly rootPassword: string;
  readonly dir: string;
  /** PID of the running slapd (changes on restart). */
  readonly pid: number;
  /** DN of a user entry: uid=<escaped uid>,ou=people,dc=example,dc=org */
  userDn(uid: string): string;
  /** Stops slapd and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** Stops and starts slapd again on the same port(s) with the same data. */
  restart(): Promise<void>;
  /** Stops slapd but keeps its directory and port(s), to simulate a directory outage. */
  stopOnly(): Promise<void>;
  /** Starts slapd again (on the same ports, same data) after stopOnly(). */
  startAgain(): Promise<void>;
  /**
   * SIGSTOP (resolves once slapd is really stopped): connections are still accepted by the kernel
   * but never answered, like a hung server. Await it.
   */
  pause(): Promise<void>;
  /** SIGCONT after pause(). */
  resume(): void;
  /** Applies LDIF (changetype add/modify/delete...) with ldapmodify bound as the rootdn. */
  modify(ldif: string): Promise<void>;
  addUser(user: SlapdUser): Promise<void>;
  deleteUser(uid: string): Promise<void>;
  setPassword(uid: string, password: string): Promise<void>;
  /** Sets (or with undefined removes) the user's mailStore. */
  setStore(uid: string, store: string | undefined): Promise<void>;
  readLog(): Promise<string>;
  /** The passwords of every user the directory was given (at start, addUser, setPassword): secrets for the log scans. */
  userPasswords(): string[];
}

const DEFAULT_SERVICE_PASSWORD = 'mailfront-service-secret';

/** {SSHA} as slappasswd makes it: base64(sha1(password + salt) + salt). */
export function sshaHash(password: string): string {
  const salt = randomBytes(8);
  const digest = createHash('sha1').update(Buffer.from(password, 'utf8')).update(salt).digest();
  return `{SSHA}${Buffer.concat([digest, salt]).toString('base64')}`;
}

/** Escapes an attribute value for use in a DN (RFC 4514). */
export function escapeDnValue(value: string): string {
  let out = value.replace(/[\\,+"<>;=\0]/g, (c) => (c === '\0' ? '\\00' : `\\${c}`));
  if (out.startsWith(' ') || out.startsWith('#')) out = `\\${out}`;
  if (out.endsWith(' ') && out.length > 1) out = `${out.slice(0, -1)}\\ `;
  return out;
}

/** One LDIF line, base64-encoded when the value is not a SAFE-STRING (RFC 2849). */
export function ldifLine(attribute: string, value: string): string {
  const safe = /^[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*$/.test(value) && !value.endsWith(' ');
  if (value === '' || safe) return `${attribute}: ${value}`;
  return `${attribute}:: ${Buffer.from(value, 'utf8').toString('base64')}`;
}

function userEntry(user: SlapdUser): string {
  const lines = [
    ldifLine('dn', `uid=${escapeDnValue(user.uid)},${LDAP_PEOPLE_DN}`),
    'objectClass: inetOrgPerson',
    `objectClass: ${LDAP_USER_OBJECT_CLASS}`,
    ldifLine('uid', user.uid),
    ldifLine('cn', user.uid),
    ldifLine('sn', user.uid),
    ldifLine('userPassword', sshaHash(user.password)),
  ];
  if (user.store !== undefined) lines.push(ldifLine(LDAP_STORE_ATTRIBUTE, user.store));
  if (user.mail !== undefined) lines.push(ldifLine('mail', user.mail));
  for (const [name, values] of Object.entries(user.attributes ?? {})) for (const value of typeof values === 'string' ? [values] : values) lines.push(ldifLine(name, value));
  return `${lines.join('\n')}\n`;
}

/** The policy entries of `ppolicy`, as LDIF. */
function policyLdif(ppolicy: SlapdPasswordPolicies): string {
  const entries = [[`dn: ou=policies,${LDAP_BASE_DN}`, 'objectClass: organizationalUnit', 'ou: policies', ''].join('\n')];
  for (const [cn, attributes] of Object.entries(ppolicy.policies)) {
    const lines = [ldifLine('dn', slapdPolicyDn(cn)), 'objectClass: organizationalRole', 'objectClass: pwdPolicy', ldifLine('cn', cn), 'pwdAttribute: userPassword'];
    for (const [name, value] of Object.entries(attributes)) lines.push(ldifLine(name, value));
    entries.push(`${lines.join('\n')}\n`);
  }
  return entries.join('\n');
}

function slapdConf(dir: string, rootPassword: string, tls: { certFile: string; keyFile: string; caFile: string } | undefined, limits: readonly string[] = [], access: readonly string[] = [], ppolicy?: SlapdPasswordPolicies, schema?: string): string {
  const lines = [
    '# mailfront test slapd',
    'include /etc/ldap/schema/core.schema',
    'include /etc/ldap/schema/cosine.schema',
    'include /etc/ldap/schema/inetorgperson.schema',
    `include ${join(dir, 'mailfront.schema')}`,
    ...(schema !== undefined ? [schema] : []),
    `pidfile ${join(dir, 'slapd.pid')}`,
    `argsfile ${join(dir, 'slapd.args')}`,
    'modulepath /usr/lib/ldap',
    'moduleload back_mdb',
    ...(ppolicy !== undefined ? ['moduleload ppolicy'] : []),
    'sizelimit 1000',
  ];
  if (tls) {
    lines.push(
      `TLSCACertificateFile ${tls.caFile}`,
      `TLSCertificateFile ${tls.certFile}`,
      `TLSCertificateKeyFile ${tls.keyFile}`,
    );
  }
  lines.push(
    '',
    'database mdb',
    'maxsize 268435456',
    `suffix "${LDAP_BASE_DN}"`,
    `rootdn "${LDAP_ROOT_DN}"`,
    `rootpw ${sshaHash(rootPassword)}`,
    `directory ${join(dir, 'data')}`,
    'index objectClass eq',
    'index uid eq',
    `index ${LDAP_STORE_ATTRIBUTE} eq`,
    'index cn eq',
    ...limits.map((limit) => `limits ${limit}`),
    ...(ppolicy !== undefined ? ['overlay ppolicy', ...(ppolicy.default !== undefined ? [`ppolicy_default "${slapdPolicyDn(ppolicy.default)}"`] : []), ...(ppolicy.useLockout === true ? ['ppolicy_use_lockout'] : [])] : []),
    '',
    ...access,
    '# Passwords: only for binding (anonymous auth); a user may change its own; nobody reads them.',
    'access to attrs=userPassword',
    '  by self =w',
    '  by anonymous auth',
    '  by * none',
    '# People: the service account reads everything (but passwords), users read themselves.',
    `access to dn.subtree="${LDAP_PEOPLE_DN}"`,
    `  by dn.exact="${LDAP_SERVICE_DN}" read`,
    '  by self read',
    '  by anonymous auth',
    '  by * none',
    'access to *',
    `  by dn.exact="${LDAP_SERVICE_DN}" read`,
    '  by anonymous auth',
    '  by * none',
    '',
  );
  return lines.join('\n');
}

function baseLdif(servicePassword: string): string {
  return [
    `dn: ${LDAP_BASE_DN}`,
    'objectClass: top',
    'objectClass: dcObject',
    'objectClass: organization',
    'o: mailfront tests',
    'dc: example',
    '',
    `dn: ${LDAP_PEOPLE_DN}`,
    'objectClass: organizationalUnit',
    'ou: people',
    '',
    `dn: ${LDAP_STORES_DN}`,
    'objectClass: organizationalUnit',
    'ou: stores',
    '',
    `dn: ${LDAP_SERVICE_DN}`,
    'objectClass: organizationalRole',
    'objectClass: simpleSecurityObject',
    'cn: mailfront',
    'description: mailfront service account',
    ldifLine('userPassword', sshaHash(servicePassword)),
    '',
  ].join('\n');
}

/**
 * The directory section of a mailfront talking to `server` directly, for tests of LdapDirectory:
 * short deadlines, no caches, two search connections (so that searches also run over more than
 * one connection).
 */
export function directoryConfigOf(server: Pick<Slapd, 'url' | 'bindDn' | 'bindPassword' | 'usersDn'>, overrides: Partial<DirectoryConfig> = {}): DirectoryConfig {
  return {
    urls: [server.url],
    bindDn: server.bindDn,
    bindPassword: server.bindPassword,
    baseDn: server.usersDn,
    userFilter: '(&(objectClass=inetOrgPerson)(uid={user}))',
    storeAttribute: 'mailStore',
    starttls: false,
    connectTimeoutMs: 500,
    operationTimeoutMs: 1000,
    entryCacheTtlMs: 0,
    authCacheTtlMs: 0,
    cacheMaxEntries: 1000,
    searchConnections: 2,
    ...overrides,
  };
}

/** Starts slapd on fresh ports (again on others if one was taken before slapd bound it). */
export function startSlapd(options: SlapdOptions): Promise<Slapd> {
  return onFreshPorts('slapd', () => startSlapdOnce(options));
}

async function startSlapdOnce(options: SlapdOptions): Promise<Slapd> {
  const tmp: TmpDir = tmpDir('slapd');
  const dir = tmp.path;
  const rootPassword = `root-${randomBytes(6).toString('hex')}`;
  const bindPassword = options.servicePassword ?? DEFAULT_SERVICE_PASSWORD;
  try {
    const port = await freePort();
    const ldapsPort = options.tls ? await freePort() : undefined;
    const certs = options.tls ? await makeCerts(dir) : undefined;
    const confFile = join(dir, 'slapd.conf');
    const logFile = join(dir, 'slapd.log');
    await mkdir(join(dir, 'data'), { mode: 0o700 });
    await writeFile(join(dir, 'mailfront.schema'), MAILFRONT_SCHEMA);
    await writeFile(confFile, slapdConf(dir, rootPassword, certs, options.limits, options.access, options.ppolicy, options.schema));
    const ldif = [baseLdif(bindPassword), ...(options.ppolicy !== undefined ? [policyLdif(options.ppolicy)] : []), ...options.users.map(userEntry)].join('\n');
    await writeFile(join(dir, 'data.ldif'), ldif, { mode: 0o600 });
    await run('slapadd', ['-q', '-f', confFile, '-l', join(dir, 'data.ldif')]);

    const url = `ldap://127.0.0.1:${port}`;
    const ldapsUrl = ldapsPort !== undefined ? `ldaps://127.0.0.1:${ldapsPort}` : undefined;
    const listen = [`${url}/`, ...(ldapsUrl ? [`${ldapsUrl}/`] : [])].join(' ');

    const ready = async (daemon: Daemon): Promise<void> => {
      await waitForPort(port, { daemon });
      if (ldapsPort !== undefined) await waitForPort(ldapsPort, { daemon });
    };

    const ldapmodify = async (text: string): Promise<void> => {
      await run('ldapmodify', ['-x', '-H', url, '-D', LDAP_ROOT_DN, '-w', rootPassword], {
        input: text,
        env: { ...process.env, LDAPNOINIT: '1' },
      });
    };

    const life = await restartable('slapd', () => spawnDaemon({ name: 'slapd', command: '/usr/sbin/slapd', args: ['-f', confFile, '-h', listen, '-d', '0'], logFile, cwd: dir }), ready, () => tmp.remove());

    const userDn = (uid: string): string => `uid=${escapeDnValue(uid)},${LDAP_PEOPLE_DN}`;
    const passwords = new Set(options.users.map((u) => u.password));
    const slapd: Slapd = {
      host: '127.0.0.1',
      url,
      port,
      ...(ldapsUrl !== undefined && ldapsPort !== undefined ? { ldapsUrl, ldapsPort } : {}),
      ...(certs ? { caFile: certs.caFile } : {}),
      baseDn: LDAP_BASE_DN,
      usersDn: LDAP_PEOPLE_DN,
      bindDn: LDAP_SERVICE_DN,
      bindPassword,
      rootDn: LDAP_ROOT_DN,
      rootPassword,
      dir,
      get pid(): number {
        return life.pid;
      },
      userDn,
      ...lifecycleOf(life),
      modify: ldapmodify,
      addUser: (user: SlapdUser) => {
        passwords.add(user.password);
        return ldapmodify(userEntry(user).replace('\n', '\nchangetype: add\n'));
      },
      deleteUser: (uid: string) => ldapmodify(`${ldifLine('dn', userDn(uid))}\nchangetype: delete\n`),
      setPassword: (uid: string, password: string) => {
        passwords.add(password);
        return ldapmodify(
          `${ldifLine('dn', userDn(uid))}\nchangetype: modify\nreplace: userPassword\n${ldifLine('userPassword', sshaHash(password))}\n-\n`,
        );
      },
      setStore: (uid: string, store: string | undefined) =>
        ldapmodify(
          store === undefined
            ? `${ldifLine('dn', userDn(uid))}\nchangetype: modify\nreplace: ${LDAP_STORE_ATTRIBUTE}\n-\n`
            : `${ldifLine('dn', userDn(uid))}\nchangetype: modify\nreplace: ${LDAP_STORE_ATTRIBUTE}\n${ldifLine(LDAP_STORE_ATTRIBUTE, store)}\n-\n`,
        ),
      readLog: () => readFile(logFile, 'utf8').catch(() => ''),
      userPasswords: () => [...passwords],
    };
    return slapd;
  } catch (err) {
    // A failed launch has stopped its process already (restartable).
    await tmp.remove().catch(() => undefined);
    throw err;
  }
}
