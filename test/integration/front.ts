/**
 * Test fixture: runs mailfront in this process with a config written from the real servers the
 * test started (slapd, Dovecot, Cyrus), on free loopback ports, and captures its log lines.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { createLogger } from '../../src/log.js';
import type { Logger } from '../../src/log.js';
import type { Directory } from '../../src/auth/directory.js';
import { MailfrontError } from '../../src/errors.js';
import { MIN_SECRET_CHARS, secretsIn } from './secrets.js';
import { makeCerts, freePort, onFreshPorts, repoRoot, tmpDir } from './servers/index.js';
import type { Slapd, TestCerts, TmpDir } from './servers/index.js';

export interface SlotSpec {
  readonly host?: string;
  readonly imapPort?: number;
  readonly imapsPort?: number;
  readonly pop3Port?: number;
  readonly pop3sPort?: number;
  readonly sievePort?: number;
}

export interface StoreSpec {
  readonly currentMaster: string;
  readonly preferredMaster?: string;
  readonly slots: Record<string, SlotSpec>;
  readonly backend?: Record<string, unknown>;
}

export interface FrontOptions {
  /** The directory: a slapd, or another server with the same tree (a 389 DS of ds389.ts). */
  readonly slapd: Pick<Slapd, 'url' | 'bindDn' | 'bindPassword' | 'usersDn' | 'rootDn' | 'rootPassword' | 'userPasswords'>;
  readonly stores: Record<string, StoreSpec>;
  readonly backend?: Record<string, unknown>;
  readonly session?: Record<string, unknown>;
  readonly directory?: Record<string, unknown>;
  /** Adds ManageSieve listeners (sievePort with STARTTLS, sieveTrustedPort with plaintext allowed). */
  readonly sieve?: boolean;
  readonly failover?: Record<string, unknown>;
  readonly admin?: Record<string, unknown>;
  /** Read the store map from LDAP store entries under this base (polled every 100 ms) instead of the file. */
  readonly storeMapLdapBase?: string;
  /** Auth-failure throttling (off unless given: most tests log in wrongly on purpose, from one address). */
  readonly throttle?: Record<string, unknown>;
  readonly connectionLimits?: Record<string, unknown>;
  readonly trustedNetworks?: readonly string[];
  readonly health?: Record<string, unknown>;
  readonly usernames?: Record<string, unknown>;
  /** OAuth bearer-token logins (the oauth2 section, as written). */
  readonly oauth2?: Record<string, unknown>;
  /** Adds an IMAP listener with STARTTLS that also takes plaintext logins (imapStarttlsTrustedPort). */
  readonly starttlsPlaintext?: boolean;
}

export interface Front {
  readonly mailfront: Mailfront;
  /** Plain IMAP with STARTTLS; plaintext credentials refused without TLS. */
  readonly imapPort: number;
  /** Implicit TLS IMAP. */
  readonly imapsPort: number;
  /** Plain IMAP where plaintext credentials are allowed (a trusted webmail network). */
  readonly imapTrustedPort: number;
  readonly pop3Port: number;
  readonly pop3sPort: number;
  readonly pop3TrustedPort: number;
  /** IMAP with STARTTLS where plaintext credentials are allowed too (when `starttlsPlaintext`). */
  readonly imapStarttlsTrustedPort?: number;
  /** ManageSieve with STARTTLS; plaintext credentials refused without TLS (when `sieve`). */
  readonly sievePort?: number;
  /** ManageSieve where plaintext credentials are allowed (when `sieve`). */
  readonly sieveTrustedPort?: number;
  readonly certs: TestCerts;
  /** The test CA as PEM, for clients. */
  readonly caPem: string;
  readonly storesFile: string;
  readonly configFile: string;
  /** Every log line mailfront wrote, parsed. */
  readonly logs: Array<Record<string, unknown>>;
  /** Every log line as written (for secret scans). */
  readonly rawLogs: string[];
  /** Rewrites the store map file (the mailfront process is not told). */
  writeStores(stores: Record<string, StoreSpec>): Promise<void>;
  stop(): Promise<void>;
}

