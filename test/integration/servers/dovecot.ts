// A private Dovecot 2.3 instance (IMAP + POP3, optionally ManageSieve) on free loopback ports.
// Several instances run side by side: each has its own base_dir, state_dir, log and instance_name.
import { randomBytes } from 'node:crypto';
import { chown, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeCerts } from './certs.js';
import { freePort, onFreshPorts } from './ports.js';
import { lifecycleOf, restartable, spawnDaemon, waitForPort, type Daemon, type Restartable } from './process.js';
import { sshaHash } from './slapd.js';
import { tmpDir, type TmpDir } from './tmp.js';

/** uid/gid of Debian's `mail` user, which owns the mail and runs the mail processes. */
export const MAIL_UID = 8;
export const MAIL_GID = 8;

export interface DovecotUser {
  readonly name: string;
  readonly password: string;
}

export interface DovecotOptions {
  /** Short name, shown in the greeting ("<name> ready.") and the instance_name. */
  readonly name: string;
  readonly users: readonly DovecotUser[];
  /** A master user: `LOGIN "user*master" pw` or SASL PLAIN authzid=user, authcid=master. */
  readonly masterUser?: DovecotUser;
  /** ssl = yes with the test certificate; adds imaps/pop3s listeners (STARTTLS/STLS work too). */
  readonly tls?: boolean;
  /** login_trusted_networks (default 127.0.0.0/8): whose ID x-originating-ip / XCLIENT is believed. */
  readonly trustedNetworks?: string;
  /** Extra listeners with `haproxy = yes` (PROXY protocol v1/v2 required there). */
  readonly haproxy?: boolean;
  /** auth_failure_delay in seconds (Dovecot's default is 2; 0 here to keep tests fast). */
  readonly authFailureDelaySeconds?: number;
  /** Pigeonhole ManageSieve on a free port; scripts in ~/sieve, the active one linked from ~/.dovecot.sieve. */
  readonly sieve?: boolean;
  /**
   * client_limit of the imap and pop3 services (default 1: a process per session). Above 1, one
   * process serves that many sessions and lives on (service_count = 0): thousands of idle
   * sessions (the benchmark) then need tens of processes instead of thousands.
   */
  readonly mailProcessClientLimit?: number;
  /** Lines added at the end of dovecot.conf (e.g. `imap_id_log = *`, `imap_capability = …`). */
  readonly extraConfig?: readonly string[];
}

export interface Dovecot {
  readonly name: string;
  readonly host: '127.0.0.1';
  readonly imapPort: number;
  readonly pop3Port: number;
  readonly imapsPort?: number;
  readonly pop3sPort?: number;
  readonly imapHaproxyPort?: number;
  readonly pop3HaproxyPort?: number;
  /** ManageSieve (STARTTLS when tls) when the sieve option is set. */
  readonly sievePort?: number;
  /** The test CA when tls. */
  readonly caFile?: string;
  /** The greeting text after "* OK " / "+OK ". */
  readonly greeting: string;
  readonly masterUser?: DovecotUser;
  readonly dir: string;
  /** instance_name; Dovecot's child processes show it in their command line. */
  readonly instanceName: string;
  /** PID of the Dovecot master (changes on restart). */
  readonly pid: number;
  readonly logFile: string;
  /** Stops Dovecot and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** Stops and starts again on the same ports; mail is kept. */
  restart(): Promise<void>;
  /** Stops the daemon but keeps its directory, ports and mail, to simulate an outage. */
  stopOnly(): Promise<void>;
  /** Starts the daemon again on the same ports after stopOnly(). */
  startAgain(): Promise<void>;
  /**
   * SIGSTOP to the master and all its processes (resolves once they are stopped): connections are
   * still accepted by the kernel but never answered, like a hung backend. Await it.
   */
  pause(): Promise<void>;
  /** SIGCONT after pause(). */
  resume(): void;
  /** The user's Maildir (home/<user>/Maildir). */
  mailDir(user: string): string;
  /** Drops a message into the user's Maildir new/ (owned by mail); returns the file path. */
  deliver(user: string, rfc822: Buffer | string): Promise<string>;
  /** The Dovecot log (log_path): logins, rip=..., errors. */
  readLog(): Promise<string>;
}

