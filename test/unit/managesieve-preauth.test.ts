import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MAX_AUTH_ATTEMPTS, MAX_BAD_COMMANDS, MAX_LINE_BYTES, MAX_PIPELINED_HELD_BYTES, MAX_PREAUTH_COMMANDS, MAX_PREAUTH_LITERAL_BYTES } from '../../src/limits.js';
import { managesieveAdapter, PREAUTH_SIEVE_EXTENSIONS } from '../../src/protocol/managesieve/index.js';
import type { LoginRefusal, PreauthOptions } from '../../src/protocol/types.js';
import { PLAIN_PORT, preauthTrace, TLS, wire } from './managesieve-harness.js';

const IMPLICIT_TLS: Partial<PreauthOptions> = { tlsActive: true, starttlsAvailable: false };
const TRUSTED: Partial<PreauthOptions> = { plaintextWithoutTls: true };
const NOTHING: Partial<PreauthOptions> = { starttlsAvailable: false };

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const plain = (user: string, password: string, authzid = ''): string => b64(`${authzid}\0${user}\0${password}`);

function caps(o: { sasl: boolean; starttls: boolean }): string {
  return [
    '"IMPLEMENTATION" "mailfront"',
    `"SASL" "${o.sasl ? 'PLAIN LOGIN' : ''}"`,
    `"SIEVE" "${PREAUTH_SIEVE_EXTENSIONS.join(' ')}"`,
    '"NOTIFY" "mailto"',
    ...(o.starttls ? ['"STARTTLS"'] : []),
    '"VERSION" "1.0"',
  ]
    .map((l) => `${l}\r\n`)
    .join('');
}

const GREETING_4190 = `send ${caps({ sasl: false, starttls: true })}OK "mailfront ready"\r\n`;
const GREETING_TLS = `send ${caps({ sasl: true, starttls: false })}OK "mailfront ready"\r\n`;
const GREETING_TRUSTED = `send ${caps({ sasl: true, starttls: true })}OK "mailfront ready"\r\n`;
const login = (user: string, password: string, mechanism = 'PLAIN', authzid?: string): string =>
  `login ${JSON.stringify(authzid === undefined ? { user, password, mechanism } : { user, password, authzid, mechanism })}`;
const hasLogin = (trace: readonly string[]): boolean => trace.some((e) => e.startsWith('login '));

describe('managesieve preauth: greeting and capabilities (RFC 5804 §1.7)', () => {
  it('greets with the capability list and OK; before TLS it offers STARTTLS and no SASL mechanism', () => {
    assert.deepEqual(preauthTrace({ phases: [] }), [GREETING_4190]);
  });

  it('offers PLAIN and LOGIN but not STARTTLS under implicit TLS', () => {
    assert.deepEqual(preauthTrace({ options: IMPLICIT_TLS, phases: [] }), [GREETING_TLS]);
  });

  it('offers PLAIN, LOGIN and STARTTLS where plaintext is allowed', () => {
    assert.deepEqual(preauthTrace({ options: TRUSTED, phases: [] }), [GREETING_TRUSTED]);
  });

  it('offers neither mechanisms nor STARTTLS when neither is possible', () => {
    assert.deepEqual(preauthTrace({ options: NOTHING, phases: [] }), [`send ${caps({ sasl: false, starttls: false })}OK "mailfront ready"\r\n`]);
  });

  it('keeps a hostile greeting text on one quoted line', () => {
    const machine = managesieveAdapter.createPreauth({ ...PLAIN_PORT, greetingText: 'ready\r\nOK "x" \\' });
    const [action] = machine.greeting();
    assert.equal(action?.type, 'send');
    assert.ok(action?.type === 'send' && action.data.endsWith('OK "ready OK \\"x\\" \\\\"\r\n'));
  });

  it('answers CAPABILITY with the same list, and refuses arguments', () => {
    const trace = preauthTrace({ phases: ['CAPABILITY\r\ncapability\nCAPABILITY "x"\r\n'] });
    const list = caps({ sasl: false, starttls: true });
    assert.deepEqual(trace, [`${GREETING_4190}${list}OK "Capability completed."\r\n${list}OK "Capability completed."\r\nNO "CAPABILITY takes no arguments."\r\n`]);
  });

  it('answers NOOP, echoing its string in a TAG response code (RFC 5804 §2.13), as a literal when it must', () => {
    const trace = preauthTrace({ options: TRUSTED, phases: ['NOOP\r\nNOOP "sync-42"\r\nNOOP {4+}\r\na\r\nb\r\nNOOP "ünï"\r\nNOOP "a" "b"\r\n'] });
    assert.equal(
      wire(trace).slice(GREETING_TRUSTED.length - 5),
      'OK "Done"\r\nOK (TAG "sync-42") "Done"\r\nOK (TAG {4}\r\na\r\nb) "Done"\r\nOK (TAG "ünï") "Done"\r\nNO "NOOP takes one string argument at most."\r\n',
    );
  });

  it('LOGOUT answers OK and closes', () => {
    assert.deepEqual(preauthTrace({ phases: ['LOGOUT\r\nNOOP\r\n'] }), [`${GREETING_4190}OK "Logout completed."\r\n`, 'close logout']);
  });
});

