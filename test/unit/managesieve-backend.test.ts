import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MAX_BACKEND_DIALOGUE_BYTES, MAX_BACKEND_DIALOGUE_RESPONSES, MAX_BACKEND_RESPONSE_BYTES } from '../../src/limits.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { backendTrace, BACKEND_DEFAULTS, runBackend, TLS, type Phase } from './managesieve-harness.js';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

// Greetings as the real servers send them (captured from Dovecot 2.3.19 Pigeonhole and Cyrus 3.6.1).
const DOVECOT_CAPS = [
  '"IMPLEMENTATION" "Dovecot (Debian) Pigeonhole"',
  '"SIEVE" "fileinto reject envelope encoded-character vacation subaddress comparator-i;ascii-numeric relational regex imap4flags copy include variables body enotify environment mailbox date index ihave duplicate mime foreverypart extracttext"',
  '"NOTIFY" "mailto"',
  '"SASL" "PLAIN LOGIN"',
  '"STARTTLS"',
  '"VERSION" "1.0"',
];
const dovecotGreeting = (extra: string[] = []): string => [...DOVECOT_CAPS, ...extra, 'OK "slot ready."'].map((l) => `${l}\r\n`).join('');
const CYRUS_GREETING = [
  '"IMPLEMENTATION" "Cyrus timsieved 3.6.1-Debian-3.6.1-4+deb12u5"',
  '"VERSION" "1.0"',
  '"SASL" "PLAIN LOGIN"',
  '"SIEVE" "encoded-character comparator-i;ascii-numeric fileinto reject ereject vacation"',
  '"NOTIFY" "mailto"',
  '"EXTLISTS" "urn:ietf:params:sieve:addrbook"',
  '"UNAUTHENTICATE"',
  'OK',
]
  .map((l) => `${l}\r\n`)
  .join('');

const authenticate = (authzid: string, authcid: string, password: string): string => `send AUTHENTICATE "PLAIN" "${b64(`${authzid}\0${authcid}\0${password}`)}"\r\n`;
const FORWARD = { ip: '192.0.2.7', port: 50123, sessionId: 'a1b2c3d4e5f6' };

describe('managesieve backend login: the three login modes', () => {
  it('replay: SASL PLAIN with the user\'s own credentials, then done without capabilities', () => {
    const trace = backendTrace({}, [dovecotGreeting(), 'OK "Logged in."\r\n']);
    assert.deepEqual(trace, [authenticate('', 'alice', 'secret'), 'done ', 'state done']);
  });

  it('master-user: Dovecot\'s "user*master" with the master password, and another separator', () => {
    const options = { mode: 'master-user', proxyUser: 'proxy', proxyPassword: 'master-pw' } as const;
    assert.deepEqual(backendTrace(options, [dovecotGreeting(), 'OK "Logged in."\r\n']), [authenticate('', 'alice*proxy', 'master-pw'), 'done ', 'state done']);
    assert.deepEqual(backendTrace({ ...options, masterUserSeparator: '%' }, [dovecotGreeting(), 'OK\r\n'])[0], authenticate('', 'alice%proxy', 'master-pw'));
  });

  it('tells the session whether the greeting offered UNAUTHENTICATE (Cyrus does, Dovecot not), after STARTTLS from the re-sent list', () => {
    assert.deepEqual(backendTrace({}, [CYRUS_GREETING, 'OK\r\n']).at(-2), 'done UNAUTHENTICATE');
    assert.deepEqual(backendTrace({}, [dovecotGreeting(), 'OK\r\n']).at(-2), 'done ');
    const tls = (after: string): string[] => backendTrace({ starttls: true }, [dovecotGreeting(), 'OK\r\n', TLS, after, 'OK\r\n']);
    assert.equal(tls(dovecotGreeting(['"UNAUTHENTICATE"'])).at(-2), 'done UNAUTHENTICATE');
    assert.equal(backendTrace({ starttls: true }, [dovecotGreeting(['"UNAUTHENTICATE"']), 'OK\r\n', TLS, dovecotGreeting(), 'OK\r\n']).at(-2), 'done ', 'what the greeting said before TLS is forgotten');
    // The adapter guards the first, not the second; unknown (null) is guarded.
    assert.notEqual(managesieveAdapter.createCommandGuard?.('UNAUTHENTICATE'), null);
    assert.equal(managesieveAdapter.createCommandGuard?.(''), null);
    assert.notEqual(managesieveAdapter.createCommandGuard?.(null), null);
  });

  it('sasl-authzid: authzid = the user, authcid = the proxy account (Cyrus proxyservers)', () => {
    const trace = backendTrace({ mode: 'sasl-authzid', proxyUser: 'proxyadmin', proxyPassword: 'proxy-pw' }, [CYRUS_GREETING, 'OK\r\n']);
    assert.deepEqual(trace, [authenticate('alice', 'proxyadmin', 'proxy-pw'), 'done UNAUTHENTICATE', 'state done']);
  });

  it('an initial response longer than a quoted string may be (1024 octets) goes as a {N+} literal', () => {
    const password = 'p'.repeat(900);
    const response = b64(`\0alice\0${password}`);
    const trace = backendTrace({ password }, [dovecotGreeting(), 'OK\r\n']);
    assert.equal(trace[0], `send AUTHENTICATE "PLAIN" {${response.length}+}\r\n${response}\r\n`);
  });

  it('relays bytes the backend sent after its OK', () => {
    const trace = backendTrace({}, [dovecotGreeting(), 'OK "Logged in."\r\n"early" "bird"\r\n', 'OK\r\n']);
    assert.deepEqual(trace.slice(-2), ['state done', 'leftover "early" "bird"\r\nOK\r\n']);
  });
});

