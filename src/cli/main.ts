#!/usr/bin/env node
/**
 * The `mailfront` command line. `serve` and `check-config` work on a config file; the operator
 * commands (stores, whereis, failover, maintenance, sessions, kick, unthrottle, reload) talk to a
 * running instance's admin API, whose address and token they take from the same config file (or
 * --url/--token); with --all (or several --url), every instance of admin.instances at once.
 * Parses arguments, prints, and sets the exit code; nothing else.
 */
// First: SIGHUP is counted, not fatal, from here on (see hangup.ts).
import { hangupsReceived, releaseHangups, releaseStops, takeStops } from './hangup.js';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { caCertificatesProblem } from '../ca-file.js';
// Heavy modules (LDAP, metrics, the server) are imported by the commands that use them, so
// that --help, --version and the remote commands start quickly.
const loadConfig = async (file: string) => (await import('../config/load.js')).loadConfig(file);

const VERSION = (JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../../package.json'), 'utf8')) as { version: string }).version;
const DEFAULT_CONFIG = '/etc/mailfront/mailfront.yaml';

const COMMON = `Options:
  -c, --config FILE   config file (default ${DEFAULT_CONFIG})
  -h, --help          this help
  -V, --version       print the version`;
const REMOTE = `${COMMON}
      --url URL       admin API base URL (default: http.host/http.port of the config)
      --token TOKEN   admin API token (default: $MAILFRONT_ADMIN_TOKEN, else admin.token of the
                      config), without whitespace at its ends, as HTTP carries it; one with a
                      control inside or a character beyond ASCII is refused (exit 1)
      --json          print the API's JSON instead of a table`;
/** The options of a command that can be sent to a fleet. */
const FLEET = `${REMOTE}
      --all           send it to every instance admin.instances lists, at once: each answer under
                      a line naming the instance's URL (--json: an object keyed by URL); exit 1
                      when any instance failed or could not be reached (3 when the only trouble
                      is an answer late), which stderr names. --url given more than once: to
                      those instances, the same way`;

const HELP: Record<string, string> = {
  '': `Usage: mailfront <command> [options]

Commands:
  serve                 run the frontend (listeners, LDAP, store map, admin API)
  check-config [FILE]   validate a config file and its store map without starting
  stores [STORE]        list stores (or one): masters, backwards stores, slot health, sessions
  whereis USER          a user's login name, store, current master, address, the directory's
                        lock of the account, live sessions and throttle counts
  failover STORE SLOT   make SLOT the current master of STORE (written to the store map source)
  maintenance STORE on [--reason TEXT] | off
                        put STORE in maintenance or take it out (written to the store map source)
  sessions              list spliced sessions (--user, --store, --slot filter)
  kick USER             close USER's sessions, forget USER's cached logins (or --slot SLOT,
                        or --session ID); --all: on every instance of admin.instances
  unthrottle USER|ADDRESS
                        clear the throttle's failures and refusal of a user or client address
  reload                re-read the config and the store map now (as SIGHUP does)

'mailfront <command> --help' describes one command.
${COMMON}
`,
  serve: `Usage: mailfront serve [-c FILE]

Runs mailfront in the foreground. Logs are JSON lines on stdout.
Signals: SIGHUP re-reads the config and the store map without dropping a spliced session
(listeners whose address changed are bound anew); SIGTERM/SIGINT turn /readyz to 503 and, with
an HTTP listener, go on accepting for shutdown.unready_delay_ms (a balancer takes the instance
out meanwhile), then stop accepting, say BYE to sessions before login and drain spliced sessions
(up to shutdown.drain_timeout_ms) before exiting; a second SIGTERM/SIGINT ends the delay and the
drain at once (BYE to spliced sessions), then exits as usual.
${COMMON}
`,
  'check-config': `Usage: mailfront check-config [FILE | -c FILE]

Validates FILE, loads each listener's certificate and key as serve would (binding nothing), reads
the store map FILE names (a file, or the LDAP store entries), and reads every CA file FILE and the
store map name. Tries the directory's settings on its servers (the service bind and a base search
of base_dn): a server refusing them is a problem; none answering, a note. Prints every problem
with its path and what was expected and exits 1, or prints a summary and exits 0. FILE's own problems come alone (the rest is read once FILE is valid); those
of its files and store map come together.
${COMMON}
`,
  stores: `Usage: mailfront stores [STORE] [-c FILE]

One line per slot: store, slot, host, master or replica, whether it is the store's preferred
master, health, sessions. A store whose current master is not its preferred master is flagged
BACKWARDS; one in maintenance MAINTENANCE (its slots' health "paused"), and its reason is
printed below the table. With STORE, that store only (a store the map does not have: exit 1).
${FLEET}
`,
  whereis: `Usage: mailfront whereis USER [-c FILE]

Looks USER (a login name or an alias the directory's user filter matches) up in the directory
and prints the entry's login name (the name a login goes on with: the logs' "user"), the store,
its current master and address, the live sessions of the entry on this instance under any of
its names, and the throttle's counts of USER and of the login name (the throttle counts a user
by the name typed): failures counted, the limit, and how long logins are refused for, read from
Redis when the throttle shares it, else this instance's counters (the output says which). The
entry is read from the directory itself (a hold as it is now); "cached here" is what this
instance's caches hold of the user and for how long, and the problem line says when a login here
would be let in (or routed, or held) from them otherwise than the directory says: kick the user
on this instance. With --all, a summary follows the instances' answers: on how many a login of
USER would be refused as held or let in now, each instance whose caches decide otherwise (and
the kick that ends it), where their store or current master differ, and where USER has sessions.
${FLEET}
`,
  failover: `Usage: mailfront failover STORE SLOT [-c FILE]

Makes SLOT the current master of STORE in the store map's source of truth (the YAML file or
the LDAP store entry). New logins go to SLOT at once; sessions on the old master are closed
over the configured spread window.
${REMOTE}
`,
  maintenance: `Usage: mailfront maintenance STORE on [--reason TEXT] | off [-c FILE]

Puts STORE in maintenance in the store map's source of truth (the YAML file's maintenance key,
or the LDAP store entry's mailfrontMaintenance), or takes it out. While it is on, a login of
STORE's users is refused once the password is checked (IMAP NO [UNAVAILABLE], POP3 -ERR
[SYS/TEMP], ManageSieve NO (TRYLATER)) with TEXT, or a default text that asks to wait and try
again later; no slot of STORE is dialled or probed. Turning it on closes STORE's sessions over
the failover spread window, each told TEXT; turning it off closes nothing. TEXT: printable, at
most 200 bytes, not beginning with "[" (say "wait" in it: fetchmail reads a POP3 refusal
without it as a wrong password).
${REMOTE}
      --reason TEXT   what the store's clients are told (with on only)
`,
  sessions: `Usage: mailfront sessions [--user USER] [--store STORE] [--slot SLOT] [-c FILE]

Lists spliced sessions. --user USER is looked up in the directory, as whereis does: the sessions
of USER's entry under any of its names (an alias USER included), and a staff member's master
logins in other users' mailboxes (directory.master_user_filter), which a MASTER column shows.
When the directory does not answer, those under the name USER only, and a warning on stderr says so.
${FLEET}
`,
  kick: `Usage: mailfront kick USER | --slot SLOT | --session ID [-c FILE]

Closes sessions of a user, of a slot, or one session, on this instance. For a user, also drops
the user's cached logins and directory entry: the next login is checked against the directory
(use it after changing or locking a password, on every instance of a fleet: --all).
${FLEET}
`,
  unthrottle: `Usage: mailfront unthrottle USER | ADDRESS [-c FILE]

Clears the throttle's failures and refusal of a user (the name the client typed, as whereis
shows it) or of a client address (an IPv4 or IPv6 address: an IPv6 one clears its network of
throttle.ipv6_prefix_bits, a /56 by default, a nat64 one the IPv4 address it embeds, as they are
counted). With throttle.redis, the counts are
deleted in Redis: released on every instance sharing it. Without it, on this instance only
(unthrottle on each: --all). When Redis does not answer, on this instance only, and Redis's count is
deleted once Redis takes writes again; the output says which. A subject with nothing counted is
said so.
${FLEET}
`,
  reload: `Usage: mailfront reload [-c FILE] [--accept-older-store-map]

Re-reads the config file and the store map now, as SIGHUP does, without dropping a session. A
broken config or store map is rejected and the one in force stays; the exit status is 1 then.
Without an answer within 30 s it gives up with exit status 3: the reload may still be running
and be applied (the log says: config.reloaded, or config.rejected).

An LDAP store map read from a server behind the map in force (a replica that has not got the
last failovers) is refused, as the polls refuse it: putting it in force would undo those
failovers. After the directory was restored from a backup, --accept-older-store-map puts what
the server says in force all the same.
${FLEET}
`,
};

interface Remote {
  readonly url: string;
  readonly token: string;
}

/**
 * The instances an operator command goes to, and whether it goes to a fleet (--all, or --url given
 * more than once: each answer is printed under its URL). One token for all: a fleet is deployed
 * with one config.
 */
async function remotesFrom(values: RemoteValues): Promise<{ remotes: Remote[]; fleet: boolean }> {
  let urls = values.url !== undefined && values.url.length > 0 ? values.url : undefined;
  const given = values.token ?? process.env['MAILFRONT_ADMIN_TOKEN'];
  let token = given === undefined ? undefined : await givenToken(given, values.token !== undefined ? '--token' : 'MAILFRONT_ADMIN_TOKEN');
  if (urls === undefined || token === undefined) {
    // Only the http and admin sections, and no secret file when the token is given: the whole
    // config would need every secret file serve reads (an LDAP bind password, say).
    const { loadAdminAccess } = await import('../config/load.js');
    const config = loadAdminAccess(values.config ?? DEFAULT_CONFIG, token === undefined, values.all === true);
    if (urls === undefined && values.all === true) {
      if (config.instances === undefined) throw new Error(`${config.file} has no admin.instances: --all sends the command to the admin API of each instance it lists (or give --url once per instance)`);
      urls = [...config.instances];
    } else if (urls === undefined) {
      if (config.http === undefined) throw new Error(`${config.file} has no http section: the admin API is not listening (or give --url)`);
      const host = config.http.host === '0.0.0.0' ? '127.0.0.1' : config.http.host === '::' ? '::1' : config.http.host;
      urls = [`http://${host.includes(':') ? `[${host}]` : host}:${config.http.port}`];
    }
    token ??= config.token;
  }
  if (token === undefined) throw new Error('no admin token: set admin.token in the config, MAILFRONT_ADMIN_TOKEN, or --token');
  const known = token;
  return { remotes: urls.map((url) => ({ url: url.replace(/\/$/, ''), token: known })), fleet: values.all === true || urls.length > 1 };
}

/**
 * The token given by --token or MAILFRONT_ADMIN_TOKEN (`source`) as the request carries it, or
 * an error before anything is sent when no admin API could match it. Whitespace at its ends
 * (spaces, tabs, CR, LF: `"$(cat file)"` of a token file written with CRLF keeps the CR) is taken
 * off, as fetch (which the CLI used before node's HTTP client) took it off a header's value and
 * the admin API's HTTP parser would: such tokens always worked, and the server strips a
 * token_file's line break too. What is refused is what could not match: an empty token, a
 * control between its characters (node's client throws on CR and LF), a character beyond ASCII
 * (sent as each client encodes it, if at all). Its length is the server's to judge
 * (it refuses a short admin.token at load). Exit 1, as "no admin token" and a refused
 * admin.token; the message never shows the token.
 */
async function givenToken(token: string, source: '--token' | 'MAILFRONT_ADMIN_TOKEN'): Promise<string> {
  const { BEARER_TOKEN_EXPECTED, bearerTokenCharsProblem } = await import('../server/http.js');
  const sent = token.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, '');
  const problem = sent === '' ? (token === '' ? 'an empty string' : 'whitespace alone') : bearerTokenCharsProblem(sent);
  // The length and the position named are the trimmed token's: said so when it was trimmed.
  const trimmed = sent !== '' && sent !== token ? ', once the whitespace at its ends is taken off,' : '';
  if (problem !== null) throw new Error(`the admin token given by ${source} was not sent: found${trimmed} ${problem}; expected ${BEARER_TOKEN_EXPECTED}`);
  return sent;
}

