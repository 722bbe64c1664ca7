/**
 * The benchmark's servers: slapd with the users, one Dovecot per store (the test harness in
 * test/integration/servers), mailfront as its own process (`node …/cli/main.js serve`), and
 * optionally nginx's mail proxy with the bench's auth_http service. Everything listens on free
 * loopback ports and is stopped by the PID that was started.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import {
  freePort,
  makeCerts,
  spawnDaemon,
  startDovecot,
  startSlapd,
  tmpDir,
  waitForPort,
  type Daemon,
  type Dovecot,
  type Slapd,
  type TestCerts,
  type TmpDir,
} from '../test/integration/servers/index.js';
import type { AuthHttpConfig } from './auth-http.js';
import type { Account } from './load.js';

export interface BenchUser extends Account {
  readonly store: string;
}

/** Where a store's master listens: a Dovecot, or the instant backend of the `cpu` step. */
export type StorePorts = Pick<Dovecot, 'imapPort' | 'pop3Port'>;
export type Stores = ReadonlyMap<string, StorePorts>;

export interface Backends {
  readonly slapd: Slapd;
  /** Store name → its (only, master) Dovecot slot, with Dovecot's default process per session. */
  readonly stores: ReadonlyMap<string, Dovecot>;
  /** Users the login and idle workloads cycle over. */
  readonly users: readonly BenchUser[];
  /** The user whose INBOX holds the large message. */
  readonly fetchUser: BenchUser;
  readonly masterUser: Account;
  readonly certs: TestCerts;
  readonly dir: string;
  /**
   * Starts a second Dovecot per store (same users) whose imap/pop3 processes each serve
   * `clientLimit` sessions: what thousands of idle sessions need. The caller stops them.
   */
  startManySessionStores(clientLimit: number): Promise<ReadonlyMap<string, Dovecot> & { stop(): Promise<void> }>;
  stop(): Promise<void>;
}

/** Starts slapd and `storeCount` Dovecot instances with `userCount` users spread over them. */
export async function startBackends(options: {
  readonly userCount: number;
  readonly storeCount: number;
  readonly fetchMessageBytes: number;
  readonly dovecotClientLimit: number;
}): Promise<Backends> {
  const dir = tmpDir('bench');
  const certs = await makeCerts(dir.path);
  const storeNames = Array.from({ length: options.storeCount }, (_, i) => `store${i + 1}`);
  // Every user has a password of the same shape and strength, hashed the same way in each server.
  const users: BenchUser[] = Array.from({ length: options.userCount }, (_, i) => ({
    user: `bench${String(i).padStart(5, '0')}`,
    password: `pw-${randomBytes(9).toString('base64url')}`,
    store: storeNames[i % storeNames.length] ?? 'store1',
  }));
  const fetchUser: BenchUser = { user: 'benchfetch', password: `pw-${randomBytes(9).toString('base64url')}`, store: storeNames[0] ?? 'store1' };
  const masterUser: Account = { user: 'proxyadmin', password: `master-${randomBytes(9).toString('base64url')}` };
  const all = [...users, fetchUser];
  const slapd = await startSlapd({ users: all.map((u) => ({ uid: u.user, password: u.password, store: u.store })) });
  const startStores = async (slot: string, clientLimit: number): Promise<Map<string, Dovecot>> => {
    const started = new Map<string, Dovecot>();
    try {
      for (const name of storeNames) {
        const dovecot = await startDovecot({
          name: `${name}-${slot}`,
          users: all.filter((u) => u.store === name).map((u) => ({ name: u.user, password: u.password })),
          masterUser: { name: masterUser.user, password: masterUser.password },
          mailProcessClientLimit: clientLimit,
        });
        started.set(name, dovecot);
      }
    } catch (error) {
      await Promise.all([...started.values()].map((d) => d.stop()));
      throw error;
    }
    return started;
  };
  let stores: Map<string, Dovecot>;
  try {
    stores = await startStores('slot1', options.dovecotClientLimit);
    await stores.get(fetchUser.store)?.deliver(fetchUser.user, largeMessage(options.fetchMessageBytes));
  } catch (error) {
    await slapd.stop();
    throw error;
  }
  return {
    slapd,
    stores,
    users,
    fetchUser,
    masterUser,
    certs,
    dir: dir.path,
    async startManySessionStores(clientLimit: number) {
      const many = await startStores('many', clientLimit);
      return Object.assign(many, { stop: () => Promise.all([...many.values()].map((d) => d.stop().catch(() => undefined))).then(() => undefined) });
    },
    async stop() {
      await Promise.all([...stores.values()].map((d) => d.stop().catch(() => undefined)));
      await slapd.stop().catch(() => undefined);
      await dir.remove();
    },
  };
}

