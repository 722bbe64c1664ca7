/**
 * The client's own IMAP ID reaches the backend (backend.forward_client_id), against real Dovecots
 * that log every ID they are sent (imap_id_log = *): its name and version after mailfront's
 * x-originating-ip, x-originating-port and x-session-id; never a field a backend believes only
 * from a trusted proxy (a spoofed x-originating-ip, x-forward-*); values with quotes, backslashes
 * and UTF-8 (sent by the client quoted or as a literal) as the client sent them, the login after
 * them unharmed; past 512 bytes or 27 pairs, the rest left out; an ID sent before STARTTLS
 * forgotten, one sent after it (imapflow's) forwarded; the option off; a backend that does not
 * list ID (imap_capability without it) sent none.
 */
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { after, before, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, sessionIdOf, startFront } from './front.js';
import type { Front, FrontOptions } from './front.js';

const PASSWORDS = { alice: 'Alice-idfwd-pw-4c1e', bob: 'Bob-idfwd-pw-8e2a' };
registerPasswords(...Object.values(PASSWORDS));

let slapd: Slapd;
/** Lists ID (Dovecot's default capabilities). */
let dovecot: Dovecot;
/** Lists no ID (imap_capability without it). */
let noId: Dovecot;

before(async () => {
  [slapd, dovecot, noId] = await Promise.all([
    startSlapd({
      users: [
        { uid: 'alice', password: PASSWORDS.alice, store: 'store1' },
        { uid: 'bob', password: PASSWORDS.bob, store: 'store2' },
      ],
    }),
    startDovecot({ name: 'idfwd', users: [{ name: 'alice', password: PASSWORDS.alice }], extraConfig: ['imap_id_log = *'] }),
    startDovecot({ name: 'idfwd-noid', users: [{ name: 'bob', password: PASSWORDS.bob }], extraConfig: ['imap_id_log = *', 'imap_capability = IMAP4rev1 SASL-IR LITERAL+ IDLE'] }),
  ]);
});

after(async () => {
  await Promise.all([slapd?.stop(), dovecot?.stop(), noId?.stop()]);
});

function front(options: Partial<FrontOptions> = {}): Promise<Front> {
  return startFront({
    slapd,
    stores: {
      store1: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort } } },
      store2: { currentMaster: 's2', slots: { s2: { imapPort: noId.imapPort } } },
    },
    ...options,
  });
}

/** The lines of a Dovecot's log its login process wrote: "ID sent: …" and "Login: …". */
async function loginProcessLines(backend: Dovecot): Promise<string[]> {
  return (await backend.readLog()).split('\n').filter((l) => l.includes(' imap-login: '));
}

/**
 * What Dovecot's login process logged of mailfront's session `session` (Dovecot takes
 * x-session-id for its own session id): the ID it was sent, its fields in order as "key=value",
 * and the Login line's rip; waits for the Login line.
 */