describe('managesieve backend login: refusals', () => {
  it('a NO without a code is a refused login; the backend\'s text is kept for the log only', () => {
    assert.deepEqual(backendTrace({}, [CYRUS_GREETING, 'NO "Authentication Error"\r\n']).slice(1), ['fail auth-failed authenticate: NO Authentication Error', 'state failed']);
  });

  it('TRYLATER, ENCRYPT-NEEDED and a BYE are the fleet\'s trouble', () => {
    assert.equal(backendTrace({}, [dovecotGreeting(), 'NO (TRYLATER) "Account is temporarily unavailable."\r\n'])[1], 'fail unavailable authenticate: NO (TRYLATER) Account is temporarily unavailable.');
    assert.equal(backendTrace({}, [dovecotGreeting(), 'no (encrypt-needed) "TLS first"\r\n'])[1], 'fail unavailable authenticate: NO (ENCRYPT-NEEDED) TLS first');
    assert.equal(backendTrace({}, [dovecotGreeting(), 'BYE "Server shutting down."\r\n'])[1], 'fail unavailable authenticate: BYE Server shutting down.');
  });

  it('a NO text sent as a literal is read whole', () => {
    assert.equal(backendTrace({}, [dovecotGreeting(), 'NO {11}\r\nbad\r\nnews!\r\n'])[1], 'fail auth-failed authenticate: NO bad news!');
  });

  it('a greeting NO or BYE fails before anything is sent', () => {
    assert.deepEqual(backendTrace({}, ['"IMPLEMENTATION" "x"\r\nBYE "Too many connections"\r\n']), ['fail unavailable greeting: BYE Too many connections', 'state failed']);
    assert.deepEqual(backendTrace({}, ['NO\r\n']), ['fail unavailable greeting: NO', 'state failed']);
  });

  it('a backend without SASL PLAIN is unavailable', () => {
    const trace = backendTrace({}, ['"IMPLEMENTATION" "x"\r\n"SASL" ""\r\n"STARTTLS"\r\nOK\r\n']);
    assert.deepEqual(trace, ['fail unavailable greeting: the backend does not offer SASL PLAIN here (it offers ""): if it takes no password on a connection without TLS, set backend.tls to starttls or implicit', 'state failed']);
  });

  it('a challenge after the initial response is nonsense for PLAIN', () => {
    assert.equal(backendTrace({}, [dovecotGreeting(), '""\r\n'])[1], 'fail unavailable authenticate: unexpected SASL challenge');
  });

  it('credentials that cannot be sent safely never leave, and a proxy mode needs its account', () => {
    assert.deepEqual(backendTrace({ password: 'pw\r\nLOGOUT' }, [dovecotGreeting()]), ['fail auth-failed greeting: credentials with unsafe characters', 'state failed']);
    assert.deepEqual(backendTrace({ user: 'al\0ice' }, [dovecotGreeting()]), ['fail auth-failed greeting: credentials with unsafe characters', 'state failed']);
    assert.deepEqual(backendTrace({ mode: 'sasl-authzid' }, [CYRUS_GREETING]), ['fail unavailable greeting: login mode sasl-authzid needs a proxy user and password', 'state failed']);
  });

  it('a response over the bound fails, however it arrives', () => {
    const long = `"IMPLEMENTATION" "${'x'.repeat(MAX_BACKEND_RESPONSE_BYTES)}"\r\nOK\r\n`;
    assert.deepEqual(backendTrace({}, [long]), ['fail unavailable backend response too long', 'state failed']);
    // Fewer lines than a dialogue may hold (MAX_BACKEND_DIALOGUE_RESPONSES), each well under the bound.
    const many = `${`"X-CAP" "${'0123456789'.repeat(100)}"\r\n`.repeat(Math.ceil(MAX_BACKEND_RESPONSE_BYTES / 1000))}OK\r\n`;
    assert.deepEqual(backendTrace({}, [many]), ['fail unavailable backend response too long', 'state failed']);
    assert.deepEqual(backendTrace({}, ['"SIEVE" {99999999999}\r\n']), ['fail unavailable unreadable backend response (literal-too-big)', 'state failed']);
  });
});