function storesDocument(stores: Record<string, StoreSpec>): unknown {
  return {
    stores: Object.fromEntries(
      Object.entries(stores).map(([name, s]) => [
        name,
        {
          current_master: s.currentMaster,
          ...(s.preferredMaster ? { preferred_master: s.preferredMaster } : {}),
          ...(s.backend ? { backend: s.backend } : {}),
          slots: Object.fromEntries(
            Object.entries(s.slots).map(([slot, p]) => [
              slot,
              {
                host: p.host ?? '127.0.0.1',
                ...(p.imapPort ? { imap_port: p.imapPort } : {}),
                ...(p.imapsPort ? { imaps_port: p.imapsPort } : {}),
                ...(p.pop3Port ? { pop3_port: p.pop3Port } : {}),
                ...(p.pop3sPort ? { pop3s_port: p.pop3sPort } : {}),
                ...(p.sievePort ? { sieve_port: p.sievePort } : {}),
              },
            ]),
          ),
        },
      ]),
    ),
  };
}

/** session.auth_failure_delay_ms of every test instance unless a test sets its own. */
export const AUTH_FAILURE_DELAY_MS = 300;

/**
 * Logs in three times with a wrong password and three times as an unknown user, alternating, and
 * asserts the same `answer` each time, after at least the failure delay, with medians within
 * 100 ms of each other (the medians, so that one login slowed down by a busy machine does not
 * decide): nothing tells an attacker whether the user exists.
 */
export async function assertSameFailure(
  login: (user: string, password: string) => Promise<{ line: string; ms: number }>,
  wrongPassword: readonly [string, string],
  unknownUser: readonly [string, string],
  answer: string,
): Promise<void> {
  const wrong: Array<{ line: string; ms: number }> = [];
  const unknown: Array<{ line: string; ms: number }> = [];
  for (let i = 0; i < 3; i++) {
    wrong.push(await login(...wrongPassword));
    unknown.push(await login(...unknownUser));
  }
  for (const result of [...wrong, ...unknown]) assert.equal(result.line, answer);
  const median = (xs: Array<{ ms: number }>): number => xs.map((x) => x.ms).sort((a, b) => a - b)[1] as number;
  const times = `wrong ${wrong.map((x) => x.ms).join('/')} ms, unknown ${unknown.map((x) => x.ms).join('/')} ms`;
  assert.ok(median(wrong) >= AUTH_FAILURE_DELAY_MS - 20 && median(unknown) >= AUTH_FAILURE_DELAY_MS - 20, times);
  assert.ok(Math.abs(median(wrong) - median(unknown)) < 100, times);
}

/** The admin API token of every test instance. */
export const ADMIN_TOKEN = 'test-admin-token-0123456789';

/**
 * The suite-wide secret scan (test/integration/zz-secrets.test.ts): when MAILFRONT_TEST_LOG_DIR is
 * set (scripts/test.sh sets it), every mailfront log line goes to a file there as well, and every
 * secret a test file registers goes to `<process>-secrets.json` next to it. `<process>` is the pid
 * and a random part: a pid the system reuses within a run must not overwrite another test
 * process's secrets, nor append to its logs.
 */
const suiteLogDir = process.env['MAILFRONT_TEST_LOG_DIR'];
const suiteProcess = `${process.pid}.${randomBytes(6).toString('hex')}`;
const registeredSecrets = new Set<string>();
let suiteLogCount = 0;

/**
 * Registers passwords, proxy secrets and SASL blobs that must never appear in a log line of the
 * suite. A secret too short for the scan to look for is refused here, where the test that sent
 * it is named, rather than by the scan at the end of the suite.
 */
export function registerSecrets(secrets: readonly string[]): void {
  const short = secrets.filter((s) => s.length < MIN_SECRET_CHARS);
  if (short.length > 0) throw new Error(`secrets shorter than ${MIN_SECRET_CHARS} characters cannot be scanned for: ${JSON.stringify(short)}; make them longer`);
  const before = registeredSecrets.size;
  for (const secret of secrets) registeredSecrets.add(secret);
  if (suiteLogDir === undefined || registeredSecrets.size === before) return;
  mkdirSync(suiteLogDir, { recursive: true });
  writeFileSync(join(suiteLogDir, `${suiteProcess}-secrets.json`), `${JSON.stringify([...registeredSecrets].sort(), null, 1)}\n`);
}

/**
 * Registers the passwords a test sends, right and wrong alike: a wrong password is as secret as
 * a right one (it is often a typo of it). An empty one has nothing to find and is skipped.
 */
