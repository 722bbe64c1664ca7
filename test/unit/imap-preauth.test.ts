import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { MAX_LINE_BYTES, MAX_PIPELINED_BYTES, MAX_PIPELINED_HELD_BYTES } from '../../src/limits.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import type { LoginRefusal, PreauthOptions } from '../../src/protocol/types.js';
import { latin1, preauthTrace, runPreauth, TLS, TLS_CLIENT, utf8, type LoginReply } from './imap-testkit.js';

const CAPS_TLS = 'IMAP4rev1 SASL-IR ID LITERAL- AUTH=PLAIN AUTH=LOGIN';
const PLAIN_WITH_STARTTLS: Partial<PreauthOptions> = { tlsActive: false, starttlsAvailable: true, plaintextWithoutTls: false };
const OK = { ok: true, capabilities: 'IMAP4rev1 IDLE' } as const;
const FAILED = { ok: false, refusal: 'auth-failed' } as const;
const AUTH_FAILED = 'NO [AUTHENTICATIONFAILED] Authentication failed.\r\n';
const READY = '+ Ready for literal data\r\n';

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const login = (user: string, password: string, mechanism = 'LOGIN', authzid?: string): string =>
  `login ${JSON.stringify(authzid === undefined ? { user, password, mechanism } : { user, password, authzid, mechanism })}`;

describe('IMAP pre-auth: greeting and capabilities', () => {
  it('offers plaintext mechanisms only where they are allowed', () => {
    const greet = (options: Partial<PreauthOptions>): string => {
      const [action] = imapAdapter.createPreauth({ ...TLS_CLIENT, ...options }).greeting();
      return action?.type === 'send' ? action.data : '';
    };
    assert.equal(greet({}), `* OK [CAPABILITY ${CAPS_TLS}] mailfront ready\r\n`);
    assert.equal(greet(PLAIN_WITH_STARTTLS), '* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL- STARTTLS LOGINDISABLED] mailfront ready\r\n');
    assert.equal(
      greet({ tlsActive: false, plaintextWithoutTls: true, greetingText: 'hi\r\n* BYE' }),
      `* OK [CAPABILITY ${CAPS_TLS}] hi  * BYE\r\n`,
    );
  });

  it('answers CAPABILITY, NOOP and LOGOUT, and reads nothing after LOGOUT', () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['a CAPABILITY\r\nb noop\r\nc LOGOUT\r\nd NOOP\r\n'] }), [
      `send * CAPABILITY ${CAPS_TLS}\r\na OK Capability completed.\r\nb OK NOOP completed.\r\n* BYE Logging out\r\nc OK Logout completed.\r\n`,
      'close logout',
    ]);
  });

  it('answers ID and reports the client parameters with lower-cased keys', () => {
    assert.deepStrictEqual(
      preauthTrace({ phases: ['a ID ("name" "Thunderbird" "Version" "115.3" "os" NIL)\r\nb ID NIL\r\nc ID ("name")\r\nd ID ("k" {4+}\r\na\r\nb)\r\n'] }),
      [
        'client-id [["name","Thunderbird"],["version","115.3"],["os",null]]',
        'send * ID ("name" "mailfront")\r\na OK ID completed.\r\n* ID ("name" "mailfront")\r\nb OK ID completed.\r\n' +
          'c BAD Invalid ID parameters\r\nd BAD Invalid ID parameters\r\n',
      ],
    );
  });
});