function passwdLine(user: DovecotUser): string {
  if (/[:\r\n\0]/.test(user.name)) throw new Error(`dovecot: unsupported user name ${JSON.stringify(user.name)}`);
  // {PLAIN} unless the password cannot be written into a passwd-file verbatim.
  const hash = /[:\r\n\0]/.test(user.password) ? sshaHash(user.password) : `{PLAIN}${user.password}`;
  return `${user.name}:${hash}::::::`;
}

interface Ports {
  imap: number;
  pop3: number;
  imaps?: number;
  pop3s?: number;
  imapHaproxy?: number;
  pop3Haproxy?: number;
  sieve?: number;
}

function dovecotConf(
  dir: string,
  instanceName: string,
  greeting: string,
  ports: Ports,
  trustedNetworks: string,
  certs: { certFile: string; keyFile: string } | undefined,
  hasMaster: boolean,
  authFailureDelaySeconds: number,
  mailProcessClientLimit: number,
  extraConfig: readonly string[],
): string {
  const listener = (name: string, port: number | undefined, extra: string[] = []): string[] =>
    port === undefined
      ? [`  inet_listener ${name} {`, '    port = 0', '  }']
      : [`  inet_listener ${name} {`, '    address = 127.0.0.1', `    port = ${port}`, ...extra.map((l) => `    ${l}`), '  }'];
  const mailProcessLimits = mailProcessClientLimit > 1 ? [`  client_limit = ${mailProcessClientLimit}`, '  service_count = 0'] : [];
  const lines = [
    '# mailfront test Dovecot instance',
    `instance_name = ${instanceName}`,
    `base_dir = ${join(dir, 'run')}`,
    `state_dir = ${join(dir, 'state')}`,
    `log_path = ${join(dir, 'dovecot.log')}`,
    `info_log_path = ${join(dir, 'dovecot.log')}`,
    'log_timestamp = "%Y-%m-%d %H:%M:%S "',
    `protocols = imap pop3${ports.sieve !== undefined ? ' sieve' : ''}`,
    'listen = 127.0.0.1',
    `login_greeting = ${greeting}`,
    `login_trusted_networks = ${trustedNetworks}`,
    ...(ports.imapHaproxy !== undefined ? ['haproxy_trusted_networks = 127.0.0.0/8'] : []),
    'disable_plaintext_auth = no',
    'auth_mechanisms = plain login',
    'auth_verbose = yes',
    `auth_failure_delay = ${authFailureDelaySeconds} secs`,
    'auth_master_user_separator = *',
    'first_valid_uid = 8',
    'mail_location = maildir:~/Maildir',
    'mail_fsync = never',
    'default_vsz_limit = 2G',
    'default_process_limit = 2000',
    'default_client_limit = 20000',
    'verbose_proctitle = yes',
  ];
  if (certs) {
    lines.push('ssl = yes', `ssl_cert = <${certs.certFile}`, `ssl_key = <${certs.keyFile}`);
    if (existsSync('/usr/share/dovecot/dh.pem')) lines.push('ssl_dh = </usr/share/dovecot/dh.pem');
  } else {
    lines.push('ssl = no');
  }
  if (hasMaster) {
    lines.push(
      'passdb {',
      '  driver = passwd-file',
      `  args = ${join(dir, 'master-users')}`,
      '  master = yes',
      '  pass = yes',
      '}',
    );
  }
  lines.push(
    'passdb {',
    '  driver = passwd-file',
    `  args = ${join(dir, 'users')}`,
    '}',
    'userdb {',
    '  driver = static',
    `  args = uid=mail gid=mail home=${join(dir, 'home')}/%u`,
    '}',
    'service imap-login {',
    ...listener('imap', ports.imap),
    ...listener('imaps', ports.imaps, ['ssl = yes']),
    ...(ports.imapHaproxy !== undefined ? listener('imap_haproxy', ports.imapHaproxy, ['haproxy = yes']) : []),
    '  service_count = 0',
    '  client_limit = 5000',
    '  process_limit = 4',
    '  process_min_avail = 1',
    '}',
    'service pop3-login {',
    ...listener('pop3', ports.pop3),
    ...listener('pop3s', ports.pop3s, ['ssl = yes']),
    ...(ports.pop3Haproxy !== undefined ? listener('pop3_haproxy', ports.pop3Haproxy, ['haproxy = yes']) : []),
    '  service_count = 0',
    '  client_limit = 5000',
    '  process_limit = 4',
    '  process_min_avail = 1',
    '}',
    'service imap {',
    '  process_limit = 5000',
    ...mailProcessLimits,
    '}',
    'service pop3 {',
    '  process_limit = 5000',
    ...mailProcessLimits,
    '}',
    '# No per-IP auth penalty: every test client comes from 127.0.0.1.',
    'service anvil {',
    '  unix_listener anvil-auth-penalty {',
    '    mode = 0',
    '  }',
    '}',
    'service auth {',
    '  client_limit = 20000',
    '}',
    'protocol imap {',
    '  mail_max_userip_connections = 10000',
    '}',
    'protocol pop3 {',
    '  mail_max_userip_connections = 10000',
    '}',
  );
  if (ports.sieve !== undefined) {
    lines.push(
      'service managesieve-login {',
      ...listener('sieve', ports.sieve),
      '  service_count = 0',
      '  process_limit = 4',
      '  process_min_avail = 1',
      '}',
      'service managesieve {',
      '  process_limit = 5000',
      '}',
      'protocol sieve {',
      '  mail_max_userip_connections = 10000',
      '}',
      'plugin {',
      '  sieve = file:~/sieve;active=~/.dovecot.sieve',
      '}',
    );
  }
  lines.push(...extraConfig, '');
  return lines.join('\n');
}