/** How long an operator command waits for the admin API's answer. */
const ADMIN_API_TIMEOUT_MS = 30_000;

/**
 * The exit status of an operator command whose request got no answer in time (1: it failed; 2:
 * a usage error). The server has the request, and what it does may still be going on: a reload
 * that takes longer than the wait (an LDAP store map slow to answer) is applied after it.
 */
const EXIT_NO_ANSWER = 3;

/** How long an operator command waits for the admin API's connection (undici's, which the CLI used before). */
const ADMIN_API_CONNECT_TIMEOUT_MS = 10_000;

/** An answer of the admin API: its status line and its body. */
interface HttpAnswer {
  readonly status: number;
  readonly statusText: string;
  readonly body: string;
}

/**
 * Sends one request with node's own HTTP client, not fetch: fetch refuses the ports browsers
 * block (WHATWG fetch's "bad ports": 1, 6000, 6665 to 6669, 10080…) with "bad port", and an
 * http.port there is served, scraped and checked by check-config like any other. Rejects with a
 * code of ADMIN_API_NO_ANSWER once connected and unanswered after `ms`, and with the connection's
 * error (ECONNREFUSED…, or ETIMEDOUT after ADMIN_API_CONNECT_TIMEOUT_MS) otherwise.
 */
async function httpRequest(target: string, method: 'GET' | 'POST', headers: Record<string, string>, body: string | undefined, ms: number): Promise<HttpAnswer> {
  const url = new URL(target);
  const { request } = url.protocol === 'https:' ? await import('node:https') : await import('node:http');
  return new Promise<HttpAnswer>((resolve, reject) => {
    const sent = body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) };
    const req = request(url, { method, headers: sent, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, statusText: res.statusMessage ?? '', body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    const connecting = setTimeout(() => req.destroy(Object.assign(new Error(`no connection within ${ADMIN_API_CONNECT_TIMEOUT_MS / 1000} s`), { code: 'ETIMEDOUT' })), ADMIN_API_CONNECT_TIMEOUT_MS);
    // Unref'd: the request's socket keeps the process alive until then, and nothing after it.
    AbortSignal.timeout(ms).addEventListener('abort', () => req.destroy(Object.assign(new Error('no answer in time'), { code: 'ADMIN_API_NO_ANSWER' })), { once: true });
    req.on('socket', (socket) => socket.once('connect', () => clearTimeout(connecting)));
    req.on('close', () => clearTimeout(connecting));
    req.on('error', reject);
    req.end(body);
  });
}

