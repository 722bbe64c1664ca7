import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  MAX_AUTHENTICATE_LINE_BYTES,
  MAX_AUTH_ATTEMPTS,
  MAX_BAD_COMMANDS,
  MAX_LINE_BYTES,
  MAX_PIPELINED_BYTES,
  MAX_PIPELINED_HELD_BYTES,
  MAX_PREAUTH_COMMANDS,
} from '../../src/limits.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import type { LoginRefusal, PreauthOptions } from '../../src/protocol/types.js';
import { bytewise, preauthEverySplit, runPreauth, sent, TLS, whole, type Event } from './pop3-harness.js';

const greetingText = 'mailfront ready';
/** A plain listener that offers STLS and wants TLS before credentials: the usual port 110. */
const PORT_110: PreauthOptions = { tlsActive: false, starttlsAvailable: true, plaintextWithoutTls: false, greetingText };
/** Implicit TLS (port 995). */
const PORT_995: PreauthOptions = { tlsActive: true, starttlsAvailable: false, plaintextWithoutTls: false, greetingText };
/** Implicit TLS with oauth2 set: OAUTHBEARER and XOAUTH2 offered. */
const PORT_995_OAUTH: PreauthOptions = { ...PORT_995, oauth: true };
/** A listener for a webmail server on a trusted network: plaintext allowed, STLS offered. */
const TRUSTED: PreauthOptions = { tlsActive: false, starttlsAvailable: true, plaintextWithoutTls: true, greetingText };
/** No certificate and no plaintext: nobody can log in, and nothing claims otherwise. */
const NOTHING: PreauthOptions = { tlsActive: false, starttlsAvailable: false, plaintextWithoutTls: false, greetingText };

const GREETING: Event = { send: '+OK mailfront ready\r\n' };
const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const capa = (...lines: string[]): Event => ({ send: ['+OK Capability list follows', ...lines, '.'].join('\r\n') + '\r\n' });
// TOP and UIDL are the backend's, listed before login as Dovecot and Cyrus list them (Thunderbird reads them there).
const COMMON_CAPS = ['TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING'];
const login = (user: string, password: string, mechanism: string, authzid?: string): Event => ({
  login: authzid === undefined ? { user, password, mechanism } : { user, password, authzid, mechanism },
});
const hasLogin = (events: readonly Event[]): boolean => events.some((e) => 'login' in e);

describe('pop3 preauth: greeting and CAPA', () => {
  it('greets with +OK and the configured text, without an APOP timestamp', () => {
    assert.deepEqual(pop3Adapter.createPreauth(PORT_110).greeting(), [{ type: 'send', data: '+OK mailfront ready\r\n' }]);
  });

  it('keeps a greeting text with line breaks on one line', () => {
    const machine = pop3Adapter.createPreauth({ ...PORT_110, greetingText: 'ready\r\n+OK fake' });
    assert.deepEqual(machine.greeting(), [{ type: 'send', data: '+OK ready +OK fake\r\n' }]);
  });

  it('offers STLS but no credentials on a plain port that requires TLS', () => {
    const events = preauthEverySplit(PORT_110, ['CAPA\r\n']);
    assert.deepEqual(events, [GREETING, capa('STLS', ...COMMON_CAPS)]);
  });

  it('offers USER and SASL but not STLS under implicit TLS', () => {
    const events = preauthEverySplit(PORT_995, ['capa\r\n']);
    assert.deepEqual(events, [GREETING, capa('USER', 'SASL PLAIN LOGIN', ...COMMON_CAPS)]);
  });

  it('offers USER, SASL and STLS where plaintext is allowed', () => {
    const events = preauthEverySplit(TRUSTED, ['CAPA\r\n']);
    assert.deepEqual(events, [GREETING, capa('USER', 'SASL PLAIN LOGIN', 'STLS', ...COMMON_CAPS)]);
  });

  it('offers neither credentials nor STLS when neither is possible', () => {
    const events = preauthEverySplit(NOTHING, ['CAPA\r\n']);
    assert.deepEqual(events, [GREETING, capa(...COMMON_CAPS)]);
  });

  it('after STLS, offers credentials and no longer STLS', () => {
    const events = preauthEverySplit(PORT_110, ['CAPA\r\nSTLS\r\n', TLS, 'CAPA\r\n']);
    assert.deepEqual(events, [
      GREETING,
      capa('STLS', ...COMMON_CAPS),
      { send: '+OK Begin TLS negotiation\r\n' },
      { starttls: true },
      capa('USER', 'SASL PLAIN LOGIN', ...COMMON_CAPS),
    ]);
  });

  it('lists the SASL mechanisms for a bare AUTH, and none where plaintext is refused', () => {
    assert.deepEqual(preauthEverySplit(PORT_995, ['AUTH\r\n']), [GREETING, { send: '+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n' }]);
    assert.deepEqual(preauthEverySplit(PORT_110, ['AUTH\r\n']), [GREETING, { send: '+OK\r\n.\r\n' }]);
  });
});

