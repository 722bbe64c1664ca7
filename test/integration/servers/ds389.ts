// A private 389 Directory Server (Debian's 389-ds-base) on a free loopback port, with the same
// tree, service account and users as the slapd harness, and the schema mailfront ships for it
// (config/ldap/mailfront-389ds.ldif). 389 DS answers some logins as slapd cannot: an inactivated
// account (nsAccountLock), a lockout of its own password policy.
//
// dscreate makes the instance under a private prefix in the temp dir (`dscreate ds-root`: nothing
// in /etc/dirsrv, no systemd), as the `dirsrv` user it refuses to run without; ns-slapd then runs
// in the foreground (-d 0) as that user, our child, listening on 127.0.0.1 only. About 6 s.
import { randomBytes } from 'node:crypto';
import { chown, readFile, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, onFreshPorts } from './ports.js';
import { lifecycleOf, restartable, run, spawnDaemon, waitForPort, type Daemon } from './process.js';
import { LDAP_BASE_DN, LDAP_PEOPLE_DN, LDAP_SERVICE_DN, LDAP_STORES_DN, LDAP_STORE_ATTRIBUTE, LDAP_USER_OBJECT_CLASS, escapeDnValue, ldifLine, repoRootDir, type SlapdUser } from './slapd.js';
import { tmpDir, type TmpDir } from './tmp.js';

/** The shipped 389 DS schema file (cn=schema form), installed as the instance's 98mailfront.ldif. */
export const MAILFRONT_389DS_SCHEMA = readFileSync(join(repoRootDir(), 'config/ldap/mailfront-389ds.ldif'), 'utf8');

/** 389 DS's root DN (it bypasses ACIs); used by modify(). */
export const DS389_ROOT_DN = 'cn=Directory Manager';

/** The account 389 DS runs as (Debian's 389-ds-base creates it). */
const DS_USER = 'dirsrv';

export interface Ds389Options {
  readonly users: readonly SlapdUser[];
  /** Password of the service account cn=mailfront (default: a fixed test password). */
  readonly servicePassword?: string;
  /**
   * The USN plugin on from the first start (entryusn on every entry written, lastusn in the root
   * DSE): true, per backend (`lastusn;userroot`), or 'global' (nsslapd-entryusn-global: on, a
   * plain `lastusn`). Default: off, as dscreate makes it.
   */
  readonly usn?: boolean | 'global';
}

export interface Ds389 {
  readonly host: '127.0.0.1';
  /** ldap://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  readonly baseDn: string;
  readonly usersDn: string;
  /** The service account (cn=mailfront,dc=example,dc=org): reads ou=people, reads ou=stores and writes its failover attributes (the README's ACIs). */
  readonly bindDn: string;
  readonly bindPassword: string;
  readonly rootDn: string;
  readonly rootPassword: string;
  readonly dir: string;
  /** PID of the running ns-slapd (changes on restart). */
  readonly pid: number;
  /** DN of a user entry: uid=<escaped uid>,ou=people,dc=example,dc=org */
  userDn(uid: string): string;
  /** Stops ns-slapd and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** Stops and starts ns-slapd again on the same port with the same data (what a change of cn=config or of the schema needs). */
  restart(): Promise<void>;
  stopOnly(): Promise<void>;
  startAgain(): Promise<void>;
  /** Applies LDIF (changetype add/modify/delete...) with ldapmodify bound as the root DN. */
  modify(ldif: string): Promise<void>;
  addUser(user: SlapdUser): Promise<void>;
  /** The instance's errors log. */
  readErrors(): Promise<string>;
  /** The passwords of every user the directory was given: secrets for the log scans. */
  userPasswords(): string[];
}

const DEFAULT_SERVICE_PASSWORD = 'mailfront-service-secret';

/** uid and gid of a system user, from /etc/passwd. */
function systemUser(name: string): { uid: number; gid: number } {
  for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const [user, , uid, gid] = line.split(':');
    if (user === name && uid !== undefined && gid !== undefined) return { uid: Number(uid), gid: Number(gid) };
  }
  throw new Error(`ds389: no system user "${name}" (install 389-ds-base: scripts/bootstrap.sh does)`);
}

/** The multiarch folder of 389 DS's libraries (Debian: /usr/lib/x86_64-linux-gnu), where its plugins are. */
function dsLibDir(): string {
  for (const name of readdirSync('/usr/lib')) {
    const dir = join('/usr/lib', name);
    if (name.includes('-linux-gnu') && existsSync(join(dir, 'dirsrv', 'plugins'))) return dir;
  }
  throw new Error('ds389: 389 DS plugins not found under /usr/lib/*-linux-gnu/dirsrv/plugins (install 389-ds-base)');
}

/** The arguments of `setpriv` that run a command as `dirsrv` with a clean environment (dscreate refuses root, and reads /etc/dirsrv, dirsrv's own). */
function asDsUser(dir: string, command: readonly string[]): string[] {
  return ['--reuid', DS_USER, '--regid', DS_USER, '--clear-groups', 'env', '-i', `HOME=${dir}`, `PATH=${join(dir, 'bin')}:/usr/bin:/usr/sbin:/bin:/sbin`, ...command];
}

