// A private Cyrus IMAP 3.6 instance (imapd + pop3d, optionally timsieved, under master) on free loopback ports.
// Cyrus conflicts with Dovecot in apt, so scripts/bootstrap.sh unpacks its .debs into
// <repo>/.cache/cyrus; the binaries run from there with LD_LIBRARY_PATH.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { chmod, chown, cp, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { LineClient, quoteImap } from './lineclient.js';
import { freePort, onFreshPorts } from './ports.js';
import { descendantsOf, isAlive, lifecycleOf, restartable, run, spawnDaemon, waitForPort, type Daemon, type Restartable, type StopOptions } from './process.js';
import { tmpDir, type TmpDir } from './tmp.js';

/** Cyrus runs as `nobody` (its compiled-in `cyrus` user does not exist here). */
export const NOBODY_UID = 65534;
export const NOGROUP_GID = 65534;

export interface CyrusUser {
  readonly name: string;
  readonly password: string;
}

export interface CyrusOptions {
  readonly users: readonly CyrusUser[];
  /** Listed in `proxyservers`: may log in with SASL PLAIN authzid=<user>, authcid=<proxyAdmin>. */
  readonly proxyAdmin: CyrusUser;
  /** Create user.<name> for every user at start (default true). */
  readonly createMailboxes?: boolean;
  /**
   * popminpoll in minutes: pop3d answers a login sooner than this after the user's last one with
   * -ERR [LOGIN-DELAY] (default 0, no minimum). An option and not an imapdConf line: Cyrus stops
   * at a key written twice in imapd.conf.
   */
  readonly popMinPollMinutes?: number;
  /** failedloginpause in seconds (Cyrus' default is 3; 0 here to keep tests fast). */
  readonly failedLoginPauseSeconds?: number;
  /** timsieved (ManageSieve) on a free port; scripts under sievedir in the instance's directory. */
  readonly sieve?: boolean;
  /** More imapd.conf lines (e.g. 'virtdomains: userid'), after the harness's own. */
  readonly imapdConf?: readonly string[];
}

export interface Cyrus {
  readonly host: '127.0.0.1';
  readonly imapPort: number;
  readonly pop3Port: number;
  /** timsieved when the sieve option is set. */
  readonly sievePort?: number;
  /** sievedir of imapd.conf. */
  readonly sieveDir: string;
  readonly dir: string;
  /** PID of the Cyrus master (changes on restart). */
  readonly pid: number;
  /** The Cyrus admin (`admins: cyrus`), a SASL user in the instance's sasldb. */
  readonly adminUser: string;
  readonly adminPassword: string;
  readonly proxyAdmin: CyrusUser;
  /** Stops master (and its imapd/pop3d children) and removes the directory. Idempotent. */
  stop(): Promise<void>;
  /** Stops and starts master again on the same ports; mailboxes are kept. */
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
  /**
   * Logs in as the admin and runs CREATE user.<name> (altnamespace). Idempotent. Throws when the
   * new INBOX has the MAILBOXID of another user's INBOX the harness created (one mailbox for both).
   */
  createMailbox(user: string): Promise<void>;
  /** The MAILBOXID (RFC 8474) of the user's INBOX, read in a proxy admin login as the user. */
  mailboxId(user: string): Promise<string>;
  /** Appends a message to the user's INBOX (proxy admin login with authzid = user). */
  deliver(user: string, rfc822: Buffer | string): Promise<void>;
  /** Master's stdout/stderr (Cyrus itself logs to syslog, which is not captured here). */
  readLog(): Promise<string>;
}

/** The repository root: the nearest ancestor with mailfront's package.json. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        const parsed = JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown };
        if (parsed.name === 'mailfront') return dir;
      } catch {
        // keep looking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cyrus: cannot find the mailfront repository root');
    dir = parent;
  }
}

/** Where Cyrus was unpacked (MAILFRONT_CYRUS_ROOT overrides <repo>/.cache/cyrus). */
export function cyrusRoot(): string {
  return process.env['MAILFRONT_CYRUS_ROOT'] ?? join(repoRoot(), '.cache', 'cyrus');
}

/** True if every directory from / down to `path` lets `other` users (like nobody) traverse it. */
function traversableByOthers(path: string): boolean {
  let dir = path;
  for (;;) {
    const st = statSync(dir);
    if (st.uid !== NOBODY_UID && (st.mode & 0o001) === 0) return false;
    const parent = dirname(dir);
    if (parent === dir) return true;
    dir = parent;
  }
}

let privateCopy: Promise<string> | undefined;