describe('managesieve preauth: STARTTLS (RFC 5804 §2.2)', () => {
  it('re-sends the capabilities after the handshake, now with mechanisms and without STARTTLS', () => {
    const trace = preauthTrace({ phases: ['STARTTLS\r\n', TLS, 'CAPABILITY\r\n'] });
    const after = caps({ sasl: true, starttls: false });
    assert.deepEqual(trace, [
      `${GREETING_4190}OK "Begin TLS negotiation now."\r\n`,
      'starttls',
      'tls-started',
      `send ${after}OK "TLS negotiation successful."\r\n${after}OK "Capability completed."\r\n`,
    ]);
  });

  it('never executes commands that arrived with STARTTLS or before the handshake (injection)', () => {
    const injected = `STARTTLS\r\nAUTHENTICATE "PLAIN" "${plain('alice', 'pw')}"\r\nLOGOUT\r\n`;
    const trace = preauthTrace({ options: TRUSTED, phases: [injected, 'NOOP\r\nLOGOUT\r\n', TLS, 'NOOP\r\n'] });
    assert.equal(hasLogin(trace), false);
    assert.ok(!trace.includes('close logout'));
    assert.deepEqual(trace.slice(1), ['starttls', 'tls-started', `send ${caps({ sasl: true, starttls: false })}OK "TLS negotiation successful."\r\nOK "Done"\r\n`]);
  });

  it('refuses STARTTLS under TLS and where it is not offered', () => {
    assert.equal(wire(preauthTrace({ options: IMPLICIT_TLS, phases: ['STARTTLS\r\n'] })).endsWith('NO "TLS is already active."\r\n'), true);
    assert.equal(wire(preauthTrace({ options: NOTHING, phases: ['STARTTLS\r\n'] })).endsWith('NO "STARTTLS is not available."\r\n'), true);
    assert.equal(wire(preauthTrace({ phases: ['STARTTLS x\r\n'] })).endsWith('NO "STARTTLS takes no arguments."\r\n'), true);
  });
});