describe('pop3 preauth: USER and PASS', () => {
  it('keeps every space of the password after the one separating space (RFC 1939 §7)', () => {
    const events = preauthEverySplit(PORT_995, ['USER alice\r\nPASS  my secret  pass \r\n']);
    assert.deepEqual(events, [GREETING, { send: '+OK\r\n' }, login('alice', ' my secret  pass ', 'USER-PASS')]);
  });

  it('takes commands in any case and bare LF line ends', () => {
    const events = preauthEverySplit(PORT_995, ['user alice\npass secret\n']);
    assert.deepEqual(events, [GREETING, { send: '+OK\r\n' }, login('alice', 'secret', 'USER-PASS')]);
  });

  it('refuses PASS without USER, and a USER without a name', () => {
    const events = preauthEverySplit(PORT_995, ['PASS secret\r\nUSER\r\nUSER \r\n']);
    assert.deepEqual(events, [
      GREETING,
      { send: '-ERR No user name given\r\n' },
      { send: '-ERR Missing user name\r\n' },
      { send: '-ERR Missing user name\r\n' },
    ]);
  });

  it('refuses an empty password without asking anyone', () => {
    const events = preauthEverySplit(PORT_995, ['USER alice\r\nPASS\r\nUSER alice\r\nPASS \r\n']);
    assert.deepEqual(events, [
      GREETING,
      { send: '+OK\r\n' },
      { send: '-ERR [AUTH] Authentication failed.\r\n' },
      { send: '+OK\r\n' },
      { send: '-ERR [AUTH] Authentication failed.\r\n' },
    ]);
  });

  it('refuses NUL and a bare CR inside USER or PASS', () => {
    const events = preauthEverySplit(PORT_995, ['USER al\0ice\r\nUSER alice\r\nPASS se\rcret\r\nUSER alice\r\nPASS a\0b\r\n']);
    assert.equal(hasLogin(events), false);
    assert.deepEqual(events, [
      GREETING,
      { send: '-ERR [AUTH] Invalid characters in user name\r\n' },
      { send: '+OK\r\n' },
      { send: '-ERR [AUTH] Invalid characters in credentials\r\n' },
      { send: '+OK\r\n' },
      { send: '-ERR [AUTH] Invalid characters in credentials\r\n' },
    ]);
  });

  it('refuses USER and PASS arguments that are not UTF-8 instead of altering them (two Latin-1 passwords would both become "p\ufffdss")', () => {
    const latin1 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'latin1'));
    const events = preauthEverySplit(PORT_995, [latin1('USER b\xf6b\r\nUSER bob\r\nPASS p\xe4ss\r\nPASS secret\r\n')]);
    assert.equal(hasLogin(events), false);
    assert.deepEqual(events, [
      GREETING,
      { send: '-ERR [AUTH] Invalid characters in user name\r\n' },
      { send: '+OK\r\n' },
      { send: '-ERR [AUTH] Invalid characters in credentials\r\n' },
      // The refused PASS used up the USER before it, as a refused login does.
      { send: '-ERR No user name given\r\n' },
    ]);
  });

  it('passes UTF-8 USER and PASS arguments on as they are', () => {
    const events = preauthEverySplit(PORT_995, ['USER b\u00f6b\r\nPASS p\u00e4ss \ufeff\r\n']);
    assert.deepEqual(events, [GREETING, { send: '+OK\r\n' }, login('b\u00f6b', 'p\u00e4ss \ufeff', 'USER-PASS')]);
  });

  it('refuses plaintext credentials on a non-secure connection with [AUTH]', () => {
    const refused = { send: '-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n' };
    const events = preauthEverySplit(PORT_110, [`USER alice\r\nPASS secret\r\nAUTH PLAIN ${b64('\0alice\0secret')}\r\nAUTH LOGIN\r\n`]);
    assert.deepEqual(events, [GREETING, refused, refused, refused, refused]);
  });

  it('allows plaintext without TLS where the listener says so', () => {
    const events = preauthEverySplit(TRUSTED, ['USER alice\r\nPASS secret\r\n']);
    assert.deepEqual(events, [GREETING, { send: '+OK\r\n' }, login('alice', 'secret', 'USER-PASS')]);
  });
});