describe('IMAP pre-auth: LOGIN', () => {
  it('takes atoms', () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN alice secret\r\n'], logins: [OK] }), [
      login('alice', 'secret'),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      'forward ',
    ]);
  });

  it('takes quoted strings with escapes', () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['x1 login "al ice" "p\\"w\\\\d"\r\n'], logins: [{ ok: true, capabilities: null }] }), [
      login('al ice', 'p"w\\d'),
      'send x1 OK Logged in\r\n',
      'forward ',
    ]);
  });

  it('takes quoted strings with UTF-8 (imapflow sends LOGIN "jos\u00e9" so), and refuses other 8-bit bytes', () => {
    assert.deepStrictEqual(preauthTrace({ phases: [utf8('a LOGIN "jos\u00e9" "p\u00e4ss \\"\u20ac\\""\r\n')], logins: [OK] }), [
      login('jos\u00e9', 'p\u00e4ss "\u20ac"'),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      'forward ',
    ]);
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN "jos\xe9" x\r\nb LOGIN jos\xe9 x\r\n'] }), [
      'send a BAD Strings must be valid UTF-8\r\nb BAD 8-bit characters are only allowed in strings\r\n',
    ]);
  });

  it('takes synchronising literals, asking for each', () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN {5}\r\nalice {6}\r\nsecret\r\n'], logins: [OK] }), [
      `send ${READY}${READY}`,
      login('alice', 'secret'),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      'forward ',
    ]);
  });

  it('takes non-synchronising literals (LITERAL-) with UTF-8 and quoting characters', () => {
    const password = 'p\u00e4ss w"d\\';
    const input = utf8(`a LOGIN {5+}\r\nalice {${Buffer.byteLength(password)}+}\r\n${password}\r\n`);
    assert.deepStrictEqual(preauthTrace({ phases: [input], logins: [OK] }), [
      login('alice', password),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      'forward ',
    ]);
  });

  it('returns the bytes pipelined after LOGIN exactly as received', () => {
    const after = 'b SELECT INBOX\r\nc FETCH 1:* (FLAGS)\r\n\xff\x00{5}\r\nd NOOP';
    assert.deepStrictEqual(preauthTrace({ phases: [`a LOGIN alice secret\r\n${after}`], logins: [OK] }), [
      login('alice', 'secret'),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      `forward ${after}`,
    ]);
  });

  it('answers a failed login and goes on with the buffered commands', () => {
    assert.deepStrictEqual(
      preauthTrace({
        phases: ['a LOGIN alice wrong\r\nb LOGIN alice secret\r\nc NOOP\r\n'],
        logins: [{ ok: false, refusal: 'auth-failed', text: 'user unknown in LDAP' }, OK],
      }),
      [
        login('alice', 'wrong'),
        `send a ${AUTH_FAILED}`,
        login('alice', 'secret'),
        'send b OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
        'forward c NOOP\r\n',
      ],
    );
  });

  it('words each refusal with its RFC 5530 code', () => {
    assert.deepStrictEqual(
      preauthTrace({
        phases: ['a LOGIN u p\r\nb NOOP\r\n'],
        logins: [{ ok: false, refusal: 'unavailable', text: 'Backend down\r\n* BYE' }],
      }),
      [login('u', 'p'), 'send a NO [UNAVAILABLE] Backend down  * BYE\r\nb OK NOOP completed.\r\n'],
    );
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u p\r\n'], logins: [{ ok: false, refusal: 'limit' }] }), [
      login('u', 'p'),
      'send a NO [LIMIT] Too many login attempts or connections, please try again later.\r\n',
    ]);
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u p\r\n'], logins: [{ ok: false, refusal: 'in-use' }] }), [
      login('u', 'p'),
      'send a NO [INUSE] Mailbox is in use, please try again later.\r\n',
    ]);
    // RFC 5530: authenticated, but not let in under that name.
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u p\r\n'], logins: [{ ok: false, refusal: 'not-authorized' }] }), [
      login('u', 'p'),
      'send a NO [AUTHORIZATIONFAILED] Authorization failed.\r\n',
    ]);
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u p\r\n'], logins: [{ ok: false, refusal: 'unavailable' }] }), [
      login('u', 'p'),
      'send a NO [UNAVAILABLE] Temporary failure, please try again later.\r\n',
    ]);
  });

  it(`closes after too many failed logins`, () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u 1\r\nb LOGIN u 2\r\nc LOGIN u 3\r\nd LOGIN u 4\r\n'], logins: [FAILED, FAILED, FAILED] }), [
      login('u', '1'),
      `send a ${AUTH_FAILED}`,
      login('u', '2'),
      `send b ${AUTH_FAILED}`,
      login('u', '3'),
      `send c ${AUTH_FAILED}* BYE Too many failed login attempts\r\n`,
      'close limit',
    ]);
  });

  it('counts a login refused for the name it asks for (not-authorized) towards that limit', () => {
    const refused = { ok: false, refusal: 'not-authorized' } as const;
    const NOT_AUTHORIZED = 'NO [AUTHORIZATIONFAILED] Authorization failed.\r\n';
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u*s 1\r\nb LOGIN v*s 1\r\nc LOGIN w*s 1\r\nd LOGIN x*s 1\r\n'], logins: [refused, refused, refused] }), [
      login('u*s', '1'),
      `send a ${NOT_AUTHORIZED}`,
      login('v*s', '1'),
      `send b ${NOT_AUTHORIZED}`,
      login('w*s', '1'),
      `send c ${NOT_AUTHORIZED}* BYE Too many failed login attempts\r\n`,
      'close limit',
    ]);
  });

  it('does not count temporary failures (an outage, a locked mailbox) towards that limit', () => {
    const down = { ok: false, refusal: 'unavailable' } as const;
    const busy = { ok: false, refusal: 'in-use' } as const;
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u 1\r\nb LOGIN u 1\r\nc LOGIN u 1\r\nd LOGIN u 1\r\ne NOOP\r\n'], logins: [down, busy, down, down] }), [
      login('u', '1'),
      'send a NO [UNAVAILABLE] Temporary failure, please try again later.\r\n',
      login('u', '1'),
      'send b NO [INUSE] Mailbox is in use, please try again later.\r\n',
      login('u', '1'),
      'send c NO [UNAVAILABLE] Temporary failure, please try again later.\r\n',
      login('u', '1'),
      'send d NO [UNAVAILABLE] Temporary failure, please try again later.\r\ne OK NOOP completed.\r\n',
    ]);
  });

  it('never hands on credentials with CR, LF or NUL, or empty ones', () => {
    assert.deepStrictEqual(
      preauthTrace({ phases: ['a LOGIN {4+}\r\nu\r\nx p\r\nb LOGIN u {3+}\r\n\x00pw\r\nc LOGIN "" p\r\nd NOOP\r\n'] }),
      [`send a ${AUTH_FAILED}b ${AUTH_FAILED}c ${AUTH_FAILED}* BYE Too many failed login attempts\r\n`, 'close limit'],
    );
  });

  it('refuses LOGIN and AUTHENTICATE without TLS with PRIVACYREQUIRED', () => {
    const privacy = 'NO [PRIVACYREQUIRED] Plaintext authentication is not allowed without TLS.\r\n';
    assert.deepStrictEqual(
      preauthTrace({
        options: PLAIN_WITH_STARTTLS,
        phases: [`a LOGIN alice secret\r\nb AUTHENTICATE PLAIN ${b64('\0alice\0secret')}\r\nc AUTHENTICATE LOGIN\r\nd NOOP\r\n`],
      }),
      [`send a ${privacy}b ${privacy}c ${privacy}d OK NOOP completed.\r\n`],
    );
    assert.deepStrictEqual(
      preauthTrace({ options: { tlsActive: false, plaintextWithoutTls: true }, phases: ['a LOGIN alice secret\r\n'], logins: [OK] }),
      [login('alice', 'secret'), 'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n', 'forward '],
    );
  });

  it('closes when fed past MAX_PIPELINED_HELD_BYTES during a login (a session that reads on although the input is full)', () => {
    const input = `a LOGIN u p\r\n${'x'.repeat(MAX_PIPELINED_HELD_BYTES + 1)}`;
    // Answered only after all input: answered earlier, the login would win the race.
    assert.deepStrictEqual(preauthTrace({ phases: [input], logins: [OK], respond: 'at-end' }, [1, 13, 14, 5000, MAX_PIPELINED_BYTES + 13, MAX_PIPELINED_HELD_BYTES + 13]), [
      login('u', 'p'),
      'send * BYE [LIMIT] Too much input while logging in\r\n',
      'close limit',
    ]);
    const fits = `a LOGIN u p\r\n${'x'.repeat(MAX_PIPELINED_HELD_BYTES)}`;
    const trace = preauthTrace({ phases: [fits], logins: [OK] }, [1, 13, 14, 5000]);
    assert.equal(trace.at(-1)?.length, 'forward '.length + MAX_PIPELINED_HELD_BYTES);
  });
});