describe('managesieve preauth: AUTHENTICATE (RFC 5804 §2.1)', () => {
  it('PLAIN with an initial response as a quoted string, a {N+} literal and a {N} literal', () => {
    const ir = plain('alice', 'p w"\\');
    for (const command of [`AUTHENTICATE "PLAIN" "${ir}"\r\n`, `Authenticate "plain" {${ir.length}+}\r\n${ir}\r\n`, `AUTHENTICATE {5}\r\nPLAIN {${ir.length}}\r\n${ir}\r\n`]) {
      const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [command] });
      assert.deepEqual(trace, [GREETING_TLS, login('alice', 'p w"\\'), 'send NO "Authentication failed."\r\n'], command);
    }
  });

  it('keeps a non-empty authzid', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [`AUTHENTICATE "PLAIN" "${plain('alice', 'pw', 'admin')}"\r\n`] });
    assert.equal(trace[1], login('alice', 'pw', 'PLAIN', 'admin'));
  });

  it('PLAIN without an initial response: an empty challenge, then the response as a string or literal', () => {
    const ir = plain('alice', 'pw');
    for (const response of [`"${ir}"\r\n`, `{${ir.length}+}\r\n${ir}\r\n`]) {
      const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [`AUTHENTICATE "PLAIN"\r\n${response}`] });
      assert.deepEqual(trace, [`${GREETING_TLS}""\r\n`, login('alice', 'pw'), 'send NO "Authentication failed."\r\n']);
    }
  });

  it('LOGIN: username and password challenges, with or without the user name as initial response', () => {
    const stepwise = preauthTrace({ options: IMPLICIT_TLS, phases: [`AUTHENTICATE "LOGIN"\r\n"${b64('alice')}"\r\n{${b64('pw pw').length}+}\r\n${b64('pw pw')}\r\n`] });
    assert.deepEqual(stepwise, [`${GREETING_TLS}"VXNlcm5hbWU6"\r\n"UGFzc3dvcmQ6"\r\n`, login('alice', 'pw pw', 'SASL-LOGIN'), 'send NO "Authentication failed."\r\n']);
    const withIr = preauthTrace({ options: IMPLICIT_TLS, phases: [`AUTHENTICATE "LOGIN" "${b64('alice')}"\r\n"${b64('pw')}"\r\n`] });
    assert.deepEqual(withIr, [`${GREETING_TLS}"UGFzc3dvcmQ6"\r\n`, login('alice', 'pw', 'SASL-LOGIN'), 'send NO "Authentication failed."\r\n']);
  });

  it('a client cancels with "*" and gets NO; commands work afterwards', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['AUTHENTICATE "PLAIN"\r\n"*"\r\nAUTHENTICATE "LOGIN"\r\n"*"\r\nNOOP\r\n'] });
    assert.deepEqual(trace, [`${GREETING_TLS}""\r\nNO "Authentication cancelled."\r\n"VXNlcm5hbWU6"\r\nNO "Authentication cancelled."\r\nOK "Done"\r\n`]);
  });

  it('refuses malformed SASL responses with NO, counted as bad commands', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['AUTHENTICATE "PLAIN" "not base64!"\r\nAUTHENTICATE "PLAIN"\r\nNOOP\r\nAUTHENTICATE "PLAIN" ""\r\n'] });
    assert.equal(hasLogin(trace), false);
    assert.equal(wire(trace).slice(GREETING_TLS.length - 5), 'NO "Invalid SASL response."\r\n""\r\nNO "Invalid SASL response."\r\nNO "Invalid SASL response."\r\n');
  });

  it('refuses CR, LF and NUL inside decoded credentials without a login, as a failed login', () => {
    const trace = preauthTrace({
      options: IMPLICIT_TLS,
      phases: [`AUTHENTICATE "PLAIN" "${plain('alice', 'pw\r\nLOGOUT')}"\r\nAUTHENTICATE "PLAIN" "${plain('al\nice', 'pw')}"\r\nAUTHENTICATE "LOGIN" "${b64('alice')}"\r\n"${b64('p\0w')}"\r\nNOOP\r\n`],
    });
    assert.equal(hasLogin(trace), false);
    assert.ok(MAX_AUTH_ATTEMPTS === 3);
    assert.deepEqual(trace, [`${GREETING_TLS}NO "Authentication failed."\r\nNO "Authentication failed."\r\n"UGFzc3dvcmQ6"\r\nNO "Authentication failed."\r\nBYE "Too many failed login attempts."\r\n`, 'close limit']);
  });

  it('refuses an empty password without asking anyone', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [`AUTHENTICATE "PLAIN" "${plain('alice', '')}"\r\n`] });
    assert.deepEqual(trace, [`${GREETING_TLS}NO "Authentication failed."\r\n`]);
  });

  it('refuses plaintext mechanisms without TLS with ENCRYPT-NEEDED, before reading any credentials', () => {
    const trace = preauthTrace({ phases: [`AUTHENTICATE "PLAIN" "${plain('alice', 'pw')}"\r\nAUTHENTICATE "LOGIN"\r\n`] });
    assert.equal(hasLogin(trace), false);
    const refusal = 'NO (ENCRYPT-NEEDED) "Plaintext authentication is not allowed without TLS."\r\n';
    assert.deepEqual(trace, [`${GREETING_4190}${refusal}${refusal}`]);
  });

  it('refuses other mechanisms and malformed arguments', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['AUTHENTICATE "DIGEST-MD5"\r\nAUTHENTICATE\r\nAUTHENTICATE "PLAIN" "a" "b"\r\n'] });
    assert.equal(wire(trace).slice(GREETING_TLS.length - 5), 'NO "Unsupported authentication mechanism."\r\nNO "Syntax error in AUTHENTICATE."\r\nNO "Syntax error in AUTHENTICATE."\r\n');
  });

  it('a SASL response that is not one string ends the exchange', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['AUTHENTICATE "PLAIN"\r\nNOOP\r\nNOOP\r\n'] });
    assert.equal(wire(trace).slice(GREETING_TLS.length - 5), '""\r\nNO "Invalid SASL response."\r\nOK "Done"\r\n');
  });
});

