// The `mailfront` command line run as the command it is, without a running instance: exit codes,
// usage errors, and what the operator commands read of the config file.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { refusingPort } from '../integration/servers/index.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI with `args`; `closeStdout`/`closeStderr`: the reader of that output goes away at once (`| head -0`). */
function cli(args: readonly string[], options: { closeStdout?: boolean; closeStderr?: boolean; env?: NodeJS.ProcessEnv; nodeOptions?: readonly string[] } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...(options.nodeOptions ?? []), CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, timeout: 30_000 });
    let stdout = '';
    let stderr = '';
    if (options.closeStdout) child.stdout.destroy();
    else child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    if (options.closeStderr) child.stderr.destroy();
    else child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('output to a reader that has gone (| head, | grep -q) ends the command quietly with its own exit code', async () => {
  const help = await cli(['--help'], { closeStdout: true });
  assert.equal(help.stderr, '');
  assert.equal(help.code, 0);
  const version = await cli(['stores', '--version'], { closeStdout: true });
  assert.equal(version.stderr, '');
  assert.equal(version.code, 0);
  // A usage error whose stderr reader has gone (`mailfront kick 2>&1 | head -c0`) still exits 2.
  for (let i = 0; i < 3; i++) assert.equal((await cli(['kick'], { closeStderr: true })).code, 2);
});

/** An admin API stand-in that answers GET /api/stores and records the tokens it was given, and how many connections it took. */
async function fakeAdminApi(at?: { readonly host: string; readonly port: number }): Promise<{ port: number; tokens: string[]; connections: () => number; close: () => void }> {
  const tokens: string[] = [];
  let connections = 0;
  const server = createServer((req, res) => {
    tokens.push(req.headers.authorization ?? '');
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ version: 3, stores: [] }));
  });
  server.on('connection', () => connections++);
  server.listen(at?.port ?? 0, at?.host ?? '127.0.0.1');
  await Promise.race([once(server, 'listening'), once(server, 'error').then(([error]) => Promise.reject(error as Error))]);
  return { port: (server.address() as AddressInfo).port, tokens, connections: () => connections, close: () => server.close() };
}

// fetch, which the CLI used, refuses the ports browsers block ("bad port"): `mailfront stores`
// failed against an instance whose http.port was 6666, which serve, Prometheus and check-config
// take (found by the operator review).
test('an admin API on a port that browsers block (6666, 10080) is reached', async () => {
  for (const port of [6666, 10080]) {
    // A fixed port, so on a loopback address of its own: another suite's listener may hold it on 127.0.0.1.
    let api: Awaited<ReturnType<typeof fakeAdminApi>> | undefined;
    let host = '';
    for (let tries = 0; api === undefined && tries < 20; tries++) {
      host = `127.${1 + Math.floor(Math.random() * 254)}.${Math.floor(Math.random() * 256)}.${1 + Math.floor(Math.random() * 254)}`;
      api = await fakeAdminApi({ host, port }).catch(() => undefined);
    }
    assert.ok(api !== undefined, `no loopback address free on port ${port}`);
    try {
      const stores = await cli(['stores', '--url', `http://${host}:${port}`, '--token', 'a-token-of-the-admin-api-0123456789']);
      assert.equal(stores.code, 0, stores.stderr);
      assert.match(stores.stdout, /^store map version 3\n/);
    } finally {
      api.close();
    }
  }
});