/** `underWay`: what may still be going on when no answer comes in time, and where to see it. */
async function call(remote: Remote, method: 'GET' | 'POST', path: string, body?: unknown, underWay?: string): Promise<Record<string, unknown>> {
  let response: HttpAnswer;
  try {
    response = await httpRequest(`${remote.url}${path}`, method, { authorization: `Bearer ${remote.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, body !== undefined ? JSON.stringify(body) : undefined, ADMIN_API_TIMEOUT_MS);
  } catch (error) {
    // Not a server out of reach: connected, the request sent, and the answer late.
    if ((error as NodeJS.ErrnoException).code === 'ADMIN_API_NO_ANSWER') {
      throw Object.assign(new Error(`no answer from the admin API at ${remote.url} within ${ADMIN_API_TIMEOUT_MS / 1000} s${underWay !== undefined ? `; ${underWay}` : ''}`), { exitCode: EXIT_NO_ANSWER });
    }
    throw new Error(`cannot reach the admin API at ${remote.url}: ${error instanceof Error ? error.message : String(error)}`);
  }
  let json: Record<string, unknown> = {};
  try {
    const parsed: unknown = JSON.parse(response.body);
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) json = parsed as Record<string, unknown>;
  } catch {
    // Not JSON (a proxy's error page): the status line says what happened.
  }
  if (response.status < 200 || response.status > 299) throw new Error(`${response.status}: ${String(json['error'] ?? response.statusText)}`);
  return json;
}

/** An answer in words: the text printed, a warning for stderr, and the exit status it makes (with --json too). */
interface Rendered {
  readonly text: string;
  readonly warning?: string;
  readonly code: number;
}

/** One instance's answer to a command sent to a fleet: its JSON, or why there is none. */
interface FleetAnswer {
  readonly url: string;
  readonly json?: Record<string, unknown>;
  readonly error?: Error;
}

/** An operator command's admin API request, and how its answer is printed. */
interface AdminRequest {
  readonly method: 'GET' | 'POST';
  readonly path: string;
  readonly body?: unknown;
  /** What may still be going on when no answer comes in time (see call()). */
  readonly underWay?: string;
  render(json: Record<string, unknown>): Rendered;
  /** With a fleet: lines after the instances' answers (whereis: where they disagree). */
  summary?(answers: readonly FleetAnswer[]): string;
}

interface RemoteValues {
  config?: string | undefined;
  url?: string[] | undefined;
  token?: string | undefined;
  all?: boolean | undefined;
  json?: boolean | undefined;
}

const jsonText = (value: unknown): string => `${JSON.stringify(value, null, 2)}\n`;

/** Of two exit statuses of a fleet's instances, the one the command exits with: a failure (1) before no answer in time (3). */
const worseExit = (a: number, b: number): number => (a === 1 || b === 1 ? 1 : Math.max(a, b));

/**
 * Sends `request` to the instance, or to each instance of the fleet at once, and prints the
 * answers; resolves to the exit status. With a fleet, each answer comes under a line naming its
 * URL, in the order the instances are listed, one that failed or did not answer with its error:
 * an instance down does not hide the others' answers, and the command exits non-zero naming it.
 */
async function runAdmin(command: string, request: AdminRequest, values: RemoteValues): Promise<number> {
  const { remotes, fleet } = await remotesFrom(values);
  if (!fleet) {
    const json = await call(remotes[0]!, request.method, request.path, request.body, request.underWay);
    const rendered = request.render(json);
    if (rendered.warning !== undefined) process.stderr.write(`mailfront ${command}: ${rendered.warning}\n`);
    process.stdout.write(values.json ? jsonText(json) : rendered.text);
    return rendered.code;
  }
  // In parallel, each with call()'s own wait: an instance out of reach or slow holds up no other.
  const answers = await Promise.all(
    remotes.map(async (remote): Promise<FleetAnswer> => {
      try {
        return { url: remote.url, json: await call(remote, request.method, request.path, request.body, request.underWay) };
      } catch (error) {
        return { url: remote.url, error: error instanceof Error ? error : new Error(String(error)) };
      }
    }),
  );
  let code = 0;
  const failed: string[] = [];
  const sections: string[] = [];
  const byUrl: Record<string, unknown> = {};
  for (const answer of answers) {
    if (answer.json !== undefined) {
      const rendered = request.render(answer.json);
      if (rendered.warning !== undefined) process.stderr.write(`mailfront ${command}: ${answer.url}: ${rendered.warning}\n`);
      sections.push(`== ${answer.url} ==\n${rendered.text}`);
      byUrl[answer.url] = answer.json;
      if (rendered.code !== 0) failed.push(answer.url);
      code = worseExit(code, rendered.code);
    } else {
      const message = answer.error?.message ?? 'no answer';
      sections.push(`== ${answer.url} ==\nfailed: ${message}\n`);
      byUrl[answer.url] = { error: message };
      failed.push(answer.url);
      const exitCode = (answer.error as { exitCode?: unknown } | undefined)?.exitCode;
      code = worseExit(code, typeof exitCode === 'number' ? exitCode : 1);
    }
  }
  if (values.json) process.stdout.write(jsonText(byUrl));
  else {
    const summary = request.summary?.(answers) ?? '';
    process.stdout.write(`${sections.join('\n')}${summary !== '' ? `\n== summary ==\n${summary}` : ''}`);
  }
  if (failed.length > 0) {
    const reasons = answers.filter((a) => a.error !== undefined).map((a) => `mailfront ${command}: ${a.url}: ${a.error?.message}\n`);
    process.stderr.write(`mailfront ${command}: failed on ${failed.length} of ${answers.length} instances: ${failed.join(', ')}\n${reasons.join('')}`);
  }
  return code;
}

interface CachedJson {
  cache: string;
  store: string | null;
  held: string | null;
  expiresInMs: number;
}

/**
 * whereis --all's summary: on how many instances a login of the user would be refused as held or
 * let in now, each instance whose caches decide otherwise than the directory (with the kick that
 * ends it), where the instances' store or current master differ, where the user has sessions, and
 * the instances that did not answer. The move of a mailbox (README, Directory entries) checks
 * its step 2 with it.
 */
function whereisSummary(answers: readonly FleetAnswer[]): string {
  const seconds = (views: CachedJson[]): number => Math.ceil(Math.max(...views.map((c) => c.expiresInMs)) / 1000);
  const refusing: string[] = [];
  const letting: string[] = [];
  const notes: string[] = [];
  const stores = new Map<string, string[]>();
  const masters = new Map<string, string[]>();
  const sessions: string[] = [];
  const add = (map: Map<string, string[]>, key: string, url: string): void => void map.set(key, [...(map.get(key) ?? []), url]);
  for (const { url, json, error } of answers) {
    if (json === undefined) {
      notes.push(`${url} failed (${error?.message ?? 'no answer'}): what it would do is not known`);
      continue;
    }
    const held = (json['held'] as string | null | undefined) ?? null;
    const cached = (json['cached'] as CachedJson[] | undefined) ?? [];
    const kick = `mailfront kick ${String(json['user'])} --url ${url}`;
    if (held !== null) {
      const lets = cached.filter((c) => c.held === null);
      if (lets.length === 0) refusing.push(url);
      else {
        letting.push(url);
        notes.push(`${url} lets the user in from its cache for ${seconds(lets)} s more: ${kick}`);
      }
    } else {
      const holds = cached.filter((c) => c.held !== null);
      const elsewhere = cached.filter((c) => c.held === null && c.store !== json['store']);
      if (holds.length === 0) letting.push(url);
      else {
        refusing.push(url);
        notes.push(`${url} refuses the user's logins as held from its cache for ${seconds(holds)} s more: ${kick}`);
      }
      if (elsewhere.length > 0) notes.push(`${url} sends the user's logins to store ${[...new Set(elsewhere.map((c) => c.store ?? '(none)'))].join(', ')} from its cache for ${seconds(elsewhere)} s more: ${kick}`);
    }
    add(stores, String(json['store'] ?? '-'), url);
    add(masters, String(json['currentMaster'] ?? '-'), url);
    const count = Array.isArray(json['sessions']) ? json['sessions'].length : 0;
    if (count > 0) sessions.push(`${url} ${count}`);
  }
  const lines: string[] = [];
  const of = `of ${answers.length} ${answers.length === 1 ? 'instance' : 'instances'}`;
  if (refusing.length > 0) lines.push(`held on ${refusing.length} ${of}${letting.length > 0 ? `; let in on ${letting.join(', ')}` : ''}`);
  else if (letting.length > 0) lines.push(`not held: let in on ${letting.length} ${of}`);
  lines.push(...notes);
  const differ = (what: string, map: Map<string, string[]>): void => {
    if (map.size > 1) lines.push(`${what} differs: ${[...map].map(([value, urls]) => `${value} on ${urls.join(', ')}`).join('; ')}`);
  };
  differ('store', stores);
  differ('current master', masters);
  if (sessions.length > 0) lines.push(`live sessions: ${sessions.join(', ')}`);
  return `${lines.join('\n')}\n`;
}