describe('managesieve backend login: the bound of the whole dialogue', () => {
  const whole = (b: Uint8Array): Uint8Array[] => [b];

  it('a capability list of more lines than a dialogue may hold fails, though its bytes are few', () => {
    const lines = Array.from({ length: MAX_BACKEND_DIALOGUE_RESPONSES }, (_, i) => `"X-CAP${i}" "v"`);
    assert.deepEqual(runBackend({}, [dovecotGreeting(lines), 'OK\r\n'], whole), [
      `fail unavailable greeting: more than ${MAX_BACKEND_DIALOGUE_RESPONSES} lines in the login dialogue`,
      'state failed',
    ]);
  });

  it('responses each under the bound of one fail once the dialogue passes its bound in bytes', () => {
    // Every status line starts the bound of one response again: greeting, STARTTLS's reply,
    // the capabilities after TLS and XCLIENT's reply, each of 60 KiB, then the AUTHENTICATE's.
    const text = (n: number): string => 'x'.repeat(n);
    const capabilities = (extra: string[]): string => dovecotGreeting(['"XCLIENT"', ...extra]);
    const padding = Array.from({ length: 20 }, (_, i) => `"X-PAD${i}" "${text(3000)}"`);
    const phases: Phase[] = [
      capabilities(padding),
      `OK "${text(60_000)}"\r\n`,
      TLS,
      capabilities(padding).replace('"STARTTLS"\r\n', ''),
      `OK "${text(60_000)}"\r\n`,
      `OK "${text(30_000)}"\r\n`,
    ];
    assert.deepEqual(runBackend({ starttls: true, forward: FORWARD }, phases, whole).slice(-2), [
      `fail unavailable authenticate: login dialogue longer than ${MAX_BACKEND_DIALOGUE_BYTES} bytes`,
      'state failed',
    ]);
  });

  it('the real servers\' dialogues stay far inside it', () => {
    assert.deepEqual(runBackend({ starttls: true }, [dovecotGreeting(), 'OK "Begin TLS negotiation now."\r\n', TLS, dovecotGreeting().replace('"STARTTLS"\r\n', ''), 'OK "Logged in."\r\n'], whole).slice(-2), ['done ', 'state done']);
    assert.deepEqual(runBackend({ mode: 'sasl-authzid', proxyUser: 'proxy', proxyPassword: 'pw' }, [CYRUS_GREETING, 'OK "Success"\r\n'], whole).slice(-2), ['done UNAUTHENTICATE', 'state done']);
  });
});