describe('managesieve preauth: login outcomes', () => {
  const authenticate = `AUTHENTICATE "PLAIN" "${plain('alice', 'pw')}"\r\n`;

  it('success answers a bare OK (no capabilities without a security layer) and forwards pipelined commands untouched', () => {
    const pipelined = 'PUTSCRIPT "s" {9+}\r\nkeep;\r\n\r\nLISTSCRIPTS\r\n';
    const trace = preauthTrace({ options: TRUSTED, phases: [authenticate + pipelined, 'LOGOUT\r\n'], logins: [{ ok: true }] });
    assert.deepEqual(trace, [GREETING_TRUSTED, login('alice', 'pw'), 'send OK "Logged in."\r\n', `forward ${pipelined}LOGOUT\r\n`]);
  });

  it('auth-failed is one fixed text; temporary failures carry TRYLATER; the next command is read afterwards', () => {
    const refusals = [
      { ok: false, refusal: 'auth-failed', text: 'ignored: the user does not exist' },
      { ok: false, refusal: 'unavailable', text: 'Your mail server is temporarily unavailable.' },
    ] as const;
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [`${authenticate}NOOP\r\n${authenticate}NOOP\r\n`], logins: refusals });
    assert.deepEqual(trace, [
      GREETING_TLS,
      login('alice', 'pw'),
      'send NO "Authentication failed."\r\nOK "Done"\r\n',
      login('alice', 'pw'),
      'send NO (TRYLATER) "Your mail server is temporarily unavailable."\r\nOK "Done"\r\n',
    ]);
  });

  it('limit and in-use are temporary too, with default texts', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [authenticate + authenticate], logins: [{ ok: false, refusal: 'limit' }, { ok: false, refusal: 'in-use', text: 'line\r\nbreak' }] });
    assert.equal(
      wire(trace).slice(GREETING_TLS.length - 5),
      'NO (TRYLATER) "Too many login attempts or connections, please try again later."\r\nNO (TRYLATER) "line break"\r\n',
    );
  });

  it('a login refused for its name (not-authorized) gets a plain NO', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [authenticate], logins: [{ ok: false, refusal: 'not-authorized' }] });
    assert.equal(wire(trace).slice(GREETING_TLS.length - 5), 'NO "Authorization failed."\r\n');
  });

  it(`closes after ${MAX_AUTH_ATTEMPTS} failed logins`, () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [authenticate.repeat(4)] });
    assert.equal(trace.filter((e) => e.startsWith('login ')).length, MAX_AUTH_ATTEMPTS);
    assert.deepEqual(trace.slice(-2), ['send NO "Authentication failed."\r\nBYE "Too many failed login attempts."\r\n', 'close limit']);
  });

  it('does not count temporary failures (an outage, a locked mailbox) towards that limit', () => {
    const logins = [{ ok: false, refusal: 'unavailable' }, { ok: false, refusal: 'in-use' }, { ok: false, refusal: 'unavailable' }, { ok: false, refusal: 'unavailable' }] as const;
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [authenticate.repeat(4)], logins });
    assert.equal(trace.filter((e) => e.startsWith('login ')).length, 4, 'every login was tried');
    assert.ok(!trace.some((e) => e.startsWith('close')), 'the connection stays open');
  });

  it('input past MAX_PIPELINED_HELD_BYTES while the login is pending ends the connection (a session that reads on although the input is full)', () => {
    const flood = `NOOP "${'x'.repeat(1000)}"\r\n`.repeat(Math.ceil(MAX_PIPELINED_HELD_BYTES / 1000) + 2);
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [authenticate + flood], respond: 'at-end' });
    assert.deepEqual(trace, [GREETING_TLS, login('alice', 'pw'), 'send BYE "Too much input while logging in."\r\n', 'close limit']);
  });
});