describe('pop3 preauth: AUTH PLAIN and AUTH LOGIN (RFC 5034)', () => {
  it('takes PLAIN with an initial response', () => {
    const events = preauthEverySplit(PORT_995, [`AUTH PLAIN ${b64('\0alice\0pass word')}\r\n`]);
    assert.deepEqual(events, [GREETING, login('alice', 'pass word', 'PLAIN')]);
  });

  it('passes a non-empty authorization identity on', () => {
    const events = preauthEverySplit(PORT_995, [`auth plain ${b64('admin\0alice\0secret')}\r\n`]);
    assert.deepEqual(events, [GREETING, login('alice', 'secret', 'PLAIN', 'admin')]);
  });

  it('takes PLAIN with the response on a continuation line', () => {
    const events = preauthEverySplit(PORT_995, ['AUTH PLAIN\r\n', `${b64('\0alice\0secret')}\r\n`]);
    assert.deepEqual(events, [GREETING, { send: '+ \r\n' }, login('alice', 'secret', 'PLAIN')]);
  });

  it('reads "=" as an empty initial response, which PLAIN cannot use', () => {
    const events = preauthEverySplit(PORT_995, ['AUTH PLAIN =\r\n']);
    assert.deepEqual(events, [GREETING, { send: '-ERR Invalid SASL response\r\n' }]);
  });

  it('refuses bad base64 and a PLAIN message without two NULs', () => {
    const events = preauthEverySplit(PORT_995, ['AUTH PLAIN not*base64\r\n', `AUTH PLAIN ${b64('alice:secret')}\r\n`]);
    assert.deepEqual(events, [GREETING, { send: '-ERR Invalid SASL response\r\n' }, { send: '-ERR Invalid SASL response\r\n' }]);
  });

  it('never turns CR, LF or NUL in decoded PLAIN credentials into a login', () => {
    const script = [
      `AUTH PLAIN ${b64('\0alice\0secret\r\nDELE 1')}\r\n`,
      `AUTH PLAIN ${b64('\0ali\nce\0secret')}\r\n`,
      `AUTH PLAIN ${b64('\0alice\0sec\0ret')}\r\n`,
    ];
    const events = preauthEverySplit(PORT_995, script);
    assert.equal(hasLogin(events), false);
    assert.deepEqual(events, [
      GREETING,
      { send: '-ERR [AUTH] Invalid characters in credentials\r\n' },
      { send: '-ERR [AUTH] Invalid characters in credentials\r\n' },
      // A third NUL makes four fields: malformed rather than unsafe.
      { send: '-ERR Invalid SASL response\r\n' },
    ]);
  });

  it('refuses SASL credentials that are not UTF-8 instead of altering them (two Latin-1 passwords would both become "p\ufffdss")', () => {
    const latin1 = (text: string): string => Buffer.from(text, 'latin1').toString('base64');
    const script = [`AUTH PLAIN ${latin1('\0bob\0p\xe4ss')}\r\n`, `AUTH LOGIN ${latin1('b\xf6b')}\r\n`];
    const events = preauthEverySplit(PORT_995, script);
    assert.equal(hasLogin(events), false);
    assert.deepEqual(events, [GREETING, { send: '-ERR [AUTH] Invalid characters in credentials\r\n' }, { send: '-ERR [AUTH] Invalid characters in credentials\r\n' }]);
  });

  it('passes a password that starts with U+FEFF on as it is (a decoder would drop it as a byte-order mark)', () => {
    const events = preauthEverySplit(PORT_995, [`AUTH PLAIN ${b64('\0alice\0\ufeffsecret')}\r\n`]);
    assert.deepEqual(events, [GREETING, login('alice', '\ufeffsecret', 'PLAIN')]);
  });

  it('takes LOGIN with its two challenges', () => {
    const events = preauthEverySplit(PORT_995, ['AUTH LOGIN\r\n', `${b64('alice')}\r\n`, `${b64('s3cret pw')}\r\n`]);
    assert.deepEqual(events, [
      GREETING,
      { send: '+ VXNlcm5hbWU6\r\n' },
      { send: '+ UGFzc3dvcmQ6\r\n' },
      login('alice', 's3cret pw', 'SASL-LOGIN'),
    ]);
  });

  it('takes LOGIN with the user name as initial response', () => {
    const events = preauthEverySplit(PORT_995, [`AUTH LOGIN ${b64('alice')}\r\n${b64('secret')}\r\n`]);
    assert.deepEqual(events, [GREETING, { send: '+ UGFzc3dvcmQ6\r\n' }, login('alice', 'secret', 'SASL-LOGIN')]);
  });

  it('never turns NUL or CR in a LOGIN field into a login', () => {
    const events = preauthEverySplit(PORT_995, [`AUTH LOGIN ${b64('alice')}\r\n${b64('sec\0ret')}\r\nAUTH LOGIN ${b64('ali\rce')}\r\n`]);
    assert.equal(hasLogin(events), false);
    assert.deepEqual(events, [
      GREETING,
      { send: '+ UGFzc3dvcmQ6\r\n' },
      { send: '-ERR [AUTH] Invalid characters in credentials\r\n' },
      { send: '-ERR [AUTH] Invalid characters in credentials\r\n' },
    ]);
  });

  it('cancels on "*" at every step, and goes on reading commands', () => {
    const script = ['AUTH PLAIN\r\n*\r\n', `AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\n${b64('alice')}\r\n*\r\nCAPA\r\n`];
    const events = preauthEverySplit(PORT_995, script);
    const cancelled = { send: '-ERR Authentication cancelled\r\n' };
    assert.deepEqual(events, [
      GREETING,
      { send: '+ \r\n' },
      cancelled,
      { send: '+ VXNlcm5hbWU6\r\n' },
      cancelled,
      { send: '+ VXNlcm5hbWU6\r\n' },
      { send: '+ UGFzc3dvcmQ6\r\n' },
      cancelled,
      capa('USER', 'SASL PLAIN LOGIN', ...COMMON_CAPS),
    ]);
  });

  it('refuses other mechanisms and malformed AUTH lines', () => {
    const events = preauthEverySplit(PORT_995, ['AUTH CRAM-MD5\r\nAUTH PLAIN a b\r\nAUTH  PLAIN\r\n']);
    assert.deepEqual(events, [
      GREETING,
      { send: '-ERR Unsupported authentication mechanism\r\n' },
      { send: '-ERR Syntax error\r\n' },
      { send: '-ERR Syntax error\r\n' },
    ]);
  });
});