/** An RFC 5322 message of `bytes` bytes: text lines of 76 characters. */
function largeMessage(bytes: number): Buffer {
  const header = 'From: sender@example.org\r\nTo: benchfetch@example.org\r\nSubject: large message\r\nMessage-ID: <large@bench>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n';
  const line = `${'0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'.repeat(2).slice(0, 76)}\r\n`;
  const body = Buffer.alloc(bytes - header.length);
  for (let i = 0; i < body.length; i += line.length) body.write(line, i, 'latin1');
  body.write('\r\n', body.length - 2, 'latin1');
  return Buffer.concat([Buffer.from(header, 'latin1'), body]);
}

/** The IMAP and POP3 ports of a user's store's Dovecot. */
export function directPorts(backends: Backends, user: BenchUser): { imap: number; pop3: number } {
  const d = backends.stores.get(user.store);
  if (d === undefined) throw new Error(`no Dovecot for ${user.store}`);
  return { imap: d.imapPort, pop3: d.pop3Port };
}

/**
 * bench/floor.ts as its own process, routing each user to its store's master (by default the
 * store's Dovecot): IMAP on `port`, POP3 on `pop3Port`.
 */
export async function startFloor(backends: Backends, stores: Stores = backends.stores): Promise<{ pid: number; port: number; pop3Port: number; stop(): Promise<void> }> {
  const dir = tmpDir('bench-floor');
  const [port, pop3Port] = [await freePort(), await freePort()];
  const portsOf = (u: BenchUser): StorePorts => {
    const ports = stores.get(u.store);
    if (ports === undefined) throw new Error(`no master for ${u.store}`);
    return ports;
  };
  const table = async (name: string, which: keyof StorePorts): Promise<string> => {
    const file = join(dir.path, name);
    await writeFile(file, JSON.stringify(Object.fromEntries([...backends.users, backends.fetchUser].map((u) => [u.user, portsOf(u)[which]]))));
    return file;
  };
  const [imapTable, pop3Table] = [await table('users.json', 'imapPort'), await table('users-pop3.json', 'pop3Port')];
  const script = await spawnScript(dir, 'floor', [String(port), imapTable, String(pop3Port), pop3Table], port, PROXY_NODE);
  await waitForPort(pop3Port);
  return { port, pop3Port, ...script };
}

/**
 * A bench script next to this file (`NAME.js`) as its own process, working in `dir` (removed
 * when it stops), once it listens on `port`.
 */
async function spawnScript(dir: TmpDir, name: string, args: readonly string[], port: number, node = process.execPath): Promise<{ pid: number; stop(): Promise<void> }> {
  const daemon = spawnDaemon({
    name,
    command: node,
    args: [fileURLToPath(new URL(`./${name}.js`, import.meta.url)), ...args],
    logFile: join(dir.path, `${name}.log`),
    cwd: dir.path,
  });
  try {
    await waitForPort(port, { daemon });
  } catch (error) {
    await daemon.stop();
    await dir.remove();
    throw error;
  }
  return {
    pid: daemon.pid,
    async stop() {
      await daemon.stop();
      await dir.remove();
    },
  };
}

/**
 * bench/instant-backend.ts as its own process, standing in for every store's master: the
 * backend of the `cpu` step. It answers POP3 too (bench/syscalls.ts; the `cpu` step logs in over IMAP).
 * With `delay`, every greeting and answer leaves late: "8" ms, or "~8" for 0 to 16 ms at random (bench/contention.ts).
 */
export async function startInstantBackend(backends: Backends, delay = '0'): Promise<{ pid: number; stores: Stores; stop(): Promise<void> }> {
  const port = await freePort();
  const pop3Port = await freePort();
  const script = await spawnScript(tmpDir('bench-instant'), 'instant-backend', [String(port), String(pop3Port), delay], port);
  await waitForPort(pop3Port);
  return { ...script, stores: new Map([...backends.stores.keys()].map((store) => [store, { imapPort: port, pop3Port }])) };
}

export interface MailfrontProcess {
  readonly daemon: Daemon;
  readonly pid: number;
  readonly imapPort: number;
  readonly imapsPort: number;
  readonly pop3Port: number;
  readonly configFile: string;
  readonly logFile: string;
  stop(): Promise<void>;
}

/** Deep-merges plain objects (arrays and scalars in `extra` replace). */
export function merge(base: Record<string, unknown>, extra: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(extra)) {
    const b = out[k];
    out[k] = v !== null && typeof v === 'object' && !Array.isArray(v) && b !== null && typeof b === 'object' && !Array.isArray(b)
      ? merge(b as Record<string, unknown>, v as Record<string, unknown>)
      : v;
  }
  return out;
}