/** Prints rows as aligned columns. */
function table(header: string[], rows: string[][]): string {
  // A loop: Math.max(...lengths) passed every row as an argument, and `mailfront stores` on a
  // map of 50,000 stores of 3 slots ended with "Maximum call stack size exceeded".
  const widths = header.map((h) => h.length);
  for (const row of rows) {
    for (let i = 0; i < widths.length; i++) widths[i] = Math.max(widths[i] as number, (row[i] ?? '').length);
  }
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return `${[line(header), ...rows.map(line)].join('\n')}\n`;
}

interface SessionJson {
  id: string;
  protocol: string;
  user: string;
  /** A master login's staff member. */
  master?: string;
  store: string;
  slot: string;
  client: string;
  startedAt: string;
}

interface ThrottleJson {
  from: 'memory' | 'redis' | 'local';
  users: Array<{ user: string; failures: number; limit: number; refusedForMs: number }>;
}

/** Where the throttle's counts were read or cleared, in words. */
const THROTTLE_FROM: Readonly<Record<string, string>> = {
  memory: "this instance's counters; without throttle.redis each instance counts alone",
  redis: 'Redis, shared by every instance using it',
  local: "this instance's counters: Redis did not answer",
};

/** A subject's counts, in words. */
function throttleCounts(c: { failures: number; limit: number; refusedForMs: number }): string {
  if (c.failures === 0 && c.refusedForMs === 0) return 'no failures counted';
  const refused = c.refusedForMs > 0 ? `, logins refused for ${Math.ceil(c.refusedForMs / 1000)} s more` : '';
  return `${c.failures} of ${c.limit} failures counted${refused}`;
}

/** whereis's throttle lines: each name's counts, then where they were read. */
function throttleLines(throttle: ThrottleJson | null | undefined): string {
  if (throttle === undefined) return '';
  if (throttle === null) return 'throttle        off\n';
  const lines = throttle.users.map((u, i) => `${i === 0 ? 'throttle       ' : '               '} ${u.user}: ${throttleCounts(u)}${u.refusedForMs > 0 ? ` (mailfront unthrottle ${u.user})` : ''}`);
  return `${lines.join('\n')}\n                read from ${THROTTLE_FROM[throttle.from] ?? throttle.from}\n`;
}

/** whereis's lines on what this instance's caches hold of the user (absent from an instance that does not say). */
function cachedLines(cached: CachedJson[] | undefined): string {
  if (cached === undefined) return '';
  if (cached.length === 0) return 'cached here     nothing (a login here asks the directory)\n';
  const lines = cached.map((c, i) => `${i === 0 ? 'cached here    ' : '               '} ${c.cache === 'auth' ? 'login (auth_cache_ttl_ms)' : 'entry (entry_cache_ttl_ms)'}: store ${c.store ?? '-'}${c.held !== null ? `, held "${c.held}"` : ''}, ${Math.ceil(c.expiresInMs / 1000)} s more`);
  return `${lines.join('\n')}\n`;
}

/** unthrottle's answer in words. */
function unthrottled(json: Record<string, unknown>): string {
  const subject = typeof json['address'] === 'string' ? `address ${json['address']}${json['key'] !== `a:${json['address']}` && typeof json['key'] === 'string' ? ` (counted as ${json['key'].slice(2)})` : ''}` : `user ${String(json['user'])}`;
  if (json['throttle'] === 'off') return `${subject}: throttling is off (throttle.enabled false): nothing is counted`;
  const before = json['before'] as { failures: number; limit: number; refusedForMs: number; from: string };
  if (before.failures === 0 && before.refusedForMs === 0) {
    const later = json['cleared'] === 'local' ? "; Redis's count, if it holds one, is deleted once it takes writes again" : '';
    return `${subject}: nothing to clear: ${throttleCounts(before)} (read from ${THROTTLE_FROM[before.from] ?? before.from})${later}`;
  }
  const where =
    json['cleared'] === 'redis'
      ? 'in Redis: released on every instance sharing it'
      : json['cleared'] === 'local'
        ? "on this instance only: Redis did not take the change (other instances still count the subject); Redis's count is deleted once it takes writes again"
        : 'on this instance (no throttle.redis: unthrottle on each instance)';
  return `${subject}: cleared ${throttleCounts(before)} ${where}`;
}

/** stores' answer in words. */
function storesText(json: Record<string, unknown>): string {
  const stores = json['stores'] as Array<{ store: string; backwards: boolean; maintenance?: boolean; maintenanceReason?: string | null; preferredMaster: string; slots: Array<{ slot: string; host: string; master: boolean; health: string; sessions: number }> }>;
  const rows = stores.flatMap((s) =>
    s.slots.map((slot) => [s.store, slot.slot, slot.host, slot.master ? 'master' : 'replica', slot.slot === s.preferredMaster ? 'yes' : '', slot.health, String(slot.sessions), [s.backwards && slot.master ? 'BACKWARDS' : '', s.maintenance === true && slot.master ? 'MAINTENANCE' : ''].filter(Boolean).join(' ')]),
  );
  let text = `store map version ${String(json['version'])}\n`;
  text += table(['STORE', 'SLOT', 'HOST', 'ROLE', 'PREFERRED', 'HEALTH', 'SESSIONS', ''], rows);
  const backwards = stores.filter((s) => s.backwards).map((s) => s.store);
  if (backwards.length > 0) text += `backwards stores (current master is not the preferred master): ${backwards.join(', ')}\n`;
  for (const s of stores) if (s.maintenance === true) text += `store ${s.store} in maintenance, logins refused: ${String(s.maintenanceReason)}\n`;
  return text;
}

/** whereis's line on the directory's lock of the account (absent from an instance that does not say), and one on a reset password. */
function lockedLines(json: Record<string, unknown>): string {
  if (!('locked' in json)) return '';
  type Lock = { attribute?: string; value?: string; since?: string | null; until?: string | null; endedAt?: string; byAdministrator?: boolean; unknown?: string; why?: string };
  const locked = json['locked'] as Lock | null;
  const reset = json['passwordReset'] === true ? `password        reset by an administrator (${String(json['passwordResetBy'] ?? 'pwdReset TRUE')})\n` : '';
  if (locked === null) {
    const ignored = json['lockIgnored'] as Lock | undefined;
    if (ignored !== undefined) {
      const why = ignored.why === 'future' ? 'in the future, not yet in effect' : "not enforced: the policy's pwdLockout is not TRUE";
      // The administrator's lock still refuses token logins: mailfront's bearer check reads it whatever the policy.
      if (ignored.byAdministrator === true) return `locked          no for password logins, yes for token logins (${String(ignored.attribute)} ${String(ignored.value)}, an administrator's, ${why})\n${reset}`;
      return `locked          no (${String(ignored.attribute)} ${String(ignored.value)} ${why})\n${reset}`;
    }
    const ended = json['lockEnded'] as Lock | undefined;
    if (ended === undefined) return `locked          no\n${reset}`;
    return `locked          no, a lockout by failed password binds ended at ${String(ended.endedAt)} (${String(ended.attribute)} ${String(ended.value)}, kept until the next good bind)\n${reset}`;
  }
  if (locked.unknown !== undefined) return `locked          unknown (${locked.unknown})\n${reset}`;
  const since = locked.since === null || locked.since === undefined ? '' : ` since ${locked.since}`;
  const until = locked.until === undefined ? (locked.attribute === 'pwdAccountLockedTime' ? ", unless the policy's pwdLockoutDuration has passed since" : '') : locked.until === null ? ' until an administrator unlocks it' : ` until ${locked.until}`;
  const how = locked.byAdministrator === true ? 'by an administrator' : `locked out${since} by failed password binds${until}`;
  return `locked          yes, ${how} (${String(locked.attribute)} ${String(locked.value)})\n${reset}`;
}