describe('managesieve preauth: hostile and broken input', () => {
  it('refuses unknown and after-login commands with NO; a refused command\'s literal is never read as commands', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['FOO\r\nPUTSCRIPT "s" {8+}\r\nLOGOUT\r\n\r\nNOOP\r\n'] });
    assert.deepEqual(trace, [`${GREETING_TLS}NO "Unknown command."\r\nNO "Authenticate first."\r\nOK "Done"\r\n`]);
  });

  it(`closes after ${MAX_BAD_COMMANDS} bad commands`, () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['FOO\r\n'.repeat(MAX_BAD_COMMANDS + 2)] });
    assert.deepEqual(trace, [`${GREETING_TLS}${'NO "Unknown command."\r\n'.repeat(MAX_BAD_COMMANDS)}BYE "Too many invalid commands."\r\n`, 'close protocol-error']);
  });

  it(`closes after ${MAX_PREAUTH_COMMANDS} commands`, () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['NOOP\r\n'.repeat(MAX_PREAUTH_COMMANDS + 3)] });
    assert.deepEqual(trace, [`${GREETING_TLS}${'OK "Done"\r\n'.repeat(MAX_PREAUTH_COMMANDS)}BYE "Too many commands before login."\r\n`, 'close limit']);
  });

  it('closes at once, without a word, on HTTP and SMTP', () => {
    for (const line of ['GET / HTTP/1.1\r\nHost: x\r\n\r\n', 'POST /form HTTP/1.1\r\n', 'EHLO mail.example\r\n', 'helo x\r\n']) {
      assert.deepEqual(preauthTrace({ options: IMPLICIT_TLS, phases: [line] }), [GREETING_TLS, 'close protocol-error'], line);
    }
    assert.deepEqual(preauthTrace({ options: IMPLICIT_TLS, phases: ['NOOP\r\nPOST / HTTP/1.1\r\n'] }), [`${GREETING_TLS}OK "Done"\r\n`, 'close protocol-error']);
    // HTTP methods are case-sensitive: "get" is just an unknown command.
    assert.equal(wire(preauthTrace({ options: IMPLICIT_TLS, phases: ['get x\r\n'] })).endsWith('NO "Unknown command."\r\n'), true);
  });

  it('an overlong line ends the connection, whether or not its end has arrived', () => {
    for (const line of [`NOOP "${'x'.repeat(MAX_LINE_BYTES)}"\r\nLOGOUT\r\n`, `NOOP ${'x'.repeat(MAX_LINE_BYTES + 10)}`]) {
      assert.deepEqual(preauthTrace({ options: IMPLICIT_TLS, phases: [line] }), [`${GREETING_TLS}BYE "Line too long."\r\n`, 'close limit']);
    }
    // A line of exactly the bound is fine.
    const exact = `NOOP "${'x'.repeat(MAX_LINE_BYTES - 9)}"\r\n`;
    assert.equal(Buffer.byteLength(exact), MAX_LINE_BYTES);
    assert.ok(wire(preauthTrace({ options: IMPLICIT_TLS, phases: [exact] })).endsWith(' "Done"\r\n'));
  });

  it('an oversized literal ends the connection and its bytes are never read as commands', () => {
    for (const marker of ['{4294967296+}', '{4294967296}', `{${MAX_PREAUTH_LITERAL_BYTES + 1}+}`, '{99999999999999999999999}']) {
      const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [`AUTHENTICATE "PLAIN" ${marker}\r\nLOGOUT\r\nNOOP\r\n`] });
      assert.deepEqual(trace, [`${GREETING_TLS}BYE "Literal too big."\r\n`, 'close limit'], marker);
    }
    // Only a bearer mechanism's AUTHENTICATE literals, with oauth2, may be longer (oauth-preauth.test.ts); any other command's too are bounded.
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [`NOOP {${MAX_PREAUTH_LITERAL_BYTES + 1}+}\r\nLOGOUT\r\nNOOP\r\n`] });
    assert.deepEqual(trace, [`${GREETING_TLS}BYE "Literal too big."\r\n`, 'close limit']);
    // At the bound the literal is read as the argument it is.
    const atBound = 'x'.repeat(MAX_PREAUTH_LITERAL_BYTES);
    const echoed = wire(preauthTrace({ options: IMPLICIT_TLS, phases: [`NOOP {${atBound.length}+}\r\n${atBound}\r\n`] }));
    assert.ok(echoed.endsWith(`OK (TAG {${atBound.length}}\r\n${atBound}) "Done"\r\n`));
  });

  it('a rejected line that announces a literal ends the connection (nginx\'s rule)', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['NOOP "unterminated {8+}\r\nLOGOUT\r\n\r\n'] });
    assert.deepEqual(trace, [`${GREETING_TLS}BYE "Invalid command with literal data."\r\n`, 'close protocol-error']);
  });

  it('refuses empty lines, stray CRs, NULs and invalid UTF-8 with NO', () => {
    const invalid = Buffer.concat([Buffer.from('NOOP "'), Buffer.from([0xc3, 0x28]), Buffer.from('"\r\nNOOP {2+}\r\n'), Buffer.from([0xff, 0xfe]), Buffer.from('\r\n')]);
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: ['\r\nNO\rOP\r\nNOOP "a\0b"\r\n', invalid] });
    assert.equal(
      wire(trace).slice(GREETING_TLS.length - 5),
      'NO "Empty command line."\r\nNO "Syntax error."\r\nNO "NUL characters are not allowed."\r\nNO "Strings must be valid UTF-8."\r\nNO "Strings must be valid UTF-8."\r\nBYE "Too many invalid commands."\r\n',
    );
  });

  it('accepts bare LF line ends', () => {
    const trace = preauthTrace({ options: IMPLICIT_TLS, phases: [`NOOP\nAUTHENTICATE "PLAIN" "${plain('alice', 'pw')}"\n`] });
    assert.deepEqual(trace, [`${GREETING_TLS}OK "Done"\r\n`, login('alice', 'pw'), 'send NO "Authentication failed."\r\n']);
  });
});