async function backendSaw(backend: Dovecot, session: string): Promise<{ id: string | undefined; rip: string }> {
  for (let i = 0; i < 100; i++) {
    const lines = await loginProcessLines(backend);
    const login = lines.find((l) => l.includes(' Login: ') && l.includes(`session=<${session}>`));
    if (login !== undefined) {
      const id = lines.find((l) => l.includes(' ID sent: ') && l.includes(`session=<${session}>`));
      return { id: id === undefined ? undefined : /ID sent: (.*): user=<>/.exec(id)?.[1], rip: /\brip=([0-9a-f.:]+)/.exec(login)?.[1] ?? '' };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${backend.name} logged no login of session ${session}:\n${(await backend.readLog()).split('\n').slice(-20).join('\n')}`);
}

/** The ID Dovecot's login process logged with `needle` in it; waits for it. */
async function idLogged(backend: Dovecot, needle: string): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const line = (await loginProcessLines(backend)).find((l) => l.includes(' ID sent: ') && l.includes(needle));
    if (line !== undefined) return /ID sent: (.*): user=<>/.exec(line)?.[1] ?? line;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${backend.name} logged no ID with ${needle}:\n${(await backend.readLog()).split('\n').slice(-20).join('\n')}`);
}

/**
 * On the webmail listener: sends `commands` (raw, each ending in CRLF, with its tag first) and
 * expects each answered `statuses[i]` (OK by default), logs in as `user` and out; the session id.
 */
async function loginAfter(on: Front, user: keyof typeof PASSWORDS, commands: readonly string[], statuses: readonly string[] = []): Promise<string> {
  const mark = on.logs.length;
  const client = await LineClient.connect(on.imapTrustedPort);
  try {
    await client.readLine();
    const session = await sessionIdOf(on, client.socket.localPort!, mark);
    for (const [i, command] of commands.entries()) {
      client.write(Buffer.from(command, 'utf8'));
      const answer = await client.imapResult(command.slice(0, command.indexOf(' ')));
      assert.equal(answer.status, statuses[i] ?? 'OK', `${command.slice(0, 80)}: ${answer.text}`);
    }
    const login = await client.imap(`LOGIN ${user} "${PASSWORDS[user]}"`);
    assert.equal(login.status, 'OK', login.text);
    // Spliced to the backend: the framing of the ID left the LOGIN and what follows intact.
    assert.equal((await client.imap('SELECT INBOX')).status, 'OK');
    assert.equal((await client.imap('LOGOUT')).status, 'OK');
    return session;
  } finally {
    client.close();
  }
}

test("the client's name, version and os reach the backend after mailfront's own fields", async () => {
  const on = await front();
  try {
    const session = await loginAfter(on, 'alice', ['a ID ("name" "Thunderbird" "version" "128.3" "os" "Linux")\r\n']);
    const seen = await backendSaw(dovecot, session);
    assert.match(seen.id ?? '', new RegExp(`^x-originating-ip=127\\.0\\.0\\.1, x-originating-port=\\d+, x-session-id=${session}, name=Thunderbird, version=128\\.3, os=Linux$`));
    // Only the last ID before login counts (as Dovecot's proxy does), and ID NIL takes it back.
    const last = await loginAfter(on, 'alice', ['a ID ("name" "Earlier" "os" "Linux")\r\n', 'b ID ("name" "Later")\r\n']);
    assert.equal((await backendSaw(dovecot, last)).id?.replace(/^.*x-session-id=\S+?(, |$)/, ''), 'name=Later');
    const taken = await loginAfter(on, 'alice', ['a ID ("name" "Earlier")\r\n', 'b ID NIL\r\n']);
    assert.match((await backendSaw(dovecot, taken)).id ?? '', new RegExp(`x-session-id=${taken}$`));
  } finally {
    await on.stop();
  }
});

test('a client names no address, session or passdb field to the backend through mailfront; a trusted webmail\'s address is forwarded once', async () => {
  const untrusted = await front();
  try {
    const session = await loginAfter(untrusted, 'alice', [
      'a ID ("X-Originating-IP" "203.0.113.9" "x-originating-port" "4444" "x-connected-ip" "198.51.100.1" "x-connected-port" "1" ' +
        '"X-SESSION-ID" "spoofed-session" "x-session-ext-id" "spoofed-ext" "x-proxy-ttl" "1" "x-forward-master_user" "spoof-forward" ' +
        '"x-client-transport" "TLS" "x-multiplex" "0" "name" "Spoofer")\r\n',
    ]);
    const seen = await backendSaw(dovecot, session);
    assert.equal(seen.rip, '127.0.0.1', 'the address mailfront saw, not the claimed one');
    assert.match(seen.id ?? '', new RegExp(`^x-originating-ip=127\\.0\\.0\\.1, x-originating-port=\\d+, x-session-id=${session}, name=Spoofer$`));
    for (const spoof of ['203.0.113.9', '4444', '198.51.100.1', 'spoofed', 'x-forward', 'x-proxy-ttl', 'x-client-transport', 'x-multiplex']) assert.ok(!seen.id?.includes(spoof), `${spoof} in ${seen.id}`);
  } finally {
    await untrusted.stop();
  }
  const webmail = await front({ trustedNetworks: ['127.0.0.0/8'] });
  try {
    const session = await loginAfter(webmail, 'alice', ['a ID ("x-originating-ip" "192.0.2.44" "x-originating-port" "51000" "name" "Roundcube" "version" "1.6.9")\r\n']);
    const seen = await backendSaw(dovecot, session);
    assert.equal(seen.rip, '192.0.2.44');
    assert.equal(seen.id, `x-originating-ip=192.0.2.44, x-originating-port=51000, x-session-id=${session}, name=Roundcube, version=1.6.9`);
  } finally {
    await webmail.stop();
  }
});

test('quotes, backslashes, empty and UTF-8 values (quoted or literal from the client) reach the backend as sent, the login after them intact', async () => {
  const on = await front();
  try {
    const literal = 'Grüße aus Köln ✓ 日本語';
    const session = await loginAfter(on, 'alice', [
      `a ID ("name" "Mail \\"Pro\\" \\\\ Edition" "version" "1.0 (beta) {5} )" "os" NIL "vendor" "" "os-version" "Ümlaut 🙂" "support-url" {${Buffer.byteLength(literal)}+}\r\n${literal})\r\n`,
    ]);
    const seen = await backendSaw(dovecot, session);
    // Dovecot's log shows each value as it parsed it; a NIL value is left out (Cyrus closes the connection on one).
    assert.match(seen.id ?? '', new RegExp(`x-session-id=${session}, name=Mail "Pro" \\\\ Edition, version=1\\.0 \\(beta\\) \\{5\\} \\), vendor=, os-version=Ümlaut 🙂, support-url=${literal}$`));
  } finally {
    await on.stop();
  }
});

test('past 512 bytes or 27 pairs the rest is left out; an ID over the RFC\'s bounds is refused and changes nothing', async () => {
  const on = await front();
  try {
    // Each pair is 108 bytes as sent: four fit in 512, the fifth and later do not, the last, short, does.
    const long = Array.from({ length: 29 }, (_, i) => `"f${String(i + 1).padStart(2, '0')}" "${String.fromCharCode(97 + (i % 26)).repeat(100)}"`);
    const session = await loginAfter(on, 'alice', [`a ID (${long.join(' ')} "name" "Small")\r\n`]);
    const seen = await backendSaw(dovecot, session);
    const fields = (seen.id ?? '').split(', ').map((pair) => pair.slice(0, pair.indexOf('=')));
    assert.deepEqual(fields, ['x-originating-ip', 'x-originating-port', 'x-session-id', 'f01', 'f02', 'f03', 'f04', 'name']);
    // 30 pairs: 27 go, with mailfront's three the 30 RFC 2971 allows.
    const many = await loginAfter(on, 'alice', [`a ID (${Array.from({ length: 30 }, (_, i) => `"k${i}" "v"`).join(' ')})\r\n`]);
    assert.equal((await backendSaw(dovecot, many)).id?.replace(/^.*x-session-id=\S+?, /, ''), Array.from({ length: 27 }, (_, i) => `k${i}=v`).join(', '));
    // 31 pairs, a value of 1025 bytes: BAD (RFC 2971 §3.3), and the ID before them stands.
    const pairs31 = Array.from({ length: 31 }, (_, i) => `"k${i}" "v"`).join(' ');
    const refused = await loginAfter(on, 'alice', ['a ID ("name" "Kept")\r\n', `b ID (${pairs31})\r\n`, `c ID ("name" "${'x'.repeat(1025)}")\r\n`], ['OK', 'BAD', 'BAD']);
    assert.match((await backendSaw(dovecot, refused)).id ?? '', /, name=Kept$/);
  } finally {
    await on.stop();
  }
});

/** Reads CRLF lines from a socket (plain, then TLS) until one starts with `prefix`. */
function lineReader(): { feed(socket: TLSSocket | import('node:net').Socket): void; until(prefix: string): Promise<string> } {
  let buffer = '';
  let wake: (() => void) | undefined;
  return {
    feed(socket) {
      socket.on('data', (chunk: Buffer) => {
        buffer += chunk.toString('utf8');
        wake?.();
      });
    },
    async until(prefix) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const lines = buffer.split('\r\n');
        const index = lines.findIndex((l) => l.startsWith(prefix));
        if (index >= 0) {
          buffer = lines.slice(index + 1).join('\r\n');
          return lines[index]!;
        }
        if (Date.now() > deadline) throw new Error(`no line starting with ${prefix}: ${buffer}`);
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
    },
  };
}