/** whereis's answer in words. */
function whereisText(json: Record<string, unknown>): string {
  let text = `user            ${String(json['user'])}\nlogin name      ${String(json['loginName'] ?? '-')}\ndirectory entry ${String(json['dn'])}\nstore           ${String(json['store'] ?? '-')}\ncurrent master  ${String(json['currentMaster'] ?? '-')}\naddress         ${String(json['address'] ?? '-')} ${json['ports'] ? JSON.stringify(json['ports']) : ''}\n`;
  text += lockedLines(json);
  if (json['problem']) text += `problem         ${String(json['problem'])}\n`;
  text += cachedLines(json['cached'] as CachedJson[] | undefined);
  text += throttleLines(json['throttle'] as ThrottleJson | null | undefined);
  return text + sessionsTable(json['sessions'] as SessionJson[]);
}

/** reload's answer in words. */
function reloadText(json: Record<string, unknown>): string {
  const config = json['config'] as { ok: boolean; error?: string };
  const storeMap = json['storeMap'] as { ok: boolean; version: number; error?: string };
  return `${config.ok ? 'config reloaded\n' : `config: ${String(config.error)}\n`}${storeMap.ok ? `store map version ${storeMap.version} in force\n` : `store map rejected: ${String(storeMap.error)}; version ${storeMap.version} stays in force\n`}`;
}

/** Sessions as a table; a MASTER column (the staff member in USER's mailbox) when a master login is among them. */
function sessionsTable(sessions: SessionJson[]): string {
  if (sessions.length === 0) return 'no sessions\n';
  if (sessions.some((s) => s.master !== undefined)) {
    return table(['SESSION', 'PROTOCOL', 'USER', 'MASTER', 'STORE', 'SLOT', 'CLIENT', 'STARTED'], sessions.map((s) => [s.id, s.protocol, s.user, s.master ?? '', s.store, s.slot, s.client, s.startedAt]));
  }
  return table(['SESSION', 'PROTOCOL', 'USER', 'STORE', 'SLOT', 'CLIENT', 'STARTED'], sessions.map((s) => [s.id, s.protocol, s.user, s.store, s.slot, s.client, s.startedAt]));
}

/**
 * The listeners' hosts (and the HTTP listener's) this host does not have, as warnings: serve
 * would not start with one (EADDRNOTAVAIL), and a reload would not bind a listener moved there.
 * Not errors: check-config cannot tell whether the running instance holds the address already (a
 * floating address gone to the other host of a pair while its socket stays bound), and an error
 * would stop `systemctl reload` (check-config, then SIGHUP), which keeps that listener, for a
 * certificate's renewal too. Each asked once, on port 0 (its own port may well be held by the
 * instance running now), as backend.source_addresses are; a host taken with
 * net.ipv4.ip_nonlocal_bind binds here as in serve.
 */
async function unusableListenAddresses(config: import('../config/schema.js').Config): Promise<string[]> {
  const { bindProblem } = await import('../net/local-address.js');
  const hosts: Array<readonly [path: string, host: string]> = config.listeners.map((listener, i) => [`listeners[${i}].host`, listener.host]);
  if (config.http !== undefined) hosts.push(['http.host', config.http.host]);
  const problems = new Map<string, Promise<string | null>>();
  const warnings: string[] = [];
  for (const [path, host] of hosts) {
    if (!problems.has(host)) problems.set(host, bindProblem(host));
    const problem = await problems.get(host)!;
    if (problem !== null) warnings.push(`${path}: ${host} is not an address of this host (the kernel would not bind a socket to it: ${problem}): serve would not start with it, and a reload would not bind a listener moved there; an instance running now keeps a socket it bound before`);
  }
  return warnings;
}

/**
 * Loads each listener's certificates and keys as serve does (a TlsContextHolder with the config's
 * policy: the files read, each key matched to its certificate, a certificate listed where no
 * client would be given it refused; nothing bound), so that check-config finds what would stop
 * serve. A file that cannot be read is named on its own, once, under the first listener naming it
 * (as CA files are).
 */
async function checkListenerCertificates(config: import('../config/schema.js').Config): Promise<import('../config/validate.js').ConfigIssue[]> {
  const { TlsContextHolder, TlsFilesError } = await import('../server/tls-config.js');
  const issues: import('../config/validate.js').ConfigIssue[] = [];
  const readable = new Map<string, boolean>();
  config.listeners.forEach((listener, i) => {
    const given = listener.certificates ?? listener.certificate;
    if (given === undefined) return;
    const list = listener.certificates ?? [given as import('../config/schema.js').TlsFiles];
    const pathOf = (j: number): string => (listener.certificates !== undefined ? `listeners[${i}].certificates[${j}]` : `listeners[${i}].certificate`);
    let allReadable = true;
    list.forEach((files, j) => {
      for (const key of ['cert', 'key'] as const) {
        if (readable.has(files[key])) {
          allReadable &&= readable.get(files[key]) === true;
          continue;
        }
        try {
          readFileSync(files[key]);
          readable.set(files[key], true);
        } catch (error) {
          readable.set(files[key], false);
          allReadable = false;
          issues.push({ path: `${pathOf(j)}.${key}`, expected: `a readable file (${files[key]})`, found: (error as NodeJS.ErrnoException).code ?? String(error) });
        }
      }
    });
    if (!allReadable) return;
    try {
      new TlsContextHolder(given, config.tls);
    } catch (error) {
      const path = error instanceof TlsFilesError && listener.certificates !== undefined ? `listeners[${i}].${error.configKey}` : `listeners[${i}].certificate`;
      issues.push({ path, expected: listener.certificates !== undefined ? 'PEM certificates, each with the key that belongs to it, usable with the tls policy, and each for a name no certificate before it is for' : 'a PEM certificate and the key that belongs to it, usable with the tls policy', found: error instanceof Error ? error.message : String(error) });
    }
  });
  return issues;
}

type CaFiles = ReadonlyArray<readonly [path: string, file: string | undefined]>;

/** The CA files the config names, by config path. */
function configCaFiles(config: import('../config/schema.js').Config): CaFiles {
  return [
    ['directory.ca_file', config.directory.caFile],
    ['store_map.ldap.ca_file', config.storeMap.kind === 'ldap' ? config.storeMap.caFile : undefined],
    ['backend.ca_file', config.backend.caFile],
    ...[...config.backendProfiles].map(([name, profile]) => [`backend_profiles.${name}.ca_file`, profile.caFile] as const),
  ];
}

/**
 * The directory settings tried on a server as serve and a reload try them (probeDirectory()): a
 * server that refuses the service bind or base_dn is a problem under the key at fault; none that
 * answers (a directory down, not reachable from here) is a note, not a failure. Not tried with a
 * directory.ca_file that cannot be used (reported already).
 */