/** The compiled CLI next to this file: dist/bench/setup.js → dist/src/cli/main.js. */
export const MAILFRONT_MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

/**
 * The node that runs the Node.js proxies under test, mailfront and the floor relay
 * (`BENCH_PROXY_NODE`, e.g. another release's binary); the bench's own helpers (load generator,
 * instant backend, nginx's auth_http service) stay on the node running the bench.
 */
export const PROXY_NODE = process.env['BENCH_PROXY_NODE'] || process.execPath;

/**
 * Starts mailfront as a child process with listeners for plain IMAP and POP3 (plaintext allowed:
 * a trusted network) and IMAPS. `extraConfig` is merged into the generated config.
 */
export async function startMailfront(backends: Backends, options: {
  readonly name: string;
  readonly loginMode: 'replay' | 'master-user';
  readonly extraConfig: Record<string, unknown>;
  readonly nodeArgs: readonly string[];
  /** The stores to route to (default: the backends' own). */
  readonly stores?: Stores;
  /** The CLI to run (default: this build's, MAILFRONT_MAIN); bench/compare.ts runs another build's. */
  readonly main?: string;
  /** The node binary (default PROXY_NODE); bench/compare.ts can run one build on another release. */
  readonly node?: string;
}): Promise<MailfrontProcess> {
  const stores = options.stores ?? backends.stores;
  const dir = tmpDir(`bench-${options.name}`);
  const [imapPort, imapsPort, pop3Port] = [await freePort(), await freePort(), await freePort()];
  const certificate = { cert: backends.certs.certFile, key: backends.certs.keyFile };
  const storesFile = join(dir.path, 'stores.yaml');
  const configFile = join(dir.path, 'mailfront.yaml');
  // Not beside the store map: mailfront watches the map's folder, and every batch of log lines
  // written there was an event it looked into (3 lstat calls and an inotify read, 1.4 system
  // calls per warm login), which a deployment logging to journald or a log folder does not pay.
  await mkdir(join(dir.path, 'log'));
  const logFile = join(dir.path, 'log', 'mailfront.log');
  await writeFile(storesFile, stringify({
    stores: Object.fromEntries([...stores].map(([store, d]) => [store, {
      current_master: `${store}-slot1`,
      slots: { [`${store}-slot1`]: { host: '127.0.0.1', imap_port: d.imapPort, pop3_port: d.pop3Port } },
    }])),
  }));
  await writeFile(join(dir.path, 'ldap.secret'), `${backends.slapd.bindPassword}\n`, { mode: 0o600 });
  await writeFile(join(dir.path, 'proxy.secret'), `${backends.masterUser.password}\n`, { mode: 0o600 });
  const config = merge({
    log: { level: 'info' },
    listeners: [
      { name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imapPort, tls: 'none', plaintext_without_tls: true },
      { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port: imapsPort, tls: 'implicit', certificate },
      { name: 'pop3', protocol: 'pop3', host: '127.0.0.1', port: pop3Port, tls: 'none', plaintext_without_tls: true },
    ],
    directory: {
      urls: [backends.slapd.url],
      bind_dn: backends.slapd.bindDn,
      bind_password_file: 'ldap.secret',
      base_dn: backends.slapd.usersDn,
      // The warm figures are every login a cache hit: the login steps take turns for a minute
      // or more, past the default 60 s (after which a user's next login goes to LDAP again).
      auth_cache_ttl_ms: 900_000,
    },
    store_map: { file: 'stores.yaml' },
    // Every benchmark client comes from 127.0.0.1: lift the per-address and per-user caps (a real
    // deployment sees many addresses) and the total above the largest idle-session count.
    connection_limits: { max_connections: 1_000_000, max_connections_per_address: 1_000_000, max_sessions_per_user: 100_000 },
    backend: options.loginMode === 'replay'
      ? { login_mode: 'replay' }
      : { login_mode: 'master-user', proxy_user: backends.masterUser.user, proxy_password_file: 'proxy.secret' },
  }, options.extraConfig);
  await writeFile(configFile, stringify(config));
  const daemon = spawnDaemon({
    name: `mailfront ${options.name}`,
    command: options.node ?? PROXY_NODE,
    args: [...options.nodeArgs, options.main ?? MAILFRONT_MAIN, 'serve', '-c', configFile],
    logFile,
    cwd: dir.path,
  });
  try {
    for (const port of [imapPort, imapsPort, pop3Port]) await waitForPort(port, { daemon });
  } catch (error) {
    await daemon.stop();
    await dir.remove();
    throw error;
  }
  return {
    daemon,
    pid: daemon.pid,
    imapPort,
    imapsPort,
    pop3Port,
    configFile,
    logFile,
    async stop() {
      await daemon.stop({ timeoutMs: 20_000 });
      await dir.remove();
    },
  };
}