describe('managesieve backend login: STARTTLS and XCLIENT', () => {
  it('STARTTLS: bytes after the OK are dropped, the re-sent capabilities are read, then the login', () => {
    const trace = backendTrace({ starttls: true }, [
      dovecotGreeting(),
      'OK "Begin TLS negotiation now."\r\nOK "Logged in."\r\n',
      'OK "injected while handshaking"\r\n',
      TLS,
      dovecotGreeting().replace('"STARTTLS"\r\n', ''),
      'OK "Logged in."\r\n',
    ]);
    assert.deepEqual(trace, ['send STARTTLS\r\n', 'starttls', 'tls-started in tls-handshake', authenticate('', 'alice', 'secret'), 'done ', 'state done']);
  });

  it('STARTTLS asked for but not offered, or refused, fails', () => {
    assert.deepEqual(backendTrace({ starttls: true }, [CYRUS_GREETING]), ['fail unavailable greeting: the backend does not offer STARTTLS', 'state failed']);
    assert.deepEqual(backendTrace({ starttls: true }, [dovecotGreeting(), 'NO "TLS is not configured"\r\n']), ['send STARTTLS\r\n', 'fail unavailable starttls: NO TLS is not configured', 'state failed']);
  });

  it('XCLIENT forwards the client address where the backend offers it (Dovecot, to trusted networks)', () => {
    const trace = backendTrace({ forward: FORWARD }, [dovecotGreeting(['"XCLIENT"']), 'OK "Updated"\r\n', 'OK "Logged in."\r\n']);
    assert.deepEqual(trace, [`send XCLIENT ADDR=192.0.2.7 PORT=50123 SESSION=a1b2c3d4e5f6\r\n${authenticate('', 'alice', 'secret').slice(5)}`, 'done ', 'state done']);
  });

  it('a refused XCLIENT only costs the address; no XCLIENT where it is not offered or the values are unsafe', () => {
    assert.deepEqual(backendTrace({ forward: FORWARD }, [dovecotGreeting(['"XCLIENT"']), 'NO "Not trusted"\r\n', 'OK\r\n']).slice(1), ['done ', 'state done']);
    assert.deepEqual(backendTrace({ forward: FORWARD }, [dovecotGreeting(), 'OK\r\n'])[0], authenticate('', 'alice', 'secret'));
    assert.deepEqual(backendTrace({ forward: { ip: '1.2.3.4 SESSION=x', port: 1, sessionId: 's' } }, [dovecotGreeting(['"XCLIENT"']), 'OK\r\n'])[0], authenticate('', 'alice', 'secret'));
    assert.equal(backendTrace({ forward: { ip: '::1', port: 70000, sessionId: 'bad id' } }, [dovecotGreeting(['"XCLIENT"'])])[0], 'send XCLIENT ADDR=::1\r\n');
  });

  it('says the login went out once AUTHENTICATE did, not while greeting, in STARTTLS or waiting for XCLIENT\'s answer', () => {
    const tls = managesieveAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, starttls: true });
    tls.receive(Buffer.from(dovecotGreeting()));
    assert.equal(tls.state, 'starttls');
    assert.equal(tls.loginSent, false);
    tls.receive(Buffer.from('OK "Begin TLS negotiation now."\r\n'));
    tls.tlsStarted();
    assert.equal(tls.loginSent, false);
    tls.receive(Buffer.from(dovecotGreeting().replace('"STARTTLS"\r\n', '')));
    assert.equal(tls.state, 'authenticate');
    assert.equal(tls.loginSent, true);
    const forwarding = managesieveAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, forward: FORWARD });
    assert.equal(forwarding.loginSent, false);
    // XCLIENT goes out alone and is answered before AUTHENTICATE is sent (IMAP's ID and POP3's
    // XCLIENT share the login's write): a close before its answer is no answer to a login.
    const sent = forwarding.receive(Buffer.from(dovecotGreeting(['"XCLIENT"'])));
    assert.deepEqual(sent.map((a) => a.type === 'send' && Buffer.from(a.data).toString('latin1')), ['XCLIENT ADDR=192.0.2.7 PORT=50123 SESSION=a1b2c3d4e5f6\r\n']);
    assert.equal(forwarding.state, 'xclient');
    assert.equal(forwarding.loginSent, false);
    forwarding.receive(Buffer.from('OK "Updated"\r\n'));
    assert.equal(forwarding.state, 'authenticate');
    assert.equal(forwarding.loginSent, true);
  });

  it('names its state for the logs and ignores input once finished', () => {
    const machine = managesieveAdapter.createBackendLogin(BACKEND_DEFAULTS);
    assert.equal(machine.state, 'greeting');
    machine.receive(Buffer.from(dovecotGreeting()));
    assert.equal(machine.state, 'authenticate');
    assert.deepEqual(machine.tlsStarted(), []);
    machine.receive(Buffer.from('OK\r\n'));
    assert.equal(machine.state, 'done');
    assert.deepEqual(machine.receive(Buffer.from('OK\r\n')), []);
  });
});