async function checkDirectorySettings(config: import('../config/schema.js').Config, caUnusable: ReadonlySet<string>): Promise<{ issue?: import('../config/validate.js').ConfigIssue; note: string }> {
  const { caFile } = config.directory;
  if (caFile !== undefined && caUnusable.has(caFile)) return { note: '' };
  const { INVALID_CREDENTIALS_HINT, probeDirectory } = await import('../auth/ldap.js');
  const tried = await probeDirectory(config.directory, caFile === undefined ? undefined : readFileSync(caFile));
  if (tried.state === 'refused') {
    const { refusal } = tried;
    const step = refusal.key === 'directory.base_dn' ? 'the base search of base_dn' : 'the service bind';
    return { issue: { path: refusal.key, expected: `settings the directory server takes (${step})`, found: `${refusal.url} answered ${refusal.name} (${refusal.code})${refusal.code === 49 ? INVALID_CREDENTIALS_HINT : ''}` }, note: '' };
  }
  if (tried.state === 'unreachable') return { note: `directory: no server answered (${tried.detail}); its service bind and base_dn were not tried\n` };
  return { note: '' };
}

/** How many names of stores in maintenance check-config prints before it counts the rest. */
const MAINTENANCE_NAMES_SHOWN = 10;

/**
 * check-config's line on the stores in maintenance, or '' when none is: a map about to be put in
 * force with stores whose logins it refuses should say so before the deploy, not in the first
 * user's ticket.
 */
function maintenanceSummary(stores: ReadonlyMap<string, { readonly maintenance: string | null }>): string {
  const names = [...stores].filter(([, store]) => store.maintenance !== null).map(([name]) => name);
  if (names.length === 0) return '';
  const more = names.length > MAINTENANCE_NAMES_SHOWN ? ` and ${names.length - MAINTENANCE_NAMES_SHOWN} more` : '';
  return `${names.length} ${names.length === 1 ? 'store' : 'stores'} in maintenance, logins refused: ${names.slice(0, MAINTENANCE_NAMES_SHOWN).join(', ')}${more}\n`;
}

/** The CA files the store map's stores name (their own, or the ones they inherit), by path. */
function storeCaFiles(stores: ReadonlyMap<string, { readonly backend: { readonly caFile?: string } }>): CaFiles {
  return [...stores].map(([name, store]) => [`stores.${name}.backend.ca_file`, store.backend.caFile] as const);
}

/**
 * The CA files of `named` that cannot be read: serve would fail on them, or their slots be down.
 * `checked`: files read already (an inherited default), not read or reported again; `unusable`
 * gets the files reported.
 */
function unreadableCaFiles(named: CaFiles, checked = new Set<string>(), unusable = new Set<string>()): import('../config/validate.js').ConfigIssue[] {
  const issues: import('../config/validate.js').ConfigIssue[] = [];
  for (const [path, file] of named) {
    // A file named again (a profile's default, the store map's inherited one) is reported once.
    if (file === undefined || checked.has(file)) continue;
    checked.add(file);
    let content: Buffer;
    try {
      content = readFileSync(file);
    } catch (error) {
      issues.push({ path, expected: `a readable file (${file})`, found: (error as NodeJS.ErrnoException).code ?? String(error) });
      unusable.add(file);
      continue;
    }
    // What serve refuses too: a file with no certificate, or one cut short, trusts nothing.
    const problem = caCertificatesProblem(content);
    if (problem !== null) {
      issues.push({ path, expected: `PEM CA certificates (${file})`, found: problem });
      unusable.add(file);
    }
  }
  return issues;
}

/** The problems of several files (the config's, the store map's) as one error, printed together. */
function allProblems(errors: readonly Error[]): Error {
  if (errors.length === 1) return errors[0]!;
  return Object.assign(new Error(errors.map((e) => e.message).join('\n')), { code: 'CONFIG_INVALID' });
}

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
  url: { type: 'string', multiple: true },
  all: { type: 'boolean' },
  token: { type: 'string' },
  json: { type: 'boolean' },
  user: { type: 'string' },
  store: { type: 'string' },
  slot: { type: 'string' },
  session: { type: 'string' },
  reason: { type: 'string' },
  'accept-older-store-map': { type: 'boolean' },
} as const;

/** The options of the commands that talk to a running server's admin API. */
const REMOTE_OPTIONS = ['config', 'url', 'token', 'json'] as const;
/**
 * Those of the commands that can go to every instance of a fleet: what each instance does or
 * holds alone (its sessions, caches, counters, config). Not failover and maintenance, which write
 * the store map's source the fleet shares: once is the change.
 */
const FLEET_OPTIONS = [...REMOTE_OPTIONS, 'all'] as const;

/**
 * The options each command takes, besides --help and --version. Another known option was
 * ignored without a word: `kick --user alice --slot a2` closed every session on a2.
 */
const COMMAND_OPTIONS: Readonly<Record<string, readonly (keyof typeof OPTIONS)[]>> = {
  serve: ['config'],
  'check-config': ['config'],
  stores: FLEET_OPTIONS,
  whereis: FLEET_OPTIONS,
  failover: REMOTE_OPTIONS,
  maintenance: [...REMOTE_OPTIONS, 'reason'],
  sessions: [...FLEET_OPTIONS, 'user', 'store', 'slot'],
  kick: [...FLEET_OPTIONS, 'slot', 'session'],
  unthrottle: FLEET_OPTIONS,
  reload: [...FLEET_OPTIONS, 'accept-older-store-map'],
};

/** How many arguments each command takes after its name (kick checks its own). */
const MAX_ARGUMENTS: Readonly<Record<string, number>> = { serve: 1, 'check-config': 1, stores: 1, whereis: 1, failover: 2, maintenance: 2, sessions: 0, unthrottle: 1, reload: 0 };