describe('IMAP pre-auth: AUTHENTICATE', () => {
  it('takes PLAIN with an initial response (SASL-IR)', () => {
    assert.deepStrictEqual(preauthTrace({ phases: [`a AUTHENTICATE plain ${b64('\0alice\0secret')}\r\nb NOOP\r\n`], logins: [OK] }), [
      login('alice', 'secret', 'PLAIN'),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      'forward b NOOP\r\n',
    ]);
  });

  it('takes PLAIN after a continuation, with an authorization identity', () => {
    assert.deepStrictEqual(preauthTrace({ phases: [`a AUTHENTICATE PLAIN\r\n${b64('admin\0alice\0s\u00e9cret')}\r\n`], logins: [OK] }), [
      'send + \r\n',
      login('alice', 's\u00e9cret', 'PLAIN', 'admin'),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      'forward ',
    ]);
  });

  it('takes LOGIN with and without an initial response', () => {
    assert.deepStrictEqual(preauthTrace({ phases: [`a AUTHENTICATE LOGIN\r\n${b64('alice')}\r\n${b64('secret')}\r\n`], logins: [OK] }), [
      'send + VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n',
      login('alice', 'secret', 'SASL-LOGIN'),
      'send a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
      'forward ',
    ]);
    assert.deepStrictEqual(preauthTrace({ phases: [`a AUTHENTICATE LOGIN ${b64('alice')}\r\n${b64('secret')}\r\n`], logins: [FAILED] }), [
      'send + UGFzc3dvcmQ6\r\n',
      login('alice', 'secret', 'SASL-LOGIN'),
      `send a ${AUTH_FAILED}`,
    ]);
  });

  it('cancels on "*" with a tagged BAD and goes on', () => {
    assert.deepStrictEqual(preauthTrace({ phases: [`a AUTHENTICATE PLAIN\r\n*\r\nb AUTHENTICATE LOGIN\r\n${b64('alice')}\r\n*\r\nc NOOP\r\n`] }), [
      'send + \r\na BAD Authentication cancelled.\r\n+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\nb BAD Authentication cancelled.\r\nc OK NOOP completed.\r\n',
    ]);
  });

  it('refuses malformed SASL responses and unsupported mechanisms', () => {
    assert.deepStrictEqual(
      preauthTrace({ phases: ['b AUTHENTICATE PLAIN\r\nnot base64!\r\nc AUTHENTICATE CRAM-MD5\r\nd NOOP\r\n'] }),
      ['send + \r\nb BAD Invalid SASL response\r\nc NO Unsupported authentication mechanism\r\nd OK NOOP completed.\r\n'],
    );
  });

  it('fails a PLAIN message that is base64 but no PLAIN message with NO, counted as a failed login', () => {
    // RFC 9051 §6.2.2 keeps BAD for base64 that is not; RFC 4616's message needs two NULs and a
    // user. "=" is an empty initial response (RFC 4959 §3). As Dovecot answers.
    assert.deepStrictEqual(
      preauthTrace({ phases: [`a AUTHENTICATE PLAIN =\r\nb AUTHENTICATE PLAIN ${b64('abc')}\r\nc AUTHENTICATE PLAIN\r\n${b64('alice\0pw')}\r\n`] }),
      [`send a ${AUTH_FAILED}b ${AUTH_FAILED}+ \r\nc ${AUTH_FAILED}* BYE Too many failed login attempts\r\n`, 'close limit'],
    );
  });

  it('refuses SASL credentials with CR, LF or NUL', () => {
    assert.deepStrictEqual(
      preauthTrace({
        phases: [`a AUTHENTICATE PLAIN ${b64('\0alice\0sec\r\nret')}\r\nb AUTHENTICATE LOGIN ${b64('alice')}\r\n${b64('sec\0ret')}\r\nc NOOP\r\n`],
      }),
      [`send a ${AUTH_FAILED}+ UGFzc3dvcmQ6\r\nb ${AUTH_FAILED}c OK NOOP completed.\r\n`],
    );
  });
});