describe('managesieve preauth: deadlines, shutdown and drain', () => {
  it('timeout and shutdown say BYE and close; after login they do nothing', () => {
    const machine = managesieveAdapter.createPreauth(PLAIN_PORT);
    assert.deepEqual(machine.timedOut(), [{ type: 'send', data: 'BYE "No login within the time allowed."\r\n' }, { type: 'close', reason: 'timeout' }]);
    assert.deepEqual(machine.shuttingDown(), []);
    const other = managesieveAdapter.createPreauth(PLAIN_PORT);
    assert.deepEqual(other.shuttingDown(), [{ type: 'send', data: 'BYE (TRYLATER) "Server shutting down."\r\n' }, { type: 'close', reason: 'shutdown' }]);
    const loggedIn = managesieveAdapter.createPreauth({ ...PLAIN_PORT, tlsActive: true });
    loggedIn.receive(Buffer.from(`AUTHENTICATE "PLAIN" "${plain('alice', 'pw')}"\r\n`));
    loggedIn.loginSucceeded(null);
    assert.deepEqual(loggedIn.timedOut(), []);
    assert.deepEqual(loggedIn.receive(Buffer.from('NOOP\r\n')), []);
  });

  it('at the deadline, a login pending is answered as the session decided it (TRYLATER if undecided), then BYE; nothing pipelined behind it runs', () => {
    const timedOutWith = (refusal?: LoginRefusal, text?: string) => {
      const machine = managesieveAdapter.createPreauth({ ...PLAIN_PORT, ...TRUSTED });
      machine.greeting();
      assert.deepEqual(machine.receive(Buffer.from(`AUTHENTICATE "PLAIN" "${plain('alice', 'pw')}"\r\nLOGOUT\r\n`)).map((action) => action.type), ['login']);
      const out = machine.timedOut(refusal, text);
      assert.deepEqual(machine.receive(Buffer.from('CAPABILITY\r\n')), []);
      return out;
    };
    const answered = (line: string) => [{ type: 'send', data: `${line}\r\nBYE "No login within the time allowed."\r\n` }, { type: 'close', reason: 'timeout' }];
    assert.deepEqual(timedOutWith('auth-failed'), answered('NO "Authentication failed."'));
    assert.deepEqual(timedOutWith('limit', 'Too many sessions.'), answered('NO (TRYLATER) "Too many sessions."'));
    assert.deepEqual(timedOutWith(), answered('NO (TRYLATER) "Temporary failure, please try again later."'));
  });

  it('at shutdown, a login refused already is answered so, then BYE; one undecided is answered by that BYE alone (RFC 5804 §4: BYE ends a command); nothing pipelined behind it runs', () => {
    const shutDownWith = (refusal?: LoginRefusal, text?: string) => {
      const machine = managesieveAdapter.createPreauth({ ...PLAIN_PORT, ...TRUSTED });
      machine.greeting();
      assert.deepEqual(machine.receive(Buffer.from(`AUTHENTICATE "PLAIN" "${plain('alice', 'pw')}"\r\nLOGOUT\r\n`)).map((action) => action.type), ['login']);
      const out = machine.shuttingDown(refusal, text);
      assert.deepEqual(machine.receive(Buffer.from('CAPABILITY\r\n')), []);
      assert.deepEqual(machine.shuttingDown(), [], 'said once');
      return out;
    };
    const answered = (line: string) => [{ type: 'send', data: `${line}BYE (TRYLATER) "Server shutting down."\r\n` }, { type: 'close', reason: 'shutdown' }];
    assert.deepEqual(shutDownWith('auth-failed'), answered('NO "Authentication failed."\r\n'));
    assert.deepEqual(shutDownWith('limit', 'Too many sessions.'), answered('NO (TRYLATER) "Too many sessions."\r\n'));
    assert.deepEqual(shutDownWith(), answered(''));
  });

  it('loginSucceeded outside a pending login is a bug', () => {
    assert.throws(() => managesieveAdapter.createPreauth(PLAIN_PORT).loginSucceeded(null));
    assert.deepEqual(managesieveAdapter.createPreauth(PLAIN_PORT).loginFailed('auth-failed'), []);
  });

  it('the drain notice is a BYE with TRYLATER on one line', () => {
    assert.equal(managesieveAdapter.drainNotice('Mailbox moved to another server, please reconnect'), 'BYE (TRYLATER) "Mailbox moved to another server, please reconnect"\r\n');
    assert.equal(managesieveAdapter.drainNotice('a\r\nOK "b"'), 'BYE (TRYLATER) "a OK \\"b\\""\r\n');
  });
});