describe('pop3 preauth: STLS', () => {
  it('discards a USER and PASS smuggled after STLS in the same chunk', () => {
    // TRUSTED would accept USER/PASS in plaintext: only the discard keeps them from logging in.
    const events = preauthEverySplit(TRUSTED, ['STLS\r\nUSER mallory\r\nPASS evil\r\n', TLS, 'PASS evil\r\n']);
    assert.equal(hasLogin(events), false);
    assert.deepEqual(events, [
      GREETING,
      { send: '+OK Begin TLS negotiation\r\n' },
      { starttls: true },
      // The USER state was reset too: PASS alone is refused.
      { send: '-ERR No user name given\r\n' },
    ]);
  });

  it('discards bytes that arrive in later chunks before the handshake', () => {
    const events = preauthEverySplit(TRUSTED, ['STLS\r\n', 'USER mallory\r\n', 'PASS evil\r\n', TLS, 'USER alice\r\nPASS secret\r\n']);
    assert.deepEqual(events, [
      GREETING,
      { send: '+OK Begin TLS negotiation\r\n' },
      { starttls: true },
      { send: '+OK\r\n' },
      login('alice', 'secret', 'USER-PASS'),
    ]);
  });

  it('forgets a USER given before STLS', () => {
    const events = preauthEverySplit(TRUSTED, ['USER alice\r\nSTLS\r\n', TLS, 'PASS secret\r\n']);
    assert.deepEqual(events, [
      GREETING,
      { send: '+OK\r\n' },
      { send: '+OK Begin TLS negotiation\r\n' },
      { starttls: true },
      { send: '-ERR No user name given\r\n' },
    ]);
  });

  it('refuses STLS when not offered, when already in TLS, and with an argument', () => {
    assert.deepEqual(preauthEverySplit(NOTHING, ['STLS\r\n']), [GREETING, { send: '-ERR STLS not available\r\n' }]);
    assert.deepEqual(preauthEverySplit(PORT_995, ['STLS\r\n']), [GREETING, { send: '-ERR STLS not available\r\n' }]);
    assert.deepEqual(preauthEverySplit(PORT_110, ['STLS now\r\n']), [GREETING, { send: '-ERR Syntax error\r\n' }]);
    const twice = preauthEverySplit(PORT_110, ['STLS\r\n', TLS, 'STLS\r\n']);
    assert.deepEqual(twice.at(-1), { send: '-ERR STLS not available\r\n' });
  });

  it(`takes "STLS " with a trailing space, as Dovecot's pop3-login does`, () => {
    assert.deepEqual(preauthEverySplit(PORT_110, ['STLS \r\n']), [GREETING, { send: '+OK Begin TLS negotiation\r\n' }, { starttls: true }]);
  });

  it('ignores tlsStarted when no STLS is pending', () => {
    assert.deepEqual(pop3Adapter.createPreauth(PORT_110).tlsStarted(), []);
  });
});