describe('IMAP pre-auth: STARTTLS', () => {
  it('discards what follows STARTTLS and changes the capabilities after the handshake', () => {
    assert.deepStrictEqual(
      preauthTrace({
        options: PLAIN_WITH_STARTTLS,
        phases: ['a STARTTLS\r\nb LOGIN mallory evil\r\n', TLS, 'c CAPABILITY\r\nd STARTTLS\r\ne LOGIN alice secret\r\n'],
        logins: [OK],
      }),
      [
        'send a OK Begin TLS negotiation now.\r\n',
        'starttls',
        'tls-started',
        `send * CAPABILITY ${CAPS_TLS}\r\nc OK Capability completed.\r\nd BAD TLS is already active\r\n`,
        login('alice', 'secret'),
        'send e OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n',
        'forward ',
      ],
    );
  });

  it('refuses STARTTLS where it is not offered', () => {
    assert.deepStrictEqual(preauthTrace({ options: { tlsActive: false, plaintextWithoutTls: true }, phases: ['a STARTTLS\r\n'] }), [
      'send a BAD STARTTLS is not available\r\n',
    ]);
  });
});

describe('IMAP pre-auth: hostile input', () => {
  it('closes on a literal size that would overflow, reading nothing after it', () => {
    for (const size of ['4294967296', '99999999999999999999', '4097']) {
      assert.deepStrictEqual(preauthTrace({ phases: [`a LOGIN {${size}}\r\nb LOGIN x y\r\n`] }), [
        'send a BAD [TOOBIG] Literal too big\r\n* BYE [LIMIT] Literal too big\r\n',
        'close limit',
      ]);
    }
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN u {5000+}\r\nb LOGIN x y\r\n'] }), [
      'send a BAD [TOOBIG] Non-synchronizing literal too big\r\n* BYE [LIMIT] Literal too big\r\n',
      'close limit',
    ]);
  });

  it('closes when a rejected line announces a literal', () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['a LOGIN "x {11}\r\nb LOGIN u p\r\n'] }), [
      'send a BAD Syntax error\r\n* BYE Invalid command with literal data\r\n',
      'close protocol-error',
    ]);
  });

  it('closes on an overlong line', () => {
    const line = `a NOOP${' '.repeat(MAX_LINE_BYTES)}\r\nb LOGIN u p\r\n`;
    assert.deepStrictEqual(preauthTrace({ phases: [line] }, [1, 100, MAX_LINE_BYTES - 1, MAX_LINE_BYTES, MAX_LINE_BYTES + 1]), [
      'send * BYE [LIMIT] Command line too long\r\n',
      'close limit',
    ]);
  });

  it('answers NUL and syntax errors with BAD and reads on', () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['a NO\x00OP\r\nb LOGIN "\xe9" x\r\n\r\nc NOOP\n'] }), [
      'send a BAD NUL characters are not allowed\r\nb BAD Strings must be valid UTF-8\r\n* BAD Empty command line\r\nc OK NOOP completed.\r\n',
    ]);
  });

  it('closes after too many bad commands', () => {
    assert.deepStrictEqual(preauthTrace({ phases: ['a FOO\r\nb SELECT INBOX\r\nc FOO\r\nd STARTTLS\r\ne FOO\r\nf NOOP\r\n'] }), [
      'send a BAD Unknown command\r\nb BAD Command is not allowed before login\r\nc BAD Unknown command\r\nd BAD TLS is already active\r\n' +
        'e BAD Unknown command\r\n* BYE Too many invalid commands\r\n',
      'close protocol-error',
    ]);
  });

  it('closes after too many commands', () => {
    const trace = preauthTrace({ phases: ['x NOOP\r\n'.repeat(51)] });
    assert.deepStrictEqual(trace, ['send ' + 'x OK NOOP completed.\r\n'.repeat(50) + '* BYE [LIMIT] Too many commands before login\r\n', 'close limit']);
  });

  it('closes at once on an HTTP request, never reading its body as commands', () => {
    const post = 'POST / HTTP/1.1\r\nHost: imap.example\r\nContent-Length: 25\r\n\r\na LOGIN alice secret\r\n';
    assert.deepStrictEqual(preauthTrace({ phases: [post] }), ['send * BYE This is an IMAP server\r\n', 'close protocol-error']);
    assert.deepStrictEqual(preauthTrace({ phases: ['GET / HTTP/1.1\r\n'] }), ['send * BYE This is an IMAP server\r\n', 'close protocol-error']);
    assert.deepStrictEqual(preauthTrace({ phases: ['EHLO mx.example\r\n'] }), ['send * BYE This is an IMAP server\r\n', 'close protocol-error']);
  });
});