test('the operator commands read only http and admin of the config: another secret file they cannot read is no error, and with --token no secret file is read', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mf-cli-remote-'));
  const api = await fakeAdminApi();
  try {
    const token = 'a-token-of-the-admin-api-0123456789';
    await writeFile(join(dir, 'admin.token'), `${token}\n`);
    // The LDAP bind password file is mailfront's alone (here: missing); listeners are not even
    // valid. The operator commands need neither.
    const config = join(dir, 'mailfront.yaml');
    await writeFile(config, `listeners: nope\ndirectory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password_file: ${join(dir, 'ldap.secret')}, base_dn: dc=x }\nstore_map: { file: stores.yaml }\nhttp: { host: 127.0.0.1, port: ${api.port} }\nadmin: { token_file: admin.token }\n`);
    const stores = await cli(['stores', '-c', config]);
    assert.equal(stores.code, 0, stores.stderr);
    assert.match(stores.stdout, /^store map version 3\n/);
    assert.deepEqual(api.tokens, [`Bearer ${token}`]);
    // With --token, the token file is not read: it may be unreadable, or gone.
    await rm(join(dir, 'admin.token'));
    const given = await cli(['stores', '-c', config, '--token', 'the-token-given-on-the-command-line']);
    assert.equal(given.code, 0, given.stderr);
    assert.deepEqual(api.tokens.slice(1), ['Bearer the-token-given-on-the-command-line']);
    // Without it, the token file's problem is named.
    const missing = await cli(['stores', '-c', config]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /admin\.token_file: expected a readable file.*, found ENOENT/);
    assert.ok(!missing.stderr.includes('directory'), missing.stderr);
  } finally {
    api.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a token of --token or MAILFRONT_ADMIN_TOKEN is sent without the whitespace at its ends, as it always reached the server; one no admin API could match is refused before anything is sent, naming where it came from and never showing it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mf-cli-token-'));
  const api = await fakeAdminApi();
  try {
    const url = `http://127.0.0.1:${api.port}`;
    const secret = 'a-token-of-the-admin-api-0123456789';
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env['MAILFRONT_ADMIN_TOKEN'];
    // The config's token is a good one: a bad token given otherwise must not fall back to it.
    const config = join(dir, 'mailfront.yaml');
    await writeFile(config, `http: { host: 127.0.0.1, port: ${api.port} }\nadmin: { token: ${secret} }\n`);
    const chars = `a string of ${secret.length + 1} characters with`;
    const cases: Array<{ args: string[]; env: NodeJS.ProcessEnv; source: string; found: string }> = [
      { args: ['--url', url, '--token', `${secret.slice(0, 10)}é${secret.slice(10)}`], env, source: '--token', found: `${chars} a character beyond ASCII at character 11` },
      { args: ['--url', url, '--token', `${secret}€`], env, source: '--token', found: `${chars} a character beyond ASCII at its end` },
      { args: ['--url', url], env: { ...env, MAILFRONT_ADMIN_TOKEN: `${secret.slice(0, 5)}\t${secret.slice(5)}` }, source: 'MAILFRONT_ADMIN_TOKEN', found: `${chars} a tab at character 6` },
      { args: ['--url', url, '--token', ''], env, source: '--token', found: 'an empty string' },
      { args: ['--url', url, '--token', ' \r\n'], env, source: '--token', found: 'whitespace alone' },
      // Counted in the token as sent, and said so: the position is not the one in the string given.
      { args: ['--url', url], env: { ...env, MAILFRONT_ADMIN_TOKEN: `  ${secret.slice(0, 5)}\u0007${secret.slice(5)}\r\n` }, source: 'MAILFRONT_ADMIN_TOKEN', found: `, once the whitespace at its ends is taken off, ${chars} a control character at character 6` },
      // --token is the one used, and so the one checked and named.
      { args: ['-c', config, '--token', `${secret.slice(0, 5)}\u001b${secret.slice(5)}`], env: { ...env, MAILFRONT_ADMIN_TOKEN: secret }, source: '--token', found: `${chars} a control character at character 6` },
    ];
    for (const { args, env: caseEnv, source, found } of cases) {
      const result = await cli(['stores', ...args], { env: caseEnv });
      const label = `${source}: ${found}`;
      assert.equal(result.code, 1, `${label}: ${result.stderr}`);
      assert.ok(result.stderr.startsWith(`mailfront: the admin token given by ${source} was not sent: found${found.startsWith(',') ? '' : ' '}${found}; expected a token of visible ASCII`), `${label}: ${result.stderr}`);
      assert.equal(result.stdout, '', label);
      for (const part of [secret, secret.slice(0, 10), secret.slice(-10)]) assert.ok(!result.stderr.includes(part), `${label}: ${result.stderr}`);
    }
    assert.equal(api.connections(), 0);
    assert.deepEqual(api.tokens, []);
    // Whitespace at the ends (a token file written with CRLF read with "$(cat file)" keeps the
    // CR; a space typed after it): what fetch and the server's parser take off anyway, and what
    // always worked. Spaces between its characters are a token admin.token takes: sent as given.
    const sent = [
      { args: ['--url', url, '--token', `${secret} `], env },
      { args: ['--url', url], env: { ...env, MAILFRONT_ADMIN_TOKEN: `${secret}\r` } },
      { args: ['-c', config], env: { ...env, MAILFRONT_ADMIN_TOKEN: `\t${secret}\r\n` } },
      { args: ['--url', url, '--token', 'a token with inner spaces 0123'], env },
    ];
    for (const { args, env: caseEnv } of sent) {
      const result = await cli(['stores', ...args], { env: caseEnv });
      assert.equal(result.code, 0, `${JSON.stringify(args)}: ${result.stderr}`);
    }
    assert.deepEqual(api.tokens, [`Bearer ${secret}`, `Bearer ${secret}`, `Bearer ${secret}`, 'Bearer a token with inner spaces 0123']);
  } finally {
    api.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('unknown or malformed options and extra arguments are usage errors: exit 2 with the command\'s usage', async () => {
  // No server is asked: the URL would refuse the connection if it were.
  const remote = ['--url', 'http://127.0.0.1:9', '--token', 'x'];
  const cases: Array<{ args: string[]; command: string; says: RegExp }> = [
    { args: ['stores', '--bogus', ...remote], command: 'stores', says: /^mailfront stores: unknown option --bogus\n\n/ },
    // A missing argument says which (it printed the usage alone).
    { args: ['whereis', ...remote], command: 'whereis', says: /^mailfront whereis: missing USER\n\n/ },
    { args: ['failover', ...remote], command: 'failover', says: /^mailfront failover: missing STORE and SLOT\n\n/ },
    { args: ['failover', 'store1', ...remote], command: 'failover', says: /^mailfront failover: missing SLOT\n\n/ },
    { args: ['maintenance', 'store2', ...remote], command: 'maintenance', says: /^mailfront maintenance: missing on or off\n\n/ },
    { args: ['maintenance', 'store2', 'maybe', ...remote], command: 'maintenance', says: /^mailfront maintenance: expected on or off, found "maybe"\n\n/ },
    { args: ['kick', ...remote], command: 'kick', says: /^mailfront kick: give USER, --slot SLOT or --session ID\n\n/ },
    { args: ['unthrottle', ...remote], command: 'unthrottle', says: /^mailfront unthrottle: missing USER or ADDRESS\n\n/ },
    { args: ['stores', ...remote, '-c'], command: 'stores', says: /argument missing/ },
    { args: ['stores', '--json=1', ...remote], command: 'stores', says: /--json/ },
    { args: ['whereis', 'alice', 'bob', ...remote], command: 'whereis', says: /unexpected argument "bob"/ },
    { args: ['failover', 'store1', 'a2', 'a3', ...remote], command: 'failover', says: /unexpected argument "a3"/ },
    { args: ['reload', 'now', ...remote], command: 'reload', says: /unexpected argument "now"/ },
    { args: ['check-config', '/nonexistent/a.yaml', '-c', '/nonexistent/b.yaml'], command: 'check-config', says: /not both \("\/nonexistent\/a\.yaml" and "\/nonexistent\/b\.yaml"\)/ },
    // Options of other commands: kick --user alice --slot a2 closed every session on a2.
    { args: ['kick', '--user', 'alice', '--slot', 'a2', ...remote], command: 'kick', says: /--user is not an option of this command/ },
    { args: ['kick', 'alice', '--store', 's1', ...remote], command: 'kick', says: /--store is not an option of this command/ },
    { args: ['sessions', '--session', 'x', ...remote], command: 'sessions', says: /--session is not an option/ },
    { args: ['serve', '--json', '--url', 'http://127.0.0.1:9'], command: 'serve', says: /--json, --url are not options of this command/ },
  ];
  for (const { args, command, says } of cases) {
    const result = await cli(args);
    assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, says, args.join(' '));
    assert.ok(result.stderr.includes(`Usage: mailfront ${command} `), `${args.join(' ')}: ${result.stderr}`);
    assert.equal(result.stdout, '');
  }
});

test('the help names what the commands print and take: stores\' host and preferred columns, kick\'s --session', async () => {
  const stores = await cli(['stores', '--help']);
  assert.equal(stores.code, 0);
  // Every column of the table (STORE SLOT HOST ROLE PREFERRED HEALTH SESSIONS) is described, in order.
  assert.match(stores.stdout.replace(/\s+/g, ' '), /One line per slot: store, slot, host, master or replica, whether it is the store's preferred master, health, sessions\./);
  const main = await cli(['--help']);
  const kick = /^ {2}kick .*(?:\n {20,}.*)*/m.exec(main.stdout)?.[0] ?? '';
  for (const selector of ['USER', '--slot SLOT', '--session ID']) assert.ok(kick.includes(selector), `the kick line names ${selector}: ${kick}`);
});

test('an admin API that takes the request and does not answer in time is told apart from one out of reach: exit 3, and the reload may still be running', async () => {
  // Accepts, reads the request, never answers (a reload slow to read an LDAP store map).
  const requests: string[] = [];
  const server = createServer((req) => void requests.push(`${req.method} ${req.url}`));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // The CLI's 30 s wait, thirty times shorter: 1 s for its connection and request to reach the
  // server (at a hundred times shorter, 300 ms, two suites at once on two cores once left the
  // request unseen here).
  const shorter = `const timeout = AbortSignal.timeout.bind(AbortSignal); AbortSignal.timeout = (ms) => timeout(ms / 30);`;
  const nodeOptions = ['--import', `data:text/javascript,${encodeURIComponent(shorter)}`];
  try {
    const reload = await cli(['reload', '--url', url, '--token', 'x'], { nodeOptions });
    assert.equal(reload.code, 3, reload.stderr);
    assert.equal(reload.stderr, `mailfront: no answer from the admin API at ${url} within 30 s; the reload may still be running: see the log (config.reloaded, or config.rejected)\n`);
    // The request may be read here after the CLI's exit is: this process reads both.
    for (const end = Date.now() + 5_000; requests.length === 0 && Date.now() < end; ) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(requests, ['POST /api/reload']);
    const stores = await cli(['stores', '--url', url, '--token', 'x'], { nodeOptions });
    assert.equal(stores.code, 3, stores.stderr);
    assert.equal(stores.stderr, `mailfront: no answer from the admin API at ${url} within 30 s\n`);
  } finally {
    server.closeAllConnections();
    server.close();
  }
  // Nothing listening: out of reach, status 1, as before. (Not the port just let go of: another
  // test file running at the same time may draw it meanwhile, and listen on it or connect from it.)
  const refused = await cli(['reload', '--url', `http://127.0.0.1:${await refusingPort()}`, '--token', 'x'], { nodeOptions });
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, /^mailfront: cannot reach the admin API at http:\/\/127\.0\.0\.1:\d+: connect ECONNREFUSED/);
});

test('`mailfront stores` prints the table of a map of 50,000 stores of 3 slots (150,000 rows), columns aligned', async () => {
  const STORES = 50_000;
  const slots = (i: number): unknown[] =>
    [0, 1, 2].map((j) => ({ slot: `sl${i}x${j}`, host: '127.0.0.1', ports: { imap: 22001 + j }, master: j === 0, health: 'up', sessions: 0 }));
  const answer = JSON.stringify({
    version: 9,
    stores: Array.from({ length: STORES }, (_, i) => ({ store: `st${i}`, currentMaster: `sl${i}x0`, preferredMaster: `sl${i}x0`, backwards: false, sessions: 0, slots: slots(i) })),
  });
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(answer);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const stores = await cli(['stores', '--url', `http://127.0.0.1:${(server.address() as AddressInfo).port}`, '--token', 'x']);
    assert.equal(stores.stderr, '');
    assert.equal(stores.code, 0);
    const lines = stores.stdout.split('\n');
    assert.equal(lines[0], 'store map version 9');
    assert.equal(lines.length, 2 + STORES * 3 + 1, 'the version, the header, a line per slot and the final newline');
    // The widest names (st49999, sl49999x2), the last rows', set their columns' widths.
    assert.equal(lines[1], 'STORE    SLOT       HOST       ROLE     PREFERRED  HEALTH  SESSIONS');
    assert.equal(lines[2], 'st0      sl0x0      127.0.0.1  master   yes        up      0');
    assert.equal(lines.at(-2), 'st49999  sl49999x2  127.0.0.1  replica             up      0');
  } finally {
    server.close();
  }
});