describe('pop3 preauth: login results and pipelining', () => {
  it('returns the bytes pipelined after PASS exactly as received (RFC 2449 PIPELINING)', () => {
    const pipelined = 'STAT\r\nLIST\r\nRETR 1\r\nUIDL'; // the last command not yet complete
    const events = preauthEverySplit(PORT_995, [`USER alice\r\nPASS secret\r\n${pipelined}`, '\r\nQUIT\r\n'], [{ succeed: true }]);
    assert.deepEqual(events, [
      GREETING,
      { send: '+OK\r\n' },
      login('alice', 'secret', 'USER-PASS'),
      { reply: '+OK Logged in.\r\n' },
      { spliced: `${pipelined}\r\nQUIT\r\n` },
    ]);
  });

  it('returns the bytes pipelined after an AUTH exchange, bytes that are not UTF-8 included', () => {
    const machine = pop3Adapter.createPreauth(PORT_995);
    const input = Buffer.concat([Buffer.from(`AUTH PLAIN ${b64('\0alice\0secret')}\r\nRETR 1\r\n`), Buffer.from([0xff, 0x00, 0xfe])]);
    const actions = machine.receive(input);
    assert.equal(actions.length, 1);
    assert.equal(actions[0]?.type, 'login');
    assert.deepEqual(machine.receive(Buffer.from('TOP 1 0\r\n')), []);
    const success = machine.loginSucceeded(null);
    assert.equal(success.reply, '+OK Logged in.\r\n');
    assert.deepEqual(Buffer.from(success.pipelined), Buffer.from([...Buffer.from('RETR 1\r\n'), 0xff, 0x00, 0xfe, ...Buffer.from('TOP 1 0\r\n')]));
    assert.deepEqual(machine.receive(Buffer.from('STAT\r\n')), []);
  });

  it('goes on with the buffered commands after a failed login, with the USER forgotten', () => {
    const script = ['USER alice\r\nPASS wrong\r\nPASS right\r\nUSER alice\r\nPASS right\r\nSTAT\r\n'];
    const events = preauthEverySplit(PORT_995, script, [{ refuse: 'auth-failed', text: 'no such user alice' }, { succeed: true }]);
    assert.deepEqual(events, [
      GREETING,
      { send: '+OK\r\n' },
      login('alice', 'wrong', 'USER-PASS'),
      // One fixed text: whatever the session knows is not shown.
      { send: '-ERR [AUTH] Authentication failed.\r\n' },
      { send: '-ERR No user name given\r\n' },
      { send: '+OK\r\n' },
      login('alice', 'right', 'USER-PASS'),
      { reply: '+OK Logged in.\r\n' },
      { spliced: 'STAT\r\n' },
    ]);
  });

  it('answers each refusal with its RFC 2449/3206 response code', () => {
    const refuse = (refusal: 'unavailable' | 'limit' | 'in-use' | 'login-delay' | 'not-authorized', text?: string): string => {
      const machine = pop3Adapter.createPreauth(PORT_995);
      machine.receive(Buffer.from('USER alice\r\nPASS secret\r\n'));
      return sent(machine.loginFailed(refusal, text).map((a) => (a.type === 'send' ? { send: a.data } : { close: a.type })));
    };
    assert.equal(refuse('unavailable'), '-ERR [SYS/TEMP] Temporary failure, please wait and try again later.\r\n');
    assert.equal(refuse('unavailable', 'Directory unreachable\r\n+OK injected'), '-ERR [SYS/TEMP] Directory unreachable +OK injected\r\n');
    assert.equal(refuse('limit'), '-ERR [SYS/TEMP] Too many connections or login attempts, please wait and try again later.\r\n');
    assert.equal(refuse('in-use', "Couldn't open INBOX: Mailbox is locked"), "-ERR [IN-USE] Couldn't open INBOX: Mailbox is locked\r\n");
    assert.equal(refuse('in-use'), '-ERR [IN-USE] Mailbox is locked by another session.\r\n');
    // RFC 2449 §8.1.2: the client logged in too recently; fetchmail reads the code as "try later", not a bad password.
    assert.equal(refuse('login-delay'), '-ERR [LOGIN-DELAY] Logged in too recently, please wait and try again later.\r\n');
    // RFC 3206 §5: [AUTH]; one fixed text, whatever the session gives.
    assert.equal(refuse('not-authorized', 'x'), '-ERR [AUTH] Authorization failed.\r\n');
  });

  it(`closes after ${MAX_AUTH_ATTEMPTS} failed logins`, () => {
    const script = ['USER a\r\nPASS 1\r\n'.repeat(MAX_AUTH_ATTEMPTS + 1)];
    const refusals = Array.from({ length: MAX_AUTH_ATTEMPTS + 1 }, () => ({ refuse: 'auth-failed' as const }));
    const events = preauthEverySplit(PORT_995, script, refusals);
    assert.equal(events.filter((e) => 'login' in e).length, MAX_AUTH_ATTEMPTS);
    assert.deepEqual(events.slice(-2), [{ send: '-ERR [AUTH] Authentication failed.\r\n' }, { close: 'limit' }]);
  });

  it('does not count temporary failures (an outage, a locked mailbox, a login too soon) towards that limit', () => {
    const tries = MAX_AUTH_ATTEMPTS + 1;
    const script = ['USER a\r\nPASS 1\r\n'.repeat(tries)];
    const refusals = Array.from({ length: tries }, (_, i) => ({ refuse: (['unavailable', 'in-use', 'login-delay'] as const)[i % 3]! }));
    const events = preauthEverySplit(PORT_995, script, refusals);
    assert.equal(events.filter((e) => 'login' in e).length, tries, 'every login was tried');
    assert.ok(!events.some((e) => 'close' in e), 'the connection stays open');
  });

  it('counts an empty password as a failed login', () => {
    const events = preauthEverySplit(PORT_995, ['USER a\r\nPASS\r\n'.repeat(MAX_AUTH_ATTEMPTS + 1)]);
    assert.deepEqual(events.slice(-2), [{ send: '-ERR [AUTH] Authentication failed.\r\n' }, { close: 'limit' }]);
    assert.equal(events.filter((e) => 'send' in e && e.send === '+OK\r\n').length, MAX_AUTH_ATTEMPTS);
  });

  it('closes when fed past MAX_PIPELINED_HELD_BYTES during a login (a session that reads on although the input is full)', () => {
    const script = ['USER alice\r\nPASS secret\r\n', 'x'.repeat(MAX_PIPELINED_HELD_BYTES), 'y'];
    const events = preauthEverySplit(PORT_995, script, ['hold']);
    assert.deepEqual(events, [
      GREETING,
      { send: '+OK\r\n' },
      login('alice', 'secret', 'USER-PASS'),
      { send: '-ERR Too much input during login\r\n' },
      { close: 'limit' },
    ]);
  });

  it('buffers up to MAX_PIPELINED_HELD_BYTES during a login, full from MAX_PIPELINED_BYTES on', () => {
    const machine = pop3Adapter.createPreauth(PORT_995);
    machine.receive(Buffer.from(`USER alice\r\nPASS secret\r\n${'x'.repeat(MAX_PIPELINED_BYTES - 1)}`));
    assert.equal(machine.inputFull, false);
    machine.receive(Buffer.from('x'));
    assert.equal(machine.inputFull, true);
    const events = runPreauth(PORT_995, ['USER alice\r\nPASS secret\r\n', 'x'.repeat(MAX_PIPELINED_HELD_BYTES)], whole, ['hold']);
    assert.equal(events.some((e) => 'close' in e), false);
  });

  it('throws on loginSucceeded without a pending login, and ignores a stray loginFailed', () => {
    const machine = pop3Adapter.createPreauth(PORT_995);
    assert.throws(() => machine.loginSucceeded(null));
    assert.deepEqual(machine.loginFailed('auth-failed'), []);
  });
});