describe('IMAP pre-auth: timeouts, shutdown, drain', () => {
  it('says goodbye on timeout and shutdown, then ignores input', () => {
    const machine = imapAdapter.createPreauth(TLS_CLIENT);
    assert.deepStrictEqual(machine.timedOut(), [
      { type: 'send', data: '* BYE No login within the time allowed\r\n' },
      { type: 'close', reason: 'timeout' },
    ]);
    assert.deepStrictEqual(machine.receive(utf8('a LOGIN u p\r\n')), []);
    assert.deepStrictEqual(machine.shuttingDown(), []);
    assert.deepStrictEqual(imapAdapter.createPreauth(TLS_CLIENT).shuttingDown(), [
      { type: 'send', data: '* BYE [UNAVAILABLE] Server shutting down\r\n' },
      { type: 'close', reason: 'shutdown' },
    ]);
  });

  it('at the deadline, a login pending is answered as the session decided it (unavailable if undecided), then BYE; nothing pipelined behind it runs', () => {
    const timedOutWith = (refusal?: LoginRefusal, text?: string) => {
      const machine = imapAdapter.createPreauth(TLS_CLIENT);
      assert.deepStrictEqual(machine.receive(utf8('a LOGIN u p\r\nb LOGOUT\r\n')).map((action) => action.type), ['login']);
      const out = machine.timedOut(refusal, text);
      assert.deepStrictEqual(machine.receive(utf8('c LOGIN u p\r\n')), []);
      return out;
    };
    const answered = (line: string) => [
      { type: 'send', data: `a ${line}\r\n* BYE No login within the time allowed\r\n` },
      { type: 'close', reason: 'timeout' },
    ];
    assert.deepStrictEqual(timedOutWith('auth-failed'), answered(AUTH_FAILED.trimEnd()));
    assert.deepStrictEqual(timedOutWith('limit', 'Too many sessions.'), answered('NO [LIMIT] Too many sessions.'));
    assert.deepStrictEqual(timedOutWith(), answered('NO [UNAVAILABLE] Temporary failure, please try again later.'));
  });

  it('at shutdown, a login pending is answered as the session decided it (unavailable if undecided), then BYE: the untagged BYE leaves no tag open; nothing pipelined behind it runs', () => {
    const shutDownWith = (refusal?: LoginRefusal, text?: string) => {
      const machine = imapAdapter.createPreauth(TLS_CLIENT);
      assert.deepStrictEqual(machine.receive(utf8('a LOGIN u p\r\nb LOGOUT\r\n')).map((action) => action.type), ['login']);
      const out = machine.shuttingDown(refusal, text);
      assert.deepStrictEqual(machine.receive(utf8('c LOGIN u p\r\n')), []);
      assert.deepStrictEqual(machine.shuttingDown(), [], 'said once');
      return out;
    };
    const answered = (line: string) => [
      { type: 'send', data: `a ${line}\r\n* BYE [UNAVAILABLE] Server shutting down\r\n` },
      { type: 'close', reason: 'shutdown' },
    ];
    assert.deepStrictEqual(shutDownWith('auth-failed'), answered(AUTH_FAILED.trimEnd()));
    assert.deepStrictEqual(shutDownWith('limit', 'Too many sessions.'), answered('NO [LIMIT] Too many sessions.'));
    assert.deepStrictEqual(shutDownWith(), answered('NO [UNAVAILABLE] Temporary failure, please try again later.'));
  });

  it('buffers input while a login is pending and only then answers', () => {
    const machine = imapAdapter.createPreauth(TLS_CLIENT);
    const actions = machine.receive(utf8('a LOGIN u p\r\nb NOOP\r\n'));
    assert.deepStrictEqual(actions.map((a) => a.type), ['login']);
    assert.deepStrictEqual(machine.receive(utf8('c NOOP\r\n')), []);
    assert.deepStrictEqual(machine.loginFailed('auth-failed', 'ignored'), [
      { type: 'send', data: `a ${AUTH_FAILED}b OK NOOP completed.\r\nc OK NOOP completed.\r\n` },
    ]);
    assert.throws(() => machine.loginSucceeded(null));
  });

  it('keeps backend capabilities on one line', () => {
    const machine = imapAdapter.createPreauth(TLS_CLIENT);
    machine.receive(utf8('a LOGIN u p\r\nb NOOP'));
    const success = machine.loginSucceeded('IMAP4rev1\r\n* BYE');
    assert.equal(success.reply, 'a OK [CAPABILITY IMAP4rev1 * BYE] Logged in\r\n');
    assert.equal(latin1(success.pipelined), 'b NOOP');
  });

  it('leaves the capabilities of the not-authenticated state out of the login reply (Cyrus lists them after login)', () => {
    const reply = (capabilities: string | null): string => {
      const machine = imapAdapter.createPreauth(TLS_CLIENT);
      machine.receive(utf8('a LOGIN u p\r\n'));
      return machine.loginSucceeded(capabilities).reply;
    };
    const cyrus = 'IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN auth=login SASL-IR STARTTLS LOGINDISABLED IDLE COMPRESS=DEFLATE XAUTH=X X-STARTTLS';
    const kept = 'a OK [CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE SASL-IR IDLE COMPRESS=DEFLATE XAUTH=X X-STARTTLS] Logged in\r\n';
    // Twice: a list seen before (kept from the first login) gets the same answer.
    assert.equal(reply(cyrus), kept);
    assert.equal(reply(cyrus), kept);
    assert.equal(reply('AUTH=PLAIN STARTTLS LOGINDISABLED'), 'a OK Logged in\r\n', 'no empty code');
    assert.equal(reply(''), 'a OK Logged in\r\n');
    assert.equal(reply(null), 'a OK Logged in\r\n');
  });

  it('shows a guarded backend login reply without what the guard refuses, nor what belongs before login', () => {
    const capabilities = 'IMAP4rev1 UNAUTHENTICATE STARTTLS COMPRESS=DEFLATE AUTH=PLAIN IDLE';
    const guarded = imapAdapter.createCommandGuard?.(capabilities);
    const machine = imapAdapter.createPreauth(TLS_CLIENT);
    machine.receive(utf8('a LOGIN u p\r\n'));
    assert.equal(machine.loginSucceeded(guarded?.capabilities ?? capabilities).reply, 'a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n');
  });

  it('words the drain notice as an untagged BYE', () => {
    assert.equal(imapAdapter.drainNotice('Store moved to another slot\r\n'), '* BYE [UNAVAILABLE] Store moved to another slot\r\n');
  });
});