export function registerPasswords(...passwords: string[]): void {
  registerSecrets(passwords.filter((p) => p !== ''));
}

/** Fails, naming the line, when one of `lines` holds any secret this process registered, in any form the scan knows. */
export function assertNoRegisteredSecret(lines: readonly string[], what = 'the log'): void {
  assert.ok(registeredSecrets.size > 0, 'no secrets registered: the scan would pass on nothing');
  const found = secretsIn(lines, registeredSecrets);
  assert.deepEqual(found, [], `secrets in ${what}:\n${found.slice(0, 20).join('\n')}`);
}

/**
 * A writer of mailfront log lines into the suite-wide scan (for tests that log through mailfront
 * code without startFront, or read the log of a mailfront process); a no-op when the scan is off.
 */
export function suiteLogWriter(): (line: string) => void {
  return openSuiteLog();
}

/**
 * A log destination for a Mailfront started by a test itself: each line goes to the suite-wide
 * scan and, parsed, into `logs`, in the order written.
 */
export function parsedSuiteLog(logs: Array<Record<string, unknown>>): { write(line: string): void } {
  const writeSuiteLog = suiteLogWriter();
  return {
    write(line: string) {
      writeSuiteLog(line);
      logs.push(JSON.parse(line) as Record<string, unknown>);
    },
  };
}

/**
 * A logger at `level` for tests of one component: its lines are kept in `lines`, in the order
 * written, and go to the suite-wide secrets scan too.
 */
export function capturedLogger(level: Parameters<typeof createLogger>[0]): { readonly log: Logger; readonly lines: string[] } {
  const lines: string[] = [];
  const writeSuiteLog = suiteLogWriter();
  const log = createLogger(level, {
    write(line: string) {
      lines.push(line);
      writeSuiteLog(line);
    },
  });
  return { log, lines };
}

/** Opens this instance's suite log file and returns its line writer (a no-op when the scan is off). */
function openSuiteLog(): (line: string) => void {
  if (suiteLogDir === undefined) return () => undefined;
  mkdirSync(suiteLogDir, { recursive: true });
  // Synchronous appends: a line is on disk even if the test process dies right after writing it.
  // The file stays open until the process exits, so that lines logged after stop() count too.
  // 'wx': a file of this name already there is another process's, and fails here, loudly.
  const fd = openSync(join(suiteLogDir, `${suiteProcess}-${++suiteLogCount}.log`), 'wx');
  return (line) => writeSync(fd, line.endsWith('\n') ? line : `${line}\n`);
}

/**
 * Starts mailfront with listeners for IMAP, IMAPS, POP3, POP3S and trusted plaintext variants, on
 * fresh ports again when one was taken before mailfront bound it (onFreshPorts(), as the daemons).
 */
export function startFront(options: FrontOptions): Promise<Front> {
  return onFreshPorts('mailfront', async () => {
    const dir = tmpDir('front');
    try {
      return await startFrontIn(dir, options);
    } catch (error) {
      await dir.remove();
      throw error;
    }
  });
}