describe('pop3 preauth: limits and hostile input', () => {
  it('refuses an overlong line and reads nothing after it', () => {
    const events = preauthEverySplit(PORT_995, [`USER ${'a'.repeat(MAX_LINE_BYTES)}\r\nCAPA\r\n`]);
    assert.deepEqual(events, [GREETING, { send: '-ERR line too long\r\n' }, { close: 'limit' }]);
  });

  it('refuses an overlong line before its end arrives', () => {
    const events = runPreauth(PORT_995, ['a'.repeat(MAX_LINE_BYTES)], whole);
    assert.deepEqual(events, [GREETING, { send: '-ERR line too long\r\n' }, { close: 'limit' }]);
  });

  it(`accepts a line of exactly ${MAX_LINE_BYTES} bytes with its CRLF, not one more`, () => {
    const name = (extra: number): string => 'a'.repeat(MAX_LINE_BYTES - 'USER \r\n'.length + extra);
    assert.deepEqual(preauthEverySplit(PORT_995, [`USER ${name(0)}\r\n`]), [GREETING, { send: '+OK\r\n' }]);
    assert.deepEqual(preauthEverySplit(PORT_995, [`USER ${name(1)}\r\n`]), [GREETING, { send: '-ERR line too long\r\n' }, { close: 'limit' }]);
  });

  it('applies the line limit to SASL continuation lines too', () => {
    const events = preauthEverySplit(PORT_995, ['AUTH PLAIN\r\n', `${'A'.repeat(MAX_LINE_BYTES)}\r\n`]);
    assert.deepEqual(events, [GREETING, { send: '+ \r\n' }, { send: '-ERR line too long\r\n' }, { close: 'limit' }]);
    // With oauth2 too: only a bearer mechanism's responses carry an OAuth token.
    for (const mechanism of ['PLAIN', 'LOGIN']) {
      const withOAuth = runPreauth(PORT_995_OAUTH, [`AUTH ${mechanism}\r\n`, `${'A'.repeat(MAX_LINE_BYTES)}\r\n`], whole);
      assert.deepEqual(withOAuth.slice(2), [{ send: '-ERR line too long\r\n' }, { close: 'limit' }], mechanism);
    }
  });

  it('a bearer response line may be MAX_AUTHENTICATE_LINE_BYTES long (oauth2 set), not one more', () => {
    const response = (bytes: number): string => `${'A'.repeat(bytes - 2)}\r\n`;
    for (const split of [whole, bytewise]) {
      const read = runPreauth(PORT_995_OAUTH, ['AUTH XOAUTH2\r\n', response(MAX_AUTHENTICATE_LINE_BYTES)], split);
      assert.deepEqual(read.slice(1, 2), [{ send: '+ \r\n' }]);
      assert.ok(!read.some((e) => 'send' in e && e.send === '-ERR line too long\r\n'));
      const over = runPreauth(PORT_995_OAUTH, ['AUTH XOAUTH2\r\n', response(MAX_AUTHENTICATE_LINE_BYTES + 1)], split);
      assert.deepEqual(over.slice(2), [{ send: '-ERR line too long\r\n' }, { close: 'limit' }]);
    }
  });

  it('an AUTH line of a bearer mechanism may be MAX_AUTHENTICATE_LINE_BYTES long with oauth2, any other line MAX_LINE_BYTES', () => {
    const line = (verb: string, bytes: number): string => `${verb} ${'A'.repeat(bytes - verb.length - 3)}\r\n`;
    const tooLong: Event[] = [GREETING, { send: '-ERR line too long\r\n' }, { close: 'limit' }];
    for (const verb of ['AUTH OAUTHBEARER', 'auth xoauth2']) {
      assert.deepEqual(runPreauth(PORT_995_OAUTH, [line(verb, MAX_AUTHENTICATE_LINE_BYTES + 1)], whole), tooLong, verb);
      assert.deepEqual(runPreauth(PORT_995_OAUTH, [line(verb, MAX_AUTHENTICATE_LINE_BYTES + 1).slice(0, MAX_AUTHENTICATE_LINE_BYTES)], whole), tooLong, `${verb}, before its end`);
      const read = runPreauth(PORT_995_OAUTH, [line(verb, MAX_AUTHENTICATE_LINE_BYTES)], whole);
      assert.ok(!read.some((e) => 'send' in e && e.send === '-ERR line too long\r\n'), verb);
      // Without oauth2 (no bearer mechanism offered), and before TLS where none is, MAX_LINE_BYTES.
      assert.deepEqual(runPreauth(PORT_995, [line(verb, MAX_LINE_BYTES + 1)], whole), tooLong, `${verb} without oauth2`);
      assert.deepEqual(runPreauth(PORT_995, [line(verb, MAX_LINE_BYTES + 1).slice(0, MAX_LINE_BYTES)], whole), tooLong, `${verb} without oauth2, before its end`);
      assert.deepEqual(runPreauth({ ...PORT_110, oauth: true }, [line(verb, MAX_LINE_BYTES + 1)], whole), tooLong, `${verb} before TLS`);
    }
    // PLAIN and LOGIN keep MAX_LINE_BYTES, oauth2 or not (Dovecot closes on a response over 8191 characters).
    for (const options of [PORT_995, PORT_995_OAUTH]) {
      for (const verb of ['AUTH PLAIN', 'auth login', 'AUTH OAUTHBEARERX', 'AUTHX OAUTHBEARER']) {
        assert.deepEqual(runPreauth(options, [line(verb, MAX_LINE_BYTES + 1)], whole), tooLong, verb);
        assert.deepEqual(runPreauth(options, [line(verb, MAX_LINE_BYTES + 1).slice(0, MAX_LINE_BYTES)], whole), tooLong, `${verb}, before its end`);
        const read = runPreauth(options, [line(verb, MAX_LINE_BYTES)], whole);
        assert.ok(!read.some((e) => 'send' in e && e.send === '-ERR line too long\r\n'), verb);
      }
    }
  });

  it('closes at once, without a reply, on an HTTP request (cross-protocol attack)', () => {
    for (const request of ['GET / HTTP/1.1\r\nHost: mail.example\r\n\r\n', 'POST /form HTTP/1.1\r\nUSER alice\r\n', 'PRI * HTTP/2.0\r\n']) {
      const events = preauthEverySplit(TRUSTED, [request]);
      assert.deepEqual(events, [GREETING, { close: 'protocol-error' }], request);
    }
  });

  it('closes at once on SMTP greetings, even after valid commands', () => {
    assert.deepEqual(preauthEverySplit(TRUSTED, ['CAPA\r\nEHLO attacker.example\r\nUSER a\r\n']), [
      GREETING,
      capa('USER', 'SASL PLAIN LOGIN', 'STLS', ...COMMON_CAPS),
      { close: 'protocol-error' },
    ]);
    assert.deepEqual(preauthEverySplit(TRUSTED, ['helo x\r\n']), [GREETING, { close: 'protocol-error' }]);
  });

  it(`closes after ${MAX_BAD_COMMANDS} bad commands`, () => {
    const events = preauthEverySplit(PORT_995, ['NOOP\r\nSTAT\r\n\r\nAPOP alice 0123456789abcdef0123456789abcdef\r\nXYZZY\r\nCAPA\r\n']);
    assert.deepEqual(events, [
      GREETING,
      { send: '-ERR Unknown command\r\n' },
      { send: '-ERR Unknown command\r\n' },
      { send: '-ERR Unknown command\r\n' },
      { send: '-ERR APOP is not supported\r\n' },
      { send: '-ERR Too many invalid commands\r\n' },
      { close: 'protocol-error' },
    ]);
  });

  it(`closes after ${MAX_PREAUTH_COMMANDS} commands`, () => {
    const events = preauthEverySplit(PORT_110, ['CAPA\r\n'.repeat(MAX_PREAUTH_COMMANDS + 2)]);
    assert.equal(events.length, 1 + MAX_PREAUTH_COMMANDS + 2);
    assert.deepEqual(events.slice(-2), [{ send: '-ERR Too many commands\r\n' }, { close: 'limit' }]);
  });

  it('says goodbye on QUIT and reads nothing more', () => {
    const events = preauthEverySplit(PORT_995, ['QUIT\r\nUSER alice\r\nPASS secret\r\n']);
    assert.deepEqual(events, [GREETING, { send: '+OK Logging out\r\n' }, { close: 'logout' }]);
  });

  it('answers a timeout and a shutdown once, then nothing', () => {
    const machine = pop3Adapter.createPreauth(PORT_110);
    assert.deepEqual(machine.timedOut(), [
      { type: 'send', data: '-ERR No login within the time allowed\r\n' },
      { type: 'close', reason: 'timeout' },
    ]);
    assert.deepEqual(machine.shuttingDown(), []);
    assert.deepEqual(machine.receive(Buffer.from('CAPA\r\n')), []);
    const other = pop3Adapter.createPreauth(PORT_110);
    assert.deepEqual(other.shuttingDown(), [
      { type: 'send', data: '-ERR [SYS/TEMP] Server shutting down, please wait and try again later.\r\n' },
      { type: 'close', reason: 'shutdown' },
    ]);
  });

  it('at the deadline, a login pending is answered as the session decided it (unavailable if undecided), then -ERR; nothing pipelined behind it runs', () => {
    const timedOutWith = (refusal?: LoginRefusal, text?: string) => {
      const machine = pop3Adapter.createPreauth(TRUSTED);
      machine.receive(Buffer.from('USER alice\r\n'));
      assert.deepEqual(machine.receive(Buffer.from('PASS secret\r\nQUIT\r\n')).map((action) => action.type), ['login']);
      const out = machine.timedOut(refusal, text);
      assert.deepEqual(machine.receive(Buffer.from('CAPA\r\n')), []);
      return out;
    };
    const answered = (line: string) => [
      { type: 'send', data: `${line}\r\n` },
      { type: 'send', data: '-ERR No login within the time allowed\r\n' },
      { type: 'close', reason: 'timeout' },
    ];
    assert.deepEqual(timedOutWith('auth-failed'), answered('-ERR [AUTH] Authentication failed.'));
    assert.deepEqual(timedOutWith('limit', 'Too many sessions.'), answered('-ERR [SYS/TEMP] Too many sessions.'));
    assert.deepEqual(timedOutWith(), answered('-ERR [SYS/TEMP] Temporary failure, please wait and try again later.'));
  });

  it('at shutdown, a login refused already is answered so, then -ERR; one undecided is answered by that -ERR alone; nothing pipelined behind it runs', () => {
    const shutDownWith = (refusal?: LoginRefusal, text?: string) => {
      const machine = pop3Adapter.createPreauth(TRUSTED);
      machine.receive(Buffer.from('USER alice\r\n'));
      assert.deepEqual(machine.receive(Buffer.from('PASS secret\r\nQUIT\r\n')).map((action) => action.type), ['login']);
      const out = machine.shuttingDown(refusal, text);
      assert.deepEqual(machine.receive(Buffer.from('CAPA\r\n')), []);
      assert.deepEqual(machine.shuttingDown(), [], 'said once');
      return out;
    };
    const goodbye = [
      { type: 'send', data: '-ERR [SYS/TEMP] Server shutting down, please wait and try again later.\r\n' },
      { type: 'close', reason: 'shutdown' },
    ];
    assert.deepEqual(shutDownWith('auth-failed'), [{ type: 'send', data: '-ERR [AUTH] Authentication failed.\r\n' }, ...goodbye]);
    assert.deepEqual(shutDownWith('limit', 'Too many sessions.'), [{ type: 'send', data: '-ERR [SYS/TEMP] Too many sessions.\r\n' }, ...goodbye]);
    // One answer to PASS, a temporary one ("wait"): no second -ERR for a command that has one.
    assert.deepEqual(shutDownWith(), goodbye);
  });

  it('never throws on random input, split anyhow', () => {
    let seed = 42;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const words = ['USER a', 'PASS b', 'AUTH PLAIN', 'AUTH LOGIN', 'STLS', 'CAPA', '*', '=', 'AUTH', '\0', '\r', '\n', '\r\n', '\xff'];
    for (let round = 0; round < 300; round++) {
      const machine = pop3Adapter.createPreauth(round % 2 === 0 ? TRUSTED : PORT_110);
      let input = '';
      for (let i = 0; i < 20; i++) input += words[Math.floor(random() * words.length)] ?? '';
      const bytes = Buffer.from(input, 'latin1');
      for (let at = 0; at < bytes.length; ) {
        const size = 1 + Math.floor(random() * 8);
        for (const action of machine.receive(bytes.subarray(at, at + size))) {
          if (action.type === 'login') machine.loginFailed('auth-failed');
          if (action.type === 'starttls') machine.tlsStarted();
        }
        at += size;
      }
    }
  });
});

describe('pop3 adapter', () => {
  it('is named pop3 and has no drain notice (nothing can be sent mid-stream)', () => {
    assert.equal(pop3Adapter.name, 'pop3');
    assert.equal(pop3Adapter.drainNotice('Your mailbox moved'), null);
  });
});