test('an ID sent before STARTTLS is forgotten, one sent after it is forwarded; imapflow\'s over implicit TLS is forwarded', async () => {
  const on = await front();
  try {
    const login = async (before: string, afterTls: string): Promise<string> => {
      const mark = on.logs.length;
      const plain = netConnect({ host: '127.0.0.1', port: on.imapPort });
      const reader = lineReader();
      reader.feed(plain);
      await reader.until('* OK');
      const session = await sessionIdOf(on, await new Promise<number>((r) => (plain.localPort !== undefined ? r(plain.localPort) : plain.once('connect', () => r(plain.localPort!)))), mark);
      plain.write(`a ID (${before})\r\nb STARTTLS\r\n`);
      assert.match(await reader.until('b '), /^b OK/);
      plain.removeAllListeners('data');
      const tls = tlsConnect({ socket: plain, ca: on.caPem, servername: 'localhost' });
      await new Promise<void>((resolve, reject) => tls.once('secureConnect', resolve).once('error', reject));
      const secure = lineReader();
      secure.feed(tls);
      if (afterTls !== '') {
        tls.write(`c ID (${afterTls})\r\n`);
        assert.match(await secure.until('c '), /^c OK/);
      }
      tls.write(`d LOGIN alice "${PASSWORDS.alice}"\r\n`);
      assert.match(await secure.until('d '), /^d OK/);
      tls.write('e LOGOUT\r\n');
      await secure.until('e ');
      tls.destroy();
      return session;
    };
    const forgotten = await login('"name" "Injected" "version" "0.0"', '');
    assert.match((await backendSaw(dovecot, forgotten)).id ?? '', new RegExp(`x-session-id=${forgotten}$`));
    const kept = await login('"name" "Injected"', '"name" "AfterTLS"');
    assert.match((await backendSaw(dovecot, kept)).id ?? '', /, name=AfterTLS$/);

    const client = new ImapFlow({
      host: '127.0.0.1',
      port: on.imapsPort,
      secure: true,
      tls: { ca: on.caPem, servername: 'localhost' },
      auth: { user: 'alice', pass: PASSWORDS.alice },
      clientInfo: { name: 'imapflow-idfwd', version: '9.9.9' },
      logger: false,
    });
    await client.connect();
    await client.logout();
    assert.match(await idLogged(dovecot, 'name=imapflow-idfwd'), /^x-originating-ip=127\.0\.0\.1, x-originating-port=\d+, x-session-id=\S+, name=imapflow-idfwd, version=9\.9\.9, vendor=Postal Systems, support-url=https:\/\/github\.com\/postalsys\/imapflow\/issues$/);
  } finally {
    await on.stop();
  }
});