async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parseArgs<{ args: string[]; allowPositionals: true; options: typeof OPTIONS }>>;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: OPTIONS });
  } catch (error) {
    // An unknown option, an option without its value (-c at the end), a value given to a switch
    // (--json=1): a usage error like a missing argument, with the command's usage.
    if (!String((error as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS_')) throw error;
    const command = parseArgs({ args: argv, allowPositionals: true, options: OPTIONS, strict: false }).positionals[0] ?? '';
    // Node's text for an unknown option adds a hint about '--' whose quotes do not pair.
    const unknown = (error as { code?: unknown }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /^Unknown option '(.*?)'\./.exec((error as Error).message)?.[1] : undefined;
    const said = unknown !== undefined ? `unknown option ${unknown}` : (error as Error).message;
    process.stderr.write(`mailfront${command !== '' && HELP[command] !== undefined ? ` ${command}` : ''}: ${said}\n\n${HELP[command] ?? HELP['']!}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command = '', ...rest] = positionals;
  // Only serve answers SIGHUP, SIGTERM and SIGINT; any other command ends on them, as it did.
  if (command !== 'serve') {
    releaseHangups();
    releaseStops();
  }
  const out = (text: string): void => void process.stdout.write(text);
  if (values.version) {
    out(`mailfront ${VERSION}\n`);
    return 0;
  }
  if (values.help || command === '' || command === 'help') {
    const topic = command === 'help' ? (rest[0] ?? '') : command;
    if (HELP[topic] === undefined) {
      process.stderr.write(`mailfront: unknown command "${topic}"\n\n${HELP['']}`);
      return 2;
    }
    out(HELP[topic]);
    return command === '' && !values.help ? 2 : 0;
  }
  /** What was wrong (`reason`), then the command's usage, on stderr: exit 2. */
  const usage = (reason: string): number => {
    process.stderr.write(`mailfront ${command}: ${reason}\n\n${HELP[command] ?? HELP['']!}`);
    return 2;
  };
  const takes = COMMAND_OPTIONS[command];
  const foreign = takes === undefined ? [] : Object.keys(values).filter((key) => key !== 'help' && key !== 'version' && !(takes as readonly string[]).includes(key));
  if (foreign.length > 0) {
    return usage(`${foreign.map((key) => `--${key}`).join(', ')} ${foreign.length === 1 ? 'is not an option' : 'are not options'} of this command`);
  }
  // An argument more than the command takes was ignored: `whereis a b` answered for a alone.
  const allowed = MAX_ARGUMENTS[command];
  if (allowed !== undefined && rest.length > allowed) {
    return usage(`unexpected argument "${rest[allowed]}"`);
  }
  // --url given twice went to the last one alone; now to each, as --all does, where a fleet makes sense.
  const urls = (values.url ?? []).map((url) => url.replace(/\/$/, ''));
  // A session lives on one instance: the others would each answer 404, and the command fail.
  if (command === 'kick' && values.session !== undefined && (values.all || urls.length > 1)) {
    return usage('--session names a session of one instance: give its --url, not --all or several');
  }
  if (values.all && urls.length > 0) {
    return usage('give --all (the instances of admin.instances) or --url, not both');
  }
  if (urls.length > 1 && !(takes as readonly string[] | undefined)?.includes('all')) {
    return usage("one --url only: it is written to the store map's source, which every instance reads");
  }
  // Compared as admin.instances compares them: by origin (http://h:80 is http://h).
  const origins = urls.map((url) => (URL.canParse(url) ? new URL(url).origin : url));
  const twice = urls.find((_url, i) => origins.indexOf(origins[i]!) !== i);
  if (twice !== undefined) {
    return usage(`--url ${twice} is given twice`);
  }
  // Both named the config file, and -c won without a word.
  if ((command === 'serve' || command === 'check-config') && rest[0] !== undefined && values.config !== undefined) {
    return usage(`give the config file as FILE or with -c, not both ("${rest[0]}" and "${values.config}")`);
  }
  switch (command) {
    case 'check-config': {
      const config = await loadConfig(values.config ?? rest[0] ?? DEFAULT_CONFIG);
      const { ConfigError, buildStoreMap } = await import('../config/load.js');
      const caChecked = new Set<string>();
      const caUnusable = new Set<string>();
      const fileIssues = [...(await checkListenerCertificates(config)), ...unreadableCaFiles(configCaFiles(config), caChecked, caUnusable)];
      fileIssues.push(...(await import('../auth/throttle.js')).redisTlsIssues(config.throttle));
      if (config.oauth2?.jwksFile !== undefined) {
        const { OAuthVerifier } = await import('../auth/oauth.js');
        try {
          OAuthVerifier.readFile(config.oauth2.jwksFile);
        } catch (error) {
          fileIssues.push({ path: 'oauth2.jwks_file', expected: 'a JWKS file ({"keys": [...]}) with a public key mailfront can verify tokens with', found: error instanceof Error ? error.message.replace(/^oauth2\.jwks_file: /, '') : String(error) });
        }
      }
      const { configSourceAddresses, unusableSourceAddresses } = await import('../backend/connect.js');
      const sourcesChecked = new Set<string>();
      fileIssues.push(...(await unusableSourceAddresses(configSourceAddresses(config), sourcesChecked)));
      const listenWarnings = await unusableListenAddresses(config);
      // The store map is read even when the files above are not: every problem at once. (A config
      // whose own values are wrong is reported alone: without it the rest cannot be read.)
      const problems = fileIssues.length > 0 ? [new ConfigError(config.file, fileIssues)] : [];
      // Except with an LDAP store map whose CA file cannot be used (its own, or directory.ca_file
      // inherited): that is reported above under the key that names it, and the source, which
      // reads the file when it is made, would throw it alone, every other problem dropped.
      if (config.storeMap.kind === 'ldap' && config.storeMap.caFile !== undefined && caUnusable.has(config.storeMap.caFile)) throw allProblems(problems);
      const { createStoreMapSource } = await import('../routing/sources.js');
      const source = createStoreMapSource(config.storeMap);
      let summary = '';
      let maintenance = '';
      let stores: import('../routing/storemap.js').StoreMap['stores'] | undefined;
      try {
        const map = buildStoreMap(await source.load(), source.description, 1, config);
        stores = map.stores;
        const storeIssues = [...unreadableCaFiles(storeCaFiles(map.stores), caChecked), ...(await unusableSourceAddresses([...map.stores].map(([name, store]) => [`stores.${name}.backend.source_addresses`, store.backend.sourceAddresses] as const), sourcesChecked))];
        if (storeIssues.length > 0) problems.push(new ConfigError(source.description, storeIssues));
        const slots = [...map.stores.values()].reduce((n, s) => n + s.slots.size, 0);
        summary = `${config.file}: OK (${config.listeners.length} listeners, ${map.stores.size} stores, ${slots} slots from ${source.description})\n`;
        maintenance = maintenanceSummary(map.stores);
      } catch (error) {
        if (problems.length === 0) throw error;
        // After the config's files' problems, whatever kept the store map from loading.
        problems.push(error instanceof ConfigError ? error : new ConfigError(source.description, [{ path: '', expected: 'a store map that can be read', found: error instanceof Error ? error.message : String(error) }]));
      } finally {
        await source.close();
      }
      const directory = await checkDirectorySettings(config, caUnusable);
      if (directory.issue !== undefined) problems.push(new ConfigError(config.file, [directory.issue]));
      if (problems.length > 0) throw allProblems(problems);
      // Valid, and so OK, but said: serve logs the same lines at start.
      const { configWarnings } = await import('../config/schema.js');
      out(`${summary}${directory.note}${maintenance}${[...listenWarnings, ...configWarnings(config, stores).map((w) => w.text)].map((text) => `warning: ${text}\n`).join('')}`);
      return 0;
    }
    case 'serve': {
      // SIGHUP has been counted since the CLI's first module (hangup.ts); a reload that fails
      // unexpectedly is logged: it must never take the process and its spliced sessions down
      // (on Node 20 an unhandled rejection exits).
      const reload = (mailfront: import('../main.js').Mailfront): void => {
        mailfront.reload().catch((error: unknown) => {
          mailfront.log.error({ event: 'config.reload_failed', err: error instanceof Error ? error.message : String(error) }, 'config reload failed');
        });
      };
      // A SIGHUP before this point is answered by the start itself, which reads the config file,
      // its secret files, the store map and the certificates after it. One that comes while they
      // are read, or later during the start, may have missed the operator's edit: it reloads
      // once the server is up.
      const askedBefore = hangupsReceived();
      const { STOP_LOG_FLUSH_MS } = await import('../config/schema.js');
      const { setLogLossPhase } = await import('../log.js');
      let mailfront: import('../main.js').Mailfront;
      try {
        const config = await loadConfig(values.config ?? rest[0] ?? DEFAULT_CONFIG);
        const { Mailfront } = await import('../main.js');
        mailfront = await Mailfront.start(config);
      } catch (error) {
        return serveFailed(error, STOP_LOG_FLUSH_MS);
      }
      setLogLossPhase({ kind: 'serving' });
      // Taken over before the counting stops, so that no SIGHUP meets the default action.
      process.on('SIGHUP', () => reload(mailfront));
      releaseHangups();
      if (hangupsReceived() > askedBefore) reload(mailfront);
      // The first SIGTERM or SIGINT stops; another one (a second Ctrl-C, systemd's and an
      // operator's) ends the drain of spliced sessions at once: they are told BYE now, and the
      // stop ends as usual, its log lines written. With process.once a second signal took the
      // default action and killed the process, sessions cut without a BYE and the last log lines
      // lost; and SIGINT after SIGTERM exited 0 while the sessions drained. Those that came
      // during the start (remembered since the CLI's first module, see hangup.ts) are handled
      // now, in order: the server stops as soon as it is up.
      let stopping = false;
      const stop = (signal: NodeJS.Signals): void => {
        if (stopping) return mailfront.endDrain(signal);
        stopping = true;
        setLogLossPhase({ kind: 'stopping', ms: STOP_LOG_FLUSH_MS });
        // A stop that fails is a bug: said in the log, and exit 1 rather than an unhandled rejection's crash.
        void mailfront
          .stop()
          .then(
            () => 0,
            (error: unknown) => {
              mailfront.log.fatal({ event: 'server.stop_failed', err: error instanceof Error ? error.message : String(error) }, 'the stop failed');
              return 1;
            },
          )
          .then((code) => import('../log.js').then(({ logWritten }) => logWritten(mailfront.log, STOP_LOG_FLUSH_MS)).then(() => process.exit(code)));
      };
      takeStops(stop);
      return -1;
    }
    case 'stores': {
      // One store: the instance builds that store's view alone, not the whole map's.
      const path = rest[0] === undefined ? '/api/stores' : `/api/stores/${encodeURIComponent(rest[0])}`;
      return runAdmin(command, { method: 'GET', path, render: (json) => ({ text: storesText(json), code: 0 }) }, values);
    }
    case 'whereis': {
      if (rest[0] === undefined) return usage('missing USER');
      return runAdmin(command, { method: 'GET', path: `/api/whereis/${encodeURIComponent(rest[0])}`, render: (json) => ({ text: whereisText(json), code: 0 }), summary: whereisSummary }, values);
    }
    case 'failover': {
      const [store, slot] = rest;
      if (store === undefined || slot === undefined) return usage(store === undefined ? 'missing STORE and SLOT' : 'missing SLOT');
      const render = (json: Record<string, unknown>): Rendered => ({ text: `store ${store}: current master is now ${slot} (store map version ${String(json['version'])})\n`, code: 0 });
      return runAdmin(command, { method: 'POST', path: `/api/stores/${encodeURIComponent(store)}/failover`, body: { slot }, underWay: `the failover may still be under way: see the log (storemap.failover_written) or \`mailfront stores\``, render }, values);
    }
    case 'maintenance': {
      const [store, state] = rest;
      if (store === undefined || (state !== 'on' && state !== 'off')) return usage(store === undefined ? 'missing STORE and on or off' : state === undefined ? 'missing on or off' : `expected on or off, found "${state}"`);
      if (state === 'off' && values.reason !== undefined) {
        return usage('--reason goes with on only');
      }
      const body = state === 'on' ? { on: true, ...(values.reason !== undefined ? { reason: values.reason } : {}) } : { on: false };
      const render = (json: Record<string, unknown>): Rendered => ({ text: `store ${store}: maintenance ${state} (store map version ${String(json['version'])})\n`, code: 0 });
      return runAdmin(command, { method: 'POST', path: `/api/stores/${encodeURIComponent(store)}/maintenance`, body, underWay: `the change may still be under way: see the log (storemap.maintenance_written) or \`mailfront stores\``, render }, values);
    }
    case 'sessions': {
      const query = new URLSearchParams();
      for (const key of ['user', 'store', 'slot'] as const) if (values[key] !== undefined) query.set(key, values[key]);
      const render = (json: Record<string, unknown>): Rendered => ({
        text: sessionsTable(json['sessions'] as SessionJson[]),
        ...(typeof json['lookupFailed'] === 'string' ? { warning: `${json['lookupFailed']}: only the sessions under the name "${String(values.user)}" are listed, not those of its entry's other names` } : {}),
        code: 0,
      });
      return runAdmin(command, { method: 'GET', path: `/api/sessions${query.size > 0 ? `?${query}` : ''}`, render }, values);
    }
    case 'kick': {
      // Exactly one of the three: a second one was ignored, and `kick alice --slot a2` closed
      // every session of alice, not only those on a2.
      const chosen = [...rest.map((user) => ({ user })), ...(values.slot !== undefined ? [{ slot: values.slot }] : []), ...(values.session !== undefined ? [{ session: values.session }] : [])];
      if (chosen.length > 1) {
        return usage(`give one of USER, --slot SLOT or --session ID, not ${chosen.length} (${chosen.map((c) => Object.keys(c)[0]).join(', ')})`);
      }
      const body = chosen[0];
      if (body === undefined) return usage('give USER, --slot SLOT or --session ID');
      const render = (json: Record<string, unknown>): Rendered => {
        const forgotten = typeof json['forgotten'] === 'number' ? `, forgot ${json['forgotten']} cached item(s) of the user` : '';
        return { text: `closed ${(json['kicked'] as unknown[]).length} session(s)${forgotten}\n`, code: 0 };
      };
      // A slot's sessions are closed in batches before the answer: tens of thousands take seconds.
      return runAdmin(command, { method: 'POST', path: '/api/kick', body, underWay: 'the kick may still be closing sessions: see the log (admin.kick, once it is done) or `mailfront sessions`', render }, values);
    }
    case 'unthrottle': {
      const subject = rest[0];
      if (subject === undefined) return usage('missing USER or ADDRESS');
      // A user name is never an IP literal that a client would type: an address is one.
      const body = isIP(subject.trim()) !== 0 ? { address: subject } : { user: subject };
      return runAdmin(command, { method: 'POST', path: '/api/unthrottle', body, render: (json) => ({ text: `${unthrottled(json)}\n`, code: 0 }) }, values);
    }
    case 'reload': {
      // The exit code says whether the reload took, with --json too (scripts test it).
      const body = values['accept-older-store-map'] === true ? { acceptOlderStoreMap: true } : undefined;
      return runAdmin(command, { method: 'POST', path: '/api/reload', body, underWay: 'the reload may still be running: see the log (config.reloaded, or config.rejected)', render: (json) => ({ text: reloadText(json), code: json['ok'] ? 0 : 1 }) }, values);
    }
    default:
      process.stderr.write(`mailfront: unknown command "${command}"\n\n${HELP['']}`);
      return 2;
  }
}

// A reader that stops early (`mailfront sessions | head -1`, `grep -q`) closes the pipe: what is
// left to print has nowhere to go, which is no failure of the command; without a listener node
// would end on an unhandled EPIPE with a stack trace. (serve's log lines do not go through here.)
// The same for stderr (`mailfront kick 2>&1 | head -c0`): the command's exit code stays its own.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
}