/**
 * Cyrus' services run as `nobody` and exec the binaries from the unpacked root. If `nobody` cannot
 * reach it (e.g. the repo lives under /root), use a per-process copy under os.tmpdir() instead.
 */
function reachableCyrusRoot(root: string): Promise<string> {
  if (traversableByOthers(join(root, 'usr', 'lib', 'cyrus', 'bin'))) return Promise.resolve(root);
  privateCopy ??= (async () => {
    const copy = tmpDir('cyrus-root');
    await cp(join(root, 'usr', 'lib'), join(copy.path, 'usr', 'lib'), { recursive: true, verbatimSymlinks: true });
    await chmodTree(copy.path);
    return copy.path;
  })();
  return privateCopy;
}

async function chmodTree(path: string): Promise<void> {
  await chmod(path, 0o755);
  for (const entry of await readdir(path, { withFileTypes: true })) {
    if (entry.isDirectory()) await chmodTree(join(path, entry.name));
  }
}

async function chownTree(path: string, uid: number, gid: number): Promise<void> {
  await chown(path, uid, gid);
  for (const entry of await readdir(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    if (entry.isDirectory()) await chownTree(child, uid, gid);
    else await chown(child, uid, gid);
  }
}

/** How long a Cyrus master whose children have all exited is given to exit itself before SIGKILL. */
const MASTER_EXIT_GRACE_MS = 300;

/**
 * The master with a stop that does not wait out its deadline for nothing. After a SIGTERM, Cyrus
 * 3.6's master sends its children SIGTERM and waits for them, and in many stops after a
 * connection that hung up at once (as waitForPort()'s check does) it then spins at full CPU with
 * SIGCHLD blocked and pending, its children zombies it never reaps, until the stop's SIGKILL 10 s
 * later. Once every child of it has exited, the master has nothing left to do but exit: it is
 * SIGKILLed when it has not done so MASTER_EXIT_GRACE_MS after that.
 */
function withPromptStop(master: Daemon): Daemon {
  return {
    ...master,
    stop(options?: StopOptions): Promise<void> {
      // The daemon's own stop first: it continues a paused master before it looks at the children.
      const stopping = master.stop(options);
      void (async () => {
        let childless: number | undefined;
        // Bounded by the daemon's own stop, which SIGKILLs the master at its deadline.
        while (!master.hasExited()) {
          if (descendantsOf(master.pid).length > 0) childless = undefined;
          else if (childless === undefined) childless = Date.now();
          else if (Date.now() - childless >= MASTER_EXIT_GRACE_MS && isAlive(master.pid)) {
            master.signal('SIGKILL');
            return;
          }
          await sleep(50);
        }
      })();
      return stopping;
    },
  };
}

/** Starts Cyrus on fresh ports (again on others if one was taken before Cyrus bound it). */
export function startCyrus(options: CyrusOptions): Promise<Cyrus> {
  return onFreshPorts('cyrus', () => startCyrusOnce(options));
}

async function startCyrusOnce(options: CyrusOptions): Promise<Cyrus> {
  const unpacked = cyrusRoot();
  if (!existsSync(join(unpacked, 'usr', 'lib', 'cyrus', 'bin', 'master'))) {
    throw new Error(`cyrus: ${join(unpacked, 'usr', 'lib', 'cyrus', 'bin', 'master')} is missing; run: bash scripts/bootstrap.sh`);
  }
  const root = await reachableCyrusRoot(unpacked);
  const bin = join(root, 'usr', 'lib', 'cyrus', 'bin');
  const tmp: TmpDir = tmpDir('cyrus');
  const dir = tmp.path;
  if (/\s/.test(dir) || /\s/.test(bin)) throw new Error('cyrus: paths with whitespace cannot be used in cyrus.conf');
  const adminUser = 'cyrus';
  const adminPassword = `admin-${randomBytes(6).toString('hex')}`;
  // The unpacked libraries sit in the machine's multiarch folder (x86_64-linux-gnu, aarch64-linux-gnu, ...).
  const libDirs = (await readdir(join(root, 'usr', 'lib'))).filter((name) => /-linux-gnu/.test(name)).map((name) => join(root, 'usr', 'lib', name));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LD_LIBRARY_PATH: [...libDirs, process.env['LD_LIBRARY_PATH']]
      .filter((p): p is string => p !== undefined && p !== '')
      .join(':'),
  };
  let life: Restartable | undefined;
  try {
    const imapPort = await freePort();
    const pop3Port = await freePort();
    const sievePort = options.sieve ? await freePort() : undefined;
    const imapdConf = join(dir, 'imapd.conf');
    const cyrusConf = join(dir, 'cyrus.conf');
    const pidFile = join(dir, 'master.pid');
    const logFile = join(dir, 'master.log');
    const conf = join(dir, 'conf');
    // configdirectory/socket is needed by imapd for IDLE ("bind: No such file or directory" otherwise).
    for (const sub of ['proc', 'lock', 'socket', 'log', 'db', 'sieve', 'user', 'quota', 'msg']) {
      await mkdir(join(conf, sub), { recursive: true });
    }
    await mkdir(join(dir, 'spool'));
    await writeFile(
      imapdConf,
      [
        `configdirectory: ${conf}`,
        `partition-default: ${join(dir, 'spool')}`,
        `proc_path: ${join(conf, 'proc')}`,
        `mboxname_lockpath: ${join(conf, 'lock')}`,
        `sievedir: ${join(conf, 'sieve')}`,
        `idlesocket: ${join(conf, 'socket', 'idle')}`,
        `notifysocket: ${join(conf, 'socket', 'notify')}`,
        `lmtpsocket: ${join(conf, 'socket', 'lmtp')}`,
        `statuscache_db_path: ${join(conf, 'statuscache.db')}`,
        `duplicate_db_path: ${join(conf, 'deliver.db')}`,
        `tls_sessions_db_path: ${join(conf, 'tls_sessions.db')}`,
        `ptscache_db_path: ${join(conf, 'ptscache.db')}`,
        'cyrus_user: nobody',
        'servername: localhost',
        `admins: ${adminUser}`,
        `proxyservers: ${options.proxyAdmin.name}`,
        'allowplaintext: yes',
        'altnamespace: yes',
        'unixhierarchysep: no',
        'delete_mode: immediate',
        // Without a defaultpartition, the first CREATE of a top-level mailbox (user.<name>) in an
        // imapd process picks a partition through partlist_initialize(), which reseeds rand() with
        // srand(time(NULL)). Debian's Cyrus 3.6 is built without libuuid, so makeuuid() draws a
        // mailbox's uniqueid (MAILBOXID, and its folder under <partition>/uuid/) from rand():
        // two imapd processes whose first CREATE fell in the same second gave two users the same
        // uniqueid, and so one INBOX (folder, messages) for both. With the partition named here
        // no reseed happens, and rand() keeps the seed time(NULL) * getpid() that every process
        // gets at its start (cyrusdb_init(), in the skiplist backend's init).
        'defaultpartition: default',
        'expunge_mode: immediate',
        'sasl_pwcheck_method: auxprop',
        'sasl_auxprop_plugin: sasldb',
        `sasl_sasldb_path: ${join(dir, 'sasldb2')}`,
        'sasl_mech_list: PLAIN LOGIN',
        `popminpoll: ${options.popMinPollMinutes ?? 0}`,
        `failedloginpause: ${options.failedLoginPauseSeconds ?? 0}`,
        ...(options.imapdConf ?? []),
        '',
      ].join('\n'),
    );
    await writeFile(
      cyrusConf,
      [
        'START {',
        `  recover cmd="${join(bin, 'ctl_cyrusdb')} -C ${imapdConf} -r"`,
        '}',
        'SERVICES {',
        `  imap cmd="${join(bin, 'imapd')} -C ${imapdConf}" listen="127.0.0.1:${imapPort}" prefork=1 maxchild=2000`,
        `  pop3 cmd="${join(bin, 'pop3d')} -C ${imapdConf}" listen="127.0.0.1:${pop3Port}" prefork=1 maxchild=2000`,
        ...(sievePort !== undefined ? [`  sieve cmd="${join(bin, 'timsieved')} -C ${imapdConf}" listen="127.0.0.1:${sievePort}" prefork=1 maxchild=200`] : []),
        '}',
        'EVENTS {',
        '}',
        '',
      ].join('\n'),
    );
    const sasldb = join(dir, 'sasldb2');
    for (const user of [{ name: adminUser, password: adminPassword }, options.proxyAdmin, ...options.users]) {
      await run('saslpasswd2', ['-f', sasldb, '-u', 'localhost', '-c', '-p', user.name], { input: user.password });
    }
    await chownTree(dir, NOBODY_UID, NOGROUP_GID);

    const spawn = (): Daemon =>
      withPromptStop(spawnDaemon({
        name: 'cyrus master',
        command: join(bin, 'master'),
        // Without -d master stays in the foreground (our PID is master's); -D keeps stderr open.
        args: ['-C', imapdConf, '-M', cyrusConf, '-p', pidFile, '-D'],
        logFile,
        cwd: dir,
        env,
        // On SIGTERM master does kill(0, SIGTERM): its own process group, not ours.
        ownProcessGroup: true,
      }));
    const ready = async (daemon: Daemon): Promise<void> => {
      await waitForPort(imapPort, { daemon });
      await waitForPort(pop3Port, { daemon });
      if (sievePort !== undefined) await waitForPort(sievePort, { daemon });
    };
    const started = await restartable('cyrus', spawn, ready, () => tmp.remove());
    life = started;

    const mailboxId = async (user: string): Promise<string> => {
      const client = await LineClient.connect(imapPort);
      try {
        await client.readLine();
        // The admin has no read right on users' mailboxes (STATUS: Permission denied).
        const auth = await client.authenticatePlain(user, options.proxyAdmin.name, options.proxyAdmin.password);
        if (auth.status !== 'OK') throw new Error(`cyrus: proxy login as ${user} failed: ${auth.status} ${auth.text}`);
        // EXAMINE's MAILBOXID response code, from the opened mailbox: Cyrus 3.6 answers a STATUS
        // of MAILBOXID with MESSAGES (before the mailbox was opened) with stray bytes for the id.
        const result = await client.imapOk('EXAMINE INBOX');
        const id = /^\* OK \[MAILBOXID \(([^)\s]+)\)\]/im.exec(result.untagged.join('\n'))?.[1];
        if (id === undefined) throw new Error(`cyrus: EXAMINE INBOX for ${user} gave no MAILBOXID: ${result.untagged.join(' | ')}`);
        await client.imap('LOGOUT').catch(() => undefined);
        return id;
      } finally {
        client.close();
      }
    };

    // The MAILBOXID of every INBOX the harness created, by user: a new one must not be another's.
    const mailboxIds = new Map<string, string>();
    const checkOwnMailbox = async (user: string): Promise<void> => {
      const id = await mailboxId(user);
      for (const [other, otherId] of mailboxIds) {
        if (other !== user && otherId === id) {
          throw new Error(`cyrus: the INBOXes of ${other} and ${user} are one mailbox (MAILBOXID ${id}); each user needs a mailbox of its own`);
        }
      }
      mailboxIds.set(user, id);
    };

    const createMailbox = async (user: string): Promise<void> => {
      const client = await LineClient.connect(imapPort);
      try {
        await client.readLine();
        await client.imapOk(`LOGIN ${quoteImap(adminUser)} ${quoteImap(adminPassword)}`);
        const result = await client.imap(`CREATE ${quoteImap(`user.${user}`)}`);
        if (result.status !== 'OK' && !/ALREADYEXISTS|already exists/i.test(result.text)) {
          throw new Error(`cyrus: CREATE user.${user} failed: ${result.status} ${result.text}`);
        }
        await client.imap('LOGOUT').catch(() => undefined);
      } finally {
        client.close();
      }
      await checkOwnMailbox(user);
    };

    if (options.createMailboxes ?? true) {
      for (const user of options.users) await createMailbox(user.name);
    }

    const cyrus: Cyrus = {
      host: '127.0.0.1',
      imapPort,
      pop3Port,
      ...(sievePort !== undefined ? { sievePort } : {}),
      sieveDir: join(conf, 'sieve'),
      dir,
      get pid(): number {
        return started.pid;
      },
      adminUser,
      adminPassword,
      proxyAdmin: options.proxyAdmin,
      ...lifecycleOf(started),
      createMailbox,
      mailboxId,
      async deliver(user: string, rfc822: Buffer | string): Promise<void> {
        const client = await LineClient.connect(imapPort);
        try {
          await client.readLine();
          const auth = await client.authenticatePlain(user, options.proxyAdmin.name, options.proxyAdmin.password);
          if (auth.status !== 'OK') throw new Error(`cyrus: proxy login as ${user} failed: ${auth.status} ${auth.text}`);
          const result = await client.append('INBOX', rfc822);
          if (result.status !== 'OK') throw new Error(`cyrus: APPEND for ${user} failed: ${result.status} ${result.text}`);
          await client.imap('LOGOUT').catch(() => undefined);
        } finally {
          client.close();
        }
      },
      readLog: () => readFile(logFile, 'utf8').catch(() => ''),
    };
    return cyrus;
  } catch (err) {
    // After a launch, stop() stops the process and removes the directory (mailbox creation may
    // fail after it); a failed launch has stopped its process already.
    await (life?.stop() ?? tmp.remove()).catch(() => undefined);
    throw err;
  }
}