test('forward_client_id sends the client\'s ID alone when forward_client_address is off, and nothing of it when off itself', async () => {
  const alone = await front({ backend: { forward_client_address: false } });
  try {
    await loginAfter(alone, 'alice', ['a ID ("name" "Alone-7f3" "version" "2")\r\n']);
    assert.equal(await idLogged(dovecot, 'name=Alone-7f3'), 'name=Alone-7f3, version=2');
  } finally {
    await alone.stop();
  }
  const off = await front({ backend: { forward_client_id: false } });
  try {
    const session = await loginAfter(off, 'alice', ['a ID ("name" "Thunderbird" "version" "128.3")\r\n']);
    assert.match((await backendSaw(dovecot, session)).id ?? '', new RegExp(`^x-originating-ip=127\\.0\\.0\\.1, x-originating-port=\\d+, x-session-id=${session}$`));
  } finally {
    await off.stop();
  }
});

test('a backend that does not list ID is sent none, and the login goes on', async () => {
  const on = await front();
  try {
    await loginAfter(on, 'bob', ['a ID ("name" "Thunderbird" "version" "128.3")\r\n']);
    let lines: string[] = [];
    for (let i = 0; i < 100 && !lines.some((l) => l.includes('Login: user=<bob>')); i++) {
      await new Promise((r) => setTimeout(r, 50));
      lines = await loginProcessLines(noId);
    }
    assert.ok(lines.some((l) => l.includes('Login: user=<bob>')), 'bob logged in');
    assert.deepEqual(lines.filter((l) => l.includes('ID sent')), []);
  } finally {
    await on.stop();
  }
});