/** Says on stderr why a command failed; the exit code it fails with. */
function failed(error: unknown): number {
  if ((error as { code?: unknown }).code === 'CONFIG_INVALID') process.stderr.write(`mailfront: invalid configuration\n${(error as Error).message}\n`);
  else process.stderr.write(`mailfront: ${error instanceof Error ? error.message : String(error)}\n`);
  const exitCode = (error as { exitCode?: unknown }).exitCode;
  return typeof exitCode === 'number' ? exitCode : 1;
}

/**
 * The end of a serve that did not start (a config that cannot be read, a port in use, a store map
 * or directory that refuses): says why on stderr, then exits as a stop does, once the log lines
 * are written, waiting for them up to `ms` (what stdout has not taken by then, or refuses, is
 * given up). The exit's own flush retried lines stdout refused every 100 ms for ever: `serve |
 * head -c 100`, the reader gone, never exited (and systemd's Restart=on-failure never fired).
 * SIGTERM and SIGINT, kept for a stop since the CLI's first module (hangup.ts), did nothing
 * meanwhile: one that comes now ends the wait, the rest of the log given up, as a second signal
 * ends a stop's drain; one that came during the start (a stop asked for) waits as a stop would.
 */
async function serveFailed(error: unknown, ms: number): Promise<never> {
  const { giveUpLog, setLogLossPhase, stdoutLogWritten } = await import('../log.js');
  setLogLossPhase({ kind: 'failed-start', ms });
  const code = failed(error);
  // Those received so far are handed over at once, within takeStops(), before the wait begins.
  let waiting = false;
  takeStops((signal) => {
    if (!waiting) return;
    giveUpLog(`${signal} while the log was written after a failed start`);
    process.exit(code);
  });
  waiting = true;
  await stdoutLogWritten(ms, 'after a failed start');
  process.exit(code);
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (error: unknown) => {
    process.exitCode = failed(error);
  },
);