describe('IMAP pre-auth: random input', () => {
  const pieces = [
    'a LOGIN ', 'b AUTHENTICATE PLAIN', 'c AUTHENTICATE LOGIN ', 'd ID ("name" "x")', 'e STARTTLS', 'f NOOP', 'LOGOUT', 'CAPABILITY',
    '{5}\r\n', '{3+}\r\n', '{4294967296}\r\n', '"q\\"', '"', '\r\n', '\n', '\r', ' ', '(', ')', '*', '=', 'AGFsaWNlAHNlY3JldA==',
    'YWxpY2U=', '\x00', '\xff', 'GET / HTTP/1.1', 'alice', 'secret',
  ];
  const input = fc.array(fc.constantFrom(...pieces), { maxLength: 40 }).map((parts) => parts.join(''));
  const options = fc.record({ tlsActive: fc.boolean(), starttlsAvailable: fc.boolean(), plaintextWithoutTls: fc.boolean() });
  const replies = fc.array(
    fc.oneof(
      fc.constant<LoginReply>({ ok: true, capabilities: 'IMAP4rev1' }),
      fc.constantFrom<LoginReply>(...(['auth-failed', 'unavailable', 'limit', 'in-use'] as const).map((refusal) => ({ ok: false, refusal }) as const)),
    ),
    { maxLength: 4 },
  );

  it('never throws, and gives the same result however the input is split', () => {
    fc.assert(
      fc.property(input, options, replies, fc.array(fc.nat(), { maxLength: 6 }), (text, opts, logins, cuts) => {
        const script = { options: opts, phases: [text], logins };
        const data = Buffer.from(text, 'latin1');
        const positions = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((x, y) => x - y);
        const cut = (b: Uint8Array): Uint8Array[] => [0, ...positions].map((from, i) => b.subarray(from, [...positions, b.length][i]));
        const expected = runPreauth(script, (b) => [b], 'at-end');
        assert.deepStrictEqual(runPreauth(script, cut, 'at-end'), expected);
        assert.deepStrictEqual(runPreauth(script, (b) => Array.from(b, (_, i) => b.subarray(i, i + 1)), 'at-end'), expected);
      }),
      { numRuns: 500 },
    );
  });
});