export interface NginxProcess {
  readonly master: Daemon;
  readonly authHttp: Daemon;
  readonly imapPort: number;
  readonly imapsPort: number;
  readonly pop3Port: number;
  stop(): Promise<void>;
}

export const NGINX_BINARY = '/usr/sbin/nginx';
export const NGINX_MAIL_MODULE = '/usr/lib/nginx/modules/ngx_mail_module.so';

/** Why nginx cannot be used here, or null when nginx and its mail module are installed. */
export function nginxMissing(): string | null {
  if (!existsSync(NGINX_BINARY)) return `${NGINX_BINARY} not found (apt-get install nginx libnginx-mod-mail)`;
  if (!existsSync(NGINX_MAIL_MODULE)) return `${NGINX_MAIL_MODULE} not found (apt-get install libnginx-mod-mail)`;
  return null;
}

/** Starts the auth_http service and nginx's mail proxy (IMAP, IMAPS, POP3) in front of the stores. */
export async function startNginx(backends: Backends, options: { readonly workers: number; readonly fileLimit: number; readonly proxyBuffer: string; readonly stores?: Stores }): Promise<NginxProcess> {
  const stores = options.stores ?? backends.stores;
  const dir = tmpDir('bench-nginx');
  const [authPort, imapPort, imapsPort, pop3Port] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const authConfig: AuthHttpConfig = {
    port: authPort,
    ldapUrl: backends.slapd.url,
    bindDn: backends.slapd.bindDn,
    bindPassword: backends.slapd.bindPassword,
    baseDn: backends.slapd.usersDn,
    storeAttribute: 'mailStore',
    stores: Object.fromEntries([...stores].map(([store, d]) => [store, { host: '127.0.0.1', imapPort: d.imapPort, pop3Port: d.pop3Port }])),
  };
  const authHttp = spawnDaemon({
    name: 'auth-http',
    command: process.execPath,
    args: [fileURLToPath(new URL('./auth-http.js', import.meta.url))],
    logFile: join(dir.path, 'auth-http.log'),
    env: { ...process.env, BENCH_AUTH_HTTP: JSON.stringify(authConfig) },
  });
  await waitForPort(authPort, { daemon: authHttp });
  const conf = [
    `load_module ${NGINX_MAIL_MODULE};`,
    'user nobody nogroup;',
    `worker_processes ${options.workers};`,
    `worker_rlimit_nofile ${options.fileLimit};`,
    `pid ${join(dir.path, 'nginx.pid')};`,
    `error_log ${join(dir.path, 'error.log')} warn;`,
    'events {',
    `  worker_connections ${Math.max(1024, options.fileLimit - 100)};`,
    '}',
    'mail {',
    '  server_name localhost;',
    `  auth_http 127.0.0.1:${authPort}/auth;`,
    '  proxy_pass_error_message on;',
    ...(options.proxyBuffer !== '' ? [`  proxy_buffer ${options.proxyBuffer};`] : []),
    '  imap_auth login plain;',
    '  pop3_auth plain;',
    `  server { listen 127.0.0.1:${imapPort}; protocol imap; }`,
    `  server { listen 127.0.0.1:${pop3Port}; protocol pop3; }`,
    `  server { listen 127.0.0.1:${imapsPort} ssl; protocol imap; ssl_certificate ${backends.certs.certFile}; ssl_certificate_key ${backends.certs.keyFile}; }`,
    '}',
    '',
  ].join('\n');
  const confFile = join(dir.path, 'nginx.conf');
  await writeFile(confFile, conf);
  const master = spawnDaemon({
    name: 'nginx',
    command: NGINX_BINARY,
    args: ['-p', dir.path, '-e', join(dir.path, 'error.log'), '-c', confFile, '-g', 'daemon off; master_process on;'],
    logFile: join(dir.path, 'nginx.stderr.log'),
  });
  try {
    for (const port of [imapPort, imapsPort, pop3Port]) await waitForPort(port, { daemon: master });
  } catch (error) {
    await master.stop();
    await authHttp.stop();
    await dir.remove();
    throw error;
  }
  return {
    master,
    authHttp,
    imapPort,
    imapsPort,
    pop3Port,
    async stop() {
      await master.stop();
      await authHttp.stop();
      await dir.remove();
    },
  };
}