function userEntry(user: SlapdUser): string {
  const lines = [
    ldifLine('dn', `uid=${escapeDnValue(user.uid)},${LDAP_PEOPLE_DN}`),
    'objectClass: top',
    'objectClass: person',
    'objectClass: organizationalPerson',
    'objectClass: inetOrgPerson',
    `objectClass: ${LDAP_USER_OBJECT_CLASS}`,
    ldifLine('uid', user.uid),
    ldifLine('cn', user.uid),
    ldifLine('sn', user.uid),
    // 389 DS hashes a clear-text userPassword itself (its password storage scheme).
    ldifLine('userPassword', user.password),
  ];
  if (user.store !== undefined) lines.push(ldifLine(LDAP_STORE_ATTRIBUTE, user.store));
  if (user.mail !== undefined) lines.push(ldifLine('mail', user.mail));
  for (const [name, values] of Object.entries(user.attributes ?? {})) for (const value of typeof values === 'string' ? [values] : values) lines.push(ldifLine(name, value));
  return `${lines.join('\n')}\n`;
}

/**
 * The tree under the suffix dscreate made: the service account, ou=people and ou=stores with the
 * README's ACIs for it (read users; read stores and write the failover's attributes).
 */
function baseLdif(servicePassword: string): string {
  const service = `userdn="ldap:///${LDAP_SERVICE_DN}"`;
  return [
    `dn: ${LDAP_SERVICE_DN}`,
    'objectClass: top',
    'objectClass: person',
    'cn: mailfront',
    'sn: mailfront service account',
    ldifLine('userPassword', servicePassword),
    '',
    `dn: ${LDAP_PEOPLE_DN}`,
    'objectClass: top',
    'objectClass: organizationalUnit',
    'ou: people',
    `aci: (targetattr="uid || mail || cn || objectClass || ${LDAP_STORE_ATTRIBUTE} || mailfrontHold || nsAccountLock || accountUnlockTime || passwordExpirationTime")(version 3.0; acl "mailfront reads users"; allow (read, search, compare) ${service};)`,
    '',
    `dn: ${LDAP_STORES_DN}`,
    'objectClass: top',
    'objectClass: organizationalUnit',
    'ou: stores',
    `aci: (targetattr="* || modifyTimestamp || createTimestamp")(version 3.0; acl "mailfront reads stores"; allow (read, search, compare) ${service};)`,
    `aci: (targetattr="mailfrontCurrentMaster || mailfrontPreferredMaster || mailfrontMaintenance")(version 3.0; acl "mailfront fails over"; allow (write) ${service};)`,
    '',
  ].join('\n');
}

/** dse.ldif's text with the USN plugin turned on (and its counter global), as `usn` asks. */
function withUsn(dse: string, usn: boolean | 'global', file: string): string {
  if (usn === false) return dse;
  const plugin = /(\ndn: cn=USN,cn=plugins,cn=config\n(?:.+\n)*?)nsslapd-pluginEnabled: off\n/i;
  if (!plugin.test(dse)) throw new Error(`ds389: the USN plugin's nsslapd-pluginEnabled: off not found in ${file}`);
  const on = dse.replace(plugin, '$1nsslapd-pluginEnabled: on\n');
  if (usn !== 'global') return on;
  if (!on.includes('\ndn: cn=config\n')) throw new Error(`ds389: the entry cn=config not found in ${file}`);
  return on.replace('\ndn: cn=config\n', '\ndn: cn=config\nnsslapd-entryusn-global: on\n');
}

/** Starts a 389 DS instance on a fresh port (again on another if it was taken before ns-slapd bound it). */
export function startDs389(options: Ds389Options): Promise<Ds389> {
  return onFreshPorts('ds389', () => startDs389Once(options));
}