let deliveries = 0;

/** The gid of a group from /etc/group. */
function groupId(name: string): number {
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const fields = line.split(':');
    if (fields[0] === name && fields[2] !== undefined) return Number(fields[2]);
  }
  throw new Error(`dovecot: group ${name} not found (is dovecot-core installed?)`);
}

async function ensureMaildir(maildir: string): Promise<void> {
  const home = join(maildir, '..');
  for (const d of [home, maildir, join(maildir, 'cur'), join(maildir, 'new'), join(maildir, 'tmp')]) {
    await mkdir(d, { recursive: true, mode: 0o700 });
    await chown(d, MAIL_UID, MAIL_GID);
  }
}

/** Starts Dovecot on fresh ports (again on others if one was taken before Dovecot bound it). */
export function startDovecot(options: DovecotOptions): Promise<Dovecot> {
  return onFreshPorts(`dovecot ${options.name}`, () => startDovecotOnce(options));
}

async function startDovecotOnce(options: DovecotOptions): Promise<Dovecot> {
  if (!/^[A-Za-z0-9_.-]+$/.test(options.name)) throw new Error(`dovecot: name must be [A-Za-z0-9_.-]+, got ${options.name}`);
  const tmp: TmpDir = tmpDir(`dovecot-${options.name}`);
  const dir = tmp.path;
  let life: Restartable | undefined;
  try {
    const ports: Ports = { imap: await freePort(), pop3: await freePort() };
    if (options.tls) {
      ports.imaps = await freePort();
      ports.pop3s = await freePort();
    }
    if (options.haproxy) {
      ports.imapHaproxy = await freePort();
      ports.pop3Haproxy = await freePort();
    }
    if (options.sieve) ports.sieve = await freePort();
    const certs = options.tls ? await makeCerts(dir) : undefined;
    const instanceName = `mailfront-${options.name}-${randomBytes(4).toString('hex')}`;
    const greeting = `${options.name} ready.`;
    const confFile = join(dir, 'dovecot.conf');
    const logFile = join(dir, 'dovecot.log');
    const stderrFile = join(dir, 'dovecot.stderr.log');
    await mkdir(join(dir, 'state'), { mode: 0o750 });
    await mkdir(join(dir, 'home'), { mode: 0o755 });
    await chown(join(dir, 'home'), MAIL_UID, MAIL_GID);
    // The auth process runs as `dovecot`: passwd-files are root:dovecot 0640.
    const dovecotGid = groupId('dovecot');
    await writeFile(join(dir, 'users'), options.users.map(passwdLine).join('\n') + '\n', { mode: 0o640 });
    await chown(join(dir, 'users'), 0, dovecotGid);
    if (options.masterUser) {
      await writeFile(join(dir, 'master-users'), passwdLine(options.masterUser) + '\n', { mode: 0o640 });
      await chown(join(dir, 'master-users'), 0, dovecotGid);
    }
    await writeFile(
      confFile,
      dovecotConf(dir, instanceName, greeting, ports, options.trustedNetworks ?? '127.0.0.0/8', certs, options.masterUser !== undefined,
        options.authFailureDelaySeconds ?? 0, options.mailProcessClientLimit ?? 1, options.extraConfig ?? []),
    );
    const mailDir = (user: string): string => join(dir, 'home', user, 'Maildir');
    for (const user of options.users) await ensureMaildir(mailDir(user.name));

    const allPorts = [ports.imap, ports.pop3, ports.imaps, ports.pop3s, ports.imapHaproxy, ports.pop3Haproxy, ports.sieve].filter(
      (p): p is number => p !== undefined,
    );
    const ready = async (daemon: Daemon): Promise<void> => {
      try {
        for (const port of allPorts) await waitForPort(port, { daemon });
      } catch (err) {
        const log = await readFile(logFile, 'utf8').catch(() => '');
        throw new Error(`${(err as Error).message}\n--- ${logFile}:\n${log.split('\n').slice(-30).join('\n')}`);
      }
    };
    const spawn = (): Daemon => spawnDaemon({ name: `dovecot ${options.name}`, command: '/usr/sbin/dovecot', args: ['-c', confFile, '-F'], logFile: stderrFile, cwd: dir });
    const started = await restartable(`dovecot ${options.name}`, spawn, ready, () => tmp.remove());
    life = started;

    const dovecot: Dovecot = {
      name: options.name,
      host: '127.0.0.1',
      imapPort: ports.imap,
      pop3Port: ports.pop3,
      ...(ports.imaps !== undefined ? { imapsPort: ports.imaps } : {}),
      ...(ports.pop3s !== undefined ? { pop3sPort: ports.pop3s } : {}),
      ...(ports.imapHaproxy !== undefined ? { imapHaproxyPort: ports.imapHaproxy } : {}),
      ...(ports.pop3Haproxy !== undefined ? { pop3HaproxyPort: ports.pop3Haproxy } : {}),
      ...(ports.sieve !== undefined ? { sievePort: ports.sieve } : {}),
      ...(certs ? { caFile: certs.caFile } : {}),
      ...(options.masterUser ? { masterUser: options.masterUser } : {}),
      greeting,
      dir,
      instanceName,
      get pid(): number {
        return started.pid;
      },
      logFile,
      ...lifecycleOf(started),
      mailDir,
      async deliver(user: string, rfc822: Buffer | string): Promise<string> {
        const maildir = mailDir(user);
        await ensureMaildir(maildir);
        const body = typeof rfc822 === 'string' ? Buffer.from(rfc822, 'utf8') : rfc822;
        deliveries += 1;
        const base = `${Math.floor(Date.now() / 1000)}.M${deliveries}P${process.pid}R${randomBytes(4).toString('hex')}.mailfront,S=${body.length}`;
        const tmpFile = join(maildir, 'tmp', base);
        const newFile = join(maildir, 'new', base);
        await writeFile(tmpFile, body, { mode: 0o600 });
        await chown(tmpFile, MAIL_UID, MAIL_GID);
        await rename(tmpFile, newFile);
        return newFile;
      },
      readLog: () => readFile(logFile, 'utf8').catch(() => ''),
    };
    return dovecot;
  } catch (err) {
    // After a launch, stop() stops the process and removes the directory; a failed launch has
    // stopped its process already.
    await (life?.stop() ?? tmp.remove()).catch(() => undefined);
    throw err;
  }
}