async function startFrontIn(dir: TmpDir, options: FrontOptions): Promise<Front> {
  const certs = await makeCerts(dir.path);
  const [imapPort, imapsPort, imapTrustedPort, pop3Port, pop3sPort, pop3TrustedPort] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
  const certificate = { cert: certs.certFile, key: certs.keyFile };
  const [sievePort, sieveTrustedPort] = options.sieve ? await Promise.all([freePort(), freePort()]) : [];
  const sieveListeners =
    sievePort !== undefined && sieveTrustedPort !== undefined
      ? [
          { name: 'sieve', protocol: 'managesieve', host: '127.0.0.1', port: sievePort, tls: 'starttls', certificate },
          { name: 'sieve-webmail', protocol: 'managesieve', host: '127.0.0.1', port: sieveTrustedPort, tls: 'none', plaintext_without_tls: true },
        ]
      : [];
  const imapStarttlsTrustedPort = options.starttlsPlaintext ? await freePort() : undefined;
  const starttlsPlaintextListeners =
    imapStarttlsTrustedPort !== undefined ? [{ name: 'imap-starttls-webmail', protocol: 'imap', host: '127.0.0.1', port: imapStarttlsTrustedPort, tls: 'starttls', certificate, plaintext_without_tls: true }] : [];
  const storesFile = join(dir.path, 'stores.yaml');
  const configFile = join(dir.path, 'mailfront.yaml');
  const writeStores = (stores: Record<string, StoreSpec>): Promise<void> => writeFile(storesFile, stringify(storesDocument(stores)));
  await writeStores(options.stores);
  await writeFile(join(dir.path, 'ldap.secret'), `${options.slapd.bindPassword}\n`);
  await writeFile(
    configFile,
    stringify({
      log: { level: 'debug' },
      listeners: [
        { name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imapPort, tls: 'starttls', certificate },
        { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port: imapsPort, tls: 'implicit', certificate },
        { name: 'imap-webmail', protocol: 'imap', host: '127.0.0.1', port: imapTrustedPort, tls: 'none', plaintext_without_tls: true },
        { name: 'pop3', protocol: 'pop3', host: '127.0.0.1', port: pop3Port, tls: 'starttls', certificate },
        { name: 'pop3s', protocol: 'pop3', host: '127.0.0.1', port: pop3sPort, tls: 'implicit', certificate },
        { name: 'pop3-webmail', protocol: 'pop3', host: '127.0.0.1', port: pop3TrustedPort, tls: 'none', plaintext_without_tls: true },
        ...sieveListeners,
        ...starttlsPlaintextListeners,
      ],
      directory: {
        urls: [options.slapd.url],
        bind_dn: options.slapd.bindDn,
        bind_password_file: 'ldap.secret',
        base_dn: options.slapd.usersDn,
        user_filter: '(&(objectClass=inetOrgPerson)(uid={user}))',
        store_attribute: 'mailStore',
        connect_timeout_ms: 1000,
        operation_timeout_ms: 2000,
        // Off by default: most tests change the directory under a running mailfront.
        entry_cache_ttl_ms: 0,
        auth_cache_ttl_ms: 0,
        ...options.directory,
      },
      store_map: options.storeMapLdapBase
        ? { ldap: { base_dn: options.storeMapLdapBase, bind_dn: options.slapd.rootDn, bind_password: options.slapd.rootPassword, poll_interval_ms: 100 } }
        : { file: 'stores.yaml' },
      backend: { login_mode: 'replay', connect_timeout_ms: 1000, login_timeout_ms: 5000, ...options.backend },
      session: { auth_failure_delay_ms: AUTH_FAILURE_DELAY_MS, preauth_timeout_ms: 5000, ...options.session },
      failover: { hold_ms: 1000, drain_spread_ms: 200, ...options.failover },
      throttle: options.throttle ?? { enabled: false },
      connection_limits: { max_connections: 20000, max_connections_per_address: 20000, max_sessions_per_user: 1000, ...options.connectionLimits },
      ...(options.trustedNetworks ? { trusted_networks: options.trustedNetworks } : {}),
      health: { interval_ms: 0, ...options.health },
      ...(options.usernames ? { usernames: options.usernames } : {}),
      ...(options.oauth2 ? { oauth2: options.oauth2 } : {}),
      admin: { token: ADMIN_TOKEN, ...options.admin },
      http: { host: '127.0.0.1', port: 0 },
      // No balancer to wait for: every test's stop closes the listeners at once (stop-unready.test.ts tests the delay).
      shutdown: { unready_delay_ms: 0 },
    }),
  );
  const logs: Array<Record<string, unknown>> = [];
  const rawLogs: string[] = [];
  const writeSuiteLog = openSuiteLog();
  // Every secret this fixture hands to mailfront is one mailfront must never log.
  const proxyPasswords = [options.backend, ...Object.values(options.stores).map((store) => store.backend)].map((b) => b?.['proxy_password']);
  registerSecrets([
    options.slapd.bindPassword,
    ADMIN_TOKEN,
    ...(options.storeMapLdapBase ? [options.slapd.rootPassword] : []),
    ...proxyPasswords.filter((p): p is string => typeof p === 'string'),
  ]);
  // Every directory user's password is one a test may send through this instance.
  registerPasswords(...options.slapd.userPasswords());
  const mailfront = await Mailfront.start(loadConfig(configFile), {
    logDestination: {
      write(line: string) {
        writeSuiteLog(line);
        rawLogs.push(line);
        logs.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  });
  return {
    mailfront,
    imapPort,
    imapsPort,
    imapTrustedPort,
    pop3Port,
    pop3sPort,
    pop3TrustedPort,
    ...(imapStarttlsTrustedPort !== undefined ? { imapStarttlsTrustedPort } : {}),
    ...(sievePort !== undefined ? { sievePort } : {}),
    ...(sieveTrustedPort !== undefined ? { sieveTrustedPort } : {}),
    certs,
    caPem: await readFile(certs.caFile, 'utf8'),
    storesFile,
    configFile,
    logs,
    rawLogs,
    writeStores,
    async stop() {
      // Users added or given new passwords while this instance ran.
      registerPasswords(...options.slapd.userPasswords());
      await mailfront.stop(500);
      await dir.remove();
    },
  };
}

/** Waits until mailfront has let go of every connection the test closed (its limiter counts none); fails after `timeoutMs`. */
export async function connectionsReleased(front: Front, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (front.mailfront.limiter.connections > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(front.mailfront.limiter.connections, 0, 'connections the test closed are still counted');
}

/** Waits until `predicate` holds for a log line (from index `since` on), or fails after `timeoutMs`. */
export async function waitForLog(front: Front, predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 5_000, since = 0): Promise<Record<string, unknown>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = front.logs.slice(since).find(predicate);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no matching log line within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The id of the session whose session.started line names `clientPort` (the client's local port), looked for from index `since` on. */
export async function sessionIdOf(front: Front, clientPort: number, since = 0): Promise<string> {
  const started = await waitForLog(front, (l) => l['event'] === 'session.started' && l['clientPort'] === clientPort, 5_000, since);
  return String(started['session']);
}

/** The log lines of one session so far (every line a session logs carries its id). */
export function linesOfSession(front: Front, session: string): Array<Record<string, unknown>> {
  return front.logs.filter((l) => l['session'] === session);
}

/**
 * The events in a session's log that only a login the session itself attempted writes: every
 * login that reaches the session (and so the directory) logs session.authenticated or
 * session.login_failed before its answer is sent. Empty for credentials the protocol layer
 * refused on its own.
 */
export function loginEventsOf(front: Front, session: string): string[] {
  const events = new Set(['session.authenticated', 'session.login_failed', 'session.backend_connected', 'session.backend_retry', 'session.spliced']);
  return linesOfSession(front, session).map((l) => String(l['event'])).filter((e) => events.has(e));
}

/** A test message of about `bytes` bytes with a recognisable body. */
export function makeMessage(subject: string, bytes = 200): Buffer {
  const header = `From: sender@example.org\r\nTo: user@example.org\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@test>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n`;
  const lines: string[] = [];
  let size = header.length;
  for (let i = 0; size < bytes; i++) {
    const line = `${subject} line ${i} ${'x'.repeat(60)}\r\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(header + lines.join(''));
}

/**
 * The config sections of a mailfront in-process that has a stand-in directory (standInDirectory())
 * and a store map file `stores.yaml` beside its config: a directory section it never dials
 * (registerPasswords('reader-pw-unused') for its password), no throttle, no health checks, the
 * HTTP port on any free port, and a stop that closes the listeners at once (no balancer to wait
 * for; stop-unready.test.ts tests the delay). A test adds its listeners and what it checks.
 */
export function standInConfigSections(): Record<string, unknown> {
  return {
    directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=reader', bind_password: 'reader-pw-unused', base_dn: 'dc=example' },
    store_map: { file: 'stores.yaml' },
    throttle: { enabled: false },
    health: { interval_ms: 0 },
    http: { host: '127.0.0.1', port: 0 },
    shutdown: { unready_delay_ms: 0 },
  };
}

/**
 * A directory for a mailfront in-process (Mailfront's directory option) that has no server
 * behind it: every login is answered by `authenticate` (by default: the directory is down), the
 * rest by `overrides` or as a reachable directory that knows no one.
 */
export function standInDirectory(overrides: Partial<Directory> = {}): Directory {
  return {
    authenticate: async () => {
      throw new MailfrontError('LDAP_UNREACHABLE', 'auth-tempfail', 'no directory server answered: ldap://127.0.0.1:1: connect ECONNREFUSED');
    },
    lookup: async () => null,
    reachable: async () => true,
    forget: () => 0,
    cacheEntries: () => ({}),
    close: async () => undefined,
    ...overrides,
  };
}

/** Runs `mailfront ARGS` as the command it is (the built CLI), 60 s at most: its exit code and output. */
export function runCli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}