async function startDs389Once(options: Ds389Options): Promise<Ds389> {
  const { uid, gid } = systemUser(DS_USER);
  const libDir = dsLibDir();
  const tmp: TmpDir = tmpDir('ds389');
  const dir = tmp.path;
  const rootPassword = `root-${randomBytes(6).toString('hex')}`;
  const bindPassword = options.servicePassword ?? DEFAULT_SERVICE_PASSWORD;
  try {
    await chown(dir, uid, gid);
    const port = await freePort();
    // A name of its own: ns-slapd names a POSIX semaphore after its instance (/dev/shm/
    // sem.slapd-NAME.stats), shared by every instance of that name on the machine, and at start
    // it removes one it finds and makes its own, exclusively, exiting if another start made one
    // meanwhile. Instances of one name started at once (this file's, the other test file's,
    // dscreate's own start) made a start exit now and then, and dscreate wait out its minute.
    const instance = `mf${randomBytes(4).toString('hex')}`;
    const root = join(dir, 'root');
    await run('setpriv', asDsUser(dir, ['dscreate', 'ds-root', root, join(dir, 'bin')]));
    // Debian 12's ds-root writes lib_dir and plugin_dir as /usr/lib64, where Debian has nothing.
    const defaults = join(root, 'share/dirsrv/inf/defaults.inf');
    const inf = await readFile(defaults, 'utf8');
    await writeFile(defaults, inf.replace(/^lib_dir = .*$/m, `lib_dir = ${libDir}`).replace(/^plugin_dir = .*$/m, `plugin_dir = ${join(libDir, 'dirsrv/plugins')}`));
    const setup = join(dir, 'instance.inf');
    await writeFile(
      setup,
      [
        '[general]',
        'full_machine_name = localhost',
        'start = False',
        'strict_host_checking = False',
        '[slapd]',
        `instance_name = ${instance}`,
        `port = ${port}`,
        // No TLS: nothing listens on it, but dscreate wants one.
        `secure_port = ${port + 1}`,
        `root_password = ${rootPassword}`,
        'self_sign_cert = False',
        '[backend-userroot]',
        `suffix = ${LDAP_BASE_DN}`,
        'create_suffix_entry = True',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    await chown(setup, uid, gid);
    const errorsLog = join(root, `var/log/dirsrv/slapd-${instance}/errors`);
    try {
      // dscreate starts the instance and waits up to 60 s for it, then says why it did not come up: given longer.
      await run('setpriv', asDsUser(dir, ['dscreate', 'from-file', setup]), { timeoutMs: 150_000 });
    } catch (error) {
      // What ns-slapd wrote of its start, if it got that far, first: a failure's first lines are what a CI log keeps.
      const errors = await readFile(errorsLog, 'utf8').catch(() => '');
      const tail = errors === '' ? '' : `${errorsLog} ends:\n${errors.trimEnd().split('\n').slice(-8).join('\n')}\n`;
      throw new Error(`ds389: dscreate from-file failed\n${tail}${error instanceof Error ? error.message : String(error)}`);
    }
    const configDir = join(root, `etc/dirsrv/slapd-${instance}`);
    // Loopback only (ns-slapd listens on every address by default).
    const dseFile = join(configDir, 'dse.ldif');
    const dse = await readFile(dseFile, 'utf8');
    if (!dse.includes(`\nnsslapd-port: ${port}\n`)) throw new Error(`ds389: nsslapd-port ${port} not found in ${dseFile}`);
    await writeFile(dseFile, withUsn(dse.replace(`\nnsslapd-port: ${port}\n`, `\nnsslapd-port: ${port}\nnsslapd-listenhost: 127.0.0.1\n`), options.usn ?? false, dseFile));
    const schemaFile = join(configDir, 'schema/98mailfront.ldif');
    await writeFile(schemaFile, MAILFRONT_389DS_SCHEMA, { mode: 0o644 });
    await chown(schemaFile, uid, gid);

    const url = `ldap://127.0.0.1:${port}`;
    const logFile = join(dir, 'ns-slapd.log');
    const ready = async (daemon: Daemon): Promise<void> => {
      await waitForPort(port, { daemon, timeoutMs: 30_000 });
    };
    const spawn = (): Daemon =>
      spawnDaemon({ name: 'ns-slapd', command: 'setpriv', args: ['--reuid', DS_USER, '--regid', DS_USER, '--clear-groups', '/usr/sbin/ns-slapd', '-D', configDir, '-i', join(root, `run/dirsrv/slapd-${instance}.pid`), '-d', '0'], logFile, cwd: dir });
    const life = await restartable('ns-slapd', spawn, ready, () => tmp.remove());

    const ldapmodify = async (text: string, add = false): Promise<void> => {
      await run('ldapmodify', ['-x', ...(add ? ['-a'] : []), '-H', url, '-D', DS389_ROOT_DN, '-w', rootPassword], { input: text, env: { ...process.env, LDAPNOINIT: '1' } });
    };
    try {
      await ldapmodify([baseLdif(bindPassword), ...options.users.map(userEntry)].join('\n'), true);
    } catch (error) {
      await life.stop();
      throw error;
    }

    const userDn = (uid: string): string => `uid=${escapeDnValue(uid)},${LDAP_PEOPLE_DN}`;
    const passwords = new Set(options.users.map((u) => u.password));
    const { stop, restart, stopOnly, startAgain } = lifecycleOf(life);
    return {
      host: '127.0.0.1',
      url,
      port,
      baseDn: LDAP_BASE_DN,
      usersDn: LDAP_PEOPLE_DN,
      bindDn: LDAP_SERVICE_DN,
      bindPassword,
      rootDn: DS389_ROOT_DN,
      rootPassword,
      dir,
      get pid(): number {
        return life.pid;
      },
      userDn,
      stop,
      restart,
      stopOnly,
      startAgain,
      modify: (text: string) => ldapmodify(text),
      addUser: (user: SlapdUser) => {
        passwords.add(user.password);
        return ldapmodify(userEntry(user), true);
      },
      readErrors: () => readFile(errorsLog, 'utf8').catch(() => ''),
      userPasswords: () => [...passwords],
    };
  } catch (err) {
    await tmp.remove().catch(() => undefined);
    throw err;
  }
}
