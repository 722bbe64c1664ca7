import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { MAX_BACKEND_DIALOGUE_BYTES, MAX_BACKEND_DIALOGUE_RESPONSES, MAX_BACKEND_RESPONSE_BYTES } from '../../src/limits.js';
import { classifyLoginNo, LONG_CREDENTIALS_BYTES } from '../../src/protocol/imap/backend.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { backendTrace, BACKEND_DEFAULTS, bytes, chunkers, runBackend, TLS, utf8 } from './imap-testkit.js';

const DOVECOT_GREETING =
  '* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.\r\n';
const DOVECOT_POST_LOGIN =
  'IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT ' +
  'MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ' +
  'ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE ' +
  'LITERAL+ NOTIFY SPECIAL-USE';
const CYRUS_GREETING = '* OK [CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE STARTTLS AUTH=PLAIN SASL-IR] localhost Cyrus IMAP 3.6.1 server ready\r\n';
const CYRUS_POST_LOGIN =
  'IMAP4rev1 LITERAL+ ID ENABLE ACL RIGHTS=kxten QUOTA MAILBOX-REFERRALS NAMESPACE UIDPLUS NO_ATOMIC_RENAME UNSELECT CHILDREN ' +
  'MULTIAPPEND BINARY CATENATE CONDSTORE ESEARCH SORT SORT=MODSEQ SORT=DISPLAY SORT=UID THREAD=ORDEREDSUBJECT THREAD=REFERENCES ' +
  'THREAD=REFS METADATA LIST-EXTENDED LIST-STATUS LIST-MYRIGHTS LIST-METADATA WITHIN QRESYNC SCAN XLIST XMOVE MOVE SPECIAL-USE ' +
  'CREATE-SPECIAL-USE DIGEST=SHA1 X-REPLICATION STATUS=SIZE OBJECTID SAVEDATE X-CREATEDMODSEQ PREVIEW=FUZZY IDLE APPENDLIMIT=2147483647';
const CYRUS_LOGIN_OK = `OK [CAPABILITY ${CYRUS_POST_LOGIN}] Success (tls protection) SESSIONID=<cyrus-1234-1700000000-1-5678>\r\n`;

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const latin = (text: string): string => Buffer.from(text, 'utf8').toString('latin1');

describe('IMAP backend login: Dovecot 2.3', () => {
  it('replays the password as LITERAL+ literals after forwarding the client address with ID', () => {
    const password = 'p\u00e4"ss';
    const trace = backendTrace({ password, forward: { ip: '2001:db8::7', port: 50123, sessionId: 'sess-"1"' } }, [
      DOVECOT_GREETING +
        '* ID ("name" "Dovecot")\r\nmf1 OK ID completed (0.001 + 0.000 secs).\r\n' +
        `mf2 OK [CAPABILITY ${DOVECOT_POST_LOGIN}] Logged in\r\n`,
    ]);
    assert.deepStrictEqual(trace, [
      'send mf1 ID ("x-originating-ip" "2001:db8::7" "x-originating-port" "50123" "x-session-id" "sess-\\"1\\"")\r\n' +
        `mf2 LOGIN {5+}\r\nalice {6+}\r\n${latin(password)}\r\n`,
      `done ${DOVECOT_POST_LOGIN}`,
      'state done',
      'leftover ',
    ]);
  });

  it('sends ID and LOGIN in one write on the greeting, before the ID is answered', () => {
    const machine = imapAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, forward: { ip: '192.0.2.1', port: 1, sessionId: 'x' } });
    const first = machine.receive(bytes(DOVECOT_GREETING));
    assert.equal(first.length, 1);
    assert.equal(first[0]?.type === 'send' && Buffer.from(first[0].data).toString('latin1'), 'mf1 ID ("x-originating-ip" "192.0.2.1" "x-originating-port" "1" "x-session-id" "x")\r\nmf2 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n');
    assert.equal(machine.state, 'login');
    // The ID's answer alone moves nothing; a stray tag still fails.
    assert.deepStrictEqual(machine.receive(bytes('* ID NIL\r\nmf1 OK ID completed.\r\n')), []);
    assert.equal(machine.state, 'login');
    const done = machine.receive(bytes(`mf2 OK [CAPABILITY ${DOVECOT_POST_LOGIN}] Logged in\r\n`));
    assert.equal(done[0]?.type, 'done');
    const stray = imapAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, forward: { ip: '192.0.2.1', port: 1, sessionId: 'x' } });
    stray.receive(bytes(DOVECOT_GREETING));
    assert.equal(stray.receive(bytes('mf7 OK what\r\n'))[0]?.type, 'fail');
  });

  it('logs in as a master user', () => {
    const options = { mode: 'master-user', proxyUser: 'mfproxy', proxyPassword: 'm4ster' } as const;
    const phases = [DOVECOT_GREETING + `mf1 OK [CAPABILITY ${DOVECOT_POST_LOGIN}] Logged in\r\n`];
    assert.deepStrictEqual(backendTrace(options, phases), [
      'send mf1 LOGIN {13+}\r\nalice*mfproxy {6+}\r\nm4ster\r\n',
      `done ${DOVECOT_POST_LOGIN}`,
      'state done',
      'leftover ',
    ]);
    assert.deepStrictEqual(backendTrace({ ...options, masterUserSeparator: '%' }, phases)[0], 'send mf1 LOGIN {13+}\r\nalice%mfproxy {6+}\r\nm4ster\r\n');
  });

  it('goes on when ID is refused, and keeps what follows the login reply', () => {
    assert.deepStrictEqual(
      backendTrace({ forward: { ip: '192.0.2.1', port: 1, sessionId: 'x' } }, [
        DOVECOT_GREETING + 'mf1 BAD Error in IMAP command ID: Unknown command.\r\n' + `mf2 OK [CAPABILITY ${DOVECOT_POST_LOGIN}] Logged in\r\n` + '* 3 EXISTS\r\n* 1 RECENT\r\n',
      ]),
      [
        'send mf1 ID ("x-originating-ip" "192.0.2.1" "x-originating-port" "1" "x-session-id" "x")\r\nmf2 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
        `done ${DOVECOT_POST_LOGIN}`,
        'state done',
        'leftover * 3 EXISTS\r\n* 1 RECENT\r\n',
      ],
    );
  });

  it('forwards the client address with ID only to a backend that lists ID', () => {
    const forward = { ip: '192.0.2.1', port: 1, sessionId: 'x' };
    // In the greeting's capabilities: none, so no ID ahead of the LOGIN.
    assert.deepStrictEqual(backendTrace({ forward }, ['* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\nmf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n']), [
      'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
      'done IMAP4rev1',
      'state done',
      'leftover ',
    ]);
    // Learned from CAPABILITY (a greeting without them): the same, and with ID listed there, the ID.
    assert.deepStrictEqual(backendTrace({ forward }, ['* OK ready\r\n* CAPABILITY IMAP4rev1 LITERAL+\r\nmf1 OK done\r\nmf2 OK [CAPABILITY IMAP4rev1] Logged in\r\n'])[0], 'send mf1 CAPABILITY\r\nmf2 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n');
    assert.deepStrictEqual(
      backendTrace({ forward }, ['* OK ready\r\n* CAPABILITY IMAP4rev1 LITERAL+ ID\r\nmf1 OK done\r\nmf2 OK ID completed.\r\nmf3 OK [CAPABILITY IMAP4rev1] Logged in\r\n'])[0],
      'send mf1 CAPABILITY\r\nmf2 ID ("x-originating-ip" "192.0.2.1" "x-originating-port" "1" "x-session-id" "x")\r\nmf3 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
    );
  });

  it('passes [ALERT] lines of the login answer on to the client, before what follows it; drops other untagged lines', () => {
    assert.deepStrictEqual(
      backendTrace({}, [
        DOVECOT_GREETING +
          '* OK [ALERT] Your password expires in 3 days\r\n* OK unrelated chatter\r\n* NO [ALERT] Quota at 95%\x07\r\n' +
          `mf1 OK [CAPABILITY ${DOVECOT_POST_LOGIN}] Logged in\r\n* 3 EXISTS\r\n`,
      ]),
      [
        'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
        `done ${DOVECOT_POST_LOGIN}`,
        'state done',
        'leftover * OK [ALERT] Your password expires in 3 days\r\n* NO [ALERT] Quota at 95%\r\n* 3 EXISTS\r\n',
      ],
    );
  });

  it('passes an [ALERT] in the tagged OK of the login on to the client too, as an untagged OK after the untagged ones', () => {
    // The client's tagged OK is mailfront's own: the backend's would take its alert with it.
    assert.deepStrictEqual(
      backendTrace({}, [
        DOVECOT_GREETING +
          '* NO [ALERT] Quota at 95%\r\nmf1 OK [ALERT] Your password expires tomorrow\x07\r\n' +
          // That OK has no CAPABILITY code (it has ALERT): the machine asks for them.
          '* CAPABILITY IMAP4rev1 IDLE\r\nmf2 OK Capability completed.\r\n* 3 EXISTS\r\n',
      ]),
      [
        'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\nmf2 CAPABILITY\r\n',
        'done IMAP4rev1 IDLE',
        'state done',
        'leftover * NO [ALERT] Quota at 95%\r\n* OK [ALERT] Your password expires tomorrow\r\n* 3 EXISTS\r\n',
      ],
    );
  });

  it('carries the [ALERT] of a refused login (its tagged NO\'s, and untagged ones of its answer) with the refusal, for the client', () => {
    // The client gets mailfront's own tagged NO: without this the backend's alert never reached the user.
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + 'mf1 NO [ALERT] Your account is locked; call the helpdesk\x07\r\n']), [
      'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
      'fail auth-failed login: mf1 NO [ALERT] Your account is locked; call the helpdesk',
      'alert Your account is locked; call the helpdesk',
      'state failed',
    ]);
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + '* NO [ALERT] Quota at 95%\r\n* OK unrelated\r\nmf1 BAD [ALERT] Try the other server\r\n']).slice(1, 4), [
      'fail unavailable login: mf1 BAD [ALERT] Try the other server',
      'alert Quota at 95%',
      'alert Try the other server',
    ]);
    // Bounded as a login that succeeds bounds them: 400 characters each, four at most.
    const long = backendTrace({}, [DOVECOT_GREETING + `${'* OK [ALERT] one\r\n'.repeat(4)}mf1 NO [ALERT] ${'x'.repeat(500)}\r\n`]);
    assert.deepStrictEqual(long.filter((l) => l.startsWith('alert ')), Array(4).fill('alert one'));
    const one = backendTrace({}, [DOVECOT_GREETING + `mf1 NO [ALERT] ${'x'.repeat(500)}\r\n`]);
    assert.equal(one[2], `alert ${'x'.repeat(400)}...`);
    // No [ALERT], or one without text: nothing to tell.
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + 'mf1 NO [ALERT]\r\n']).filter((l) => l.startsWith('alert')), []);
    // One quoting the proxy account's password is not the user's to see.
    const proxied = { mode: 'master-user', proxyUser: 'mfproxy', proxyPassword: 'm4ster-secret' } as const;
    assert.deepStrictEqual(backendTrace(proxied, [DOVECOT_GREETING + 'mf1 NO [ALERT] bad password m4ster-secret for mfproxy\r\n']).filter((l) => l.startsWith('alert')), []);
  });

  it('replays credentials too long for its 1 KiB LOGIN buffer as AUTHENTICATE PLAIN with SASL-IR, behind the ID', () => {
    const password = 'p'.repeat(3000);
    const trace = backendTrace({ password, forward: { ip: '192.0.2.1', port: 1, sessionId: 'x' } }, [
      DOVECOT_GREETING + 'mf1 OK ID completed.\r\n' + `mf2 OK [CAPABILITY ${DOVECOT_POST_LOGIN}] Logged in\r\n`,
    ]);
    assert.deepStrictEqual(trace, [
      'send mf1 ID ("x-originating-ip" "192.0.2.1" "x-originating-port" "1" "x-session-id" "x")\r\n' + `mf2 AUTHENTICATE PLAIN ${b64(`\0alice\0${password}`)}\r\n`,
      `done ${DOVECOT_POST_LOGIN}`,
      'state done',
      'leftover ',
    ]);
  });

  it('counts the long-credentials bound in UTF-8 bytes of user and password together; up to it, LOGIN', () => {
    const at = 'p'.repeat(LONG_CREDENTIALS_BYTES - 'alice'.length);
    const phases = [DOVECOT_GREETING + `mf1 OK [CAPABILITY ${DOVECOT_POST_LOGIN}] Logged in\r\n`];
    assert.deepStrictEqual(backendTrace({ password: at }, phases)[0], `send mf1 LOGIN {5+}\r\nalice {${at.length}+}\r\n${at}\r\n`);
    // One character more, two bytes in UTF-8: over the bound.
    const over = `${'p'.repeat(LONG_CREDENTIALS_BYTES - 'alice'.length - 1)}\u00e9`;
    assert.deepStrictEqual(backendTrace({ password: over }, phases)[0], `send mf1 AUTHENTICATE PLAIN ${b64(`\0alice\0${over}`)}\r\n`);
  });

  it('sends long credentials on the continuation without SASL-IR, and keeps LOGIN where AUTH=PLAIN is not offered', () => {
    const password = 'p'.repeat(3000);
    assert.deepStrictEqual(backendTrace({ password }, ['* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n+ \r\nmf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n']), [
      `send mf1 AUTHENTICATE PLAIN\r\n${b64(`\0alice\0${password}`)}\r\n`,
      'done IMAP4rev1',
      'state done',
      'leftover ',
    ]);
    assert.deepStrictEqual(backendTrace({ password }, ['* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=LOGIN] ready\r\nmf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n'])[0], `send mf1 LOGIN {5+}\r\nalice {3000+}\r\n${password}\r\n`);
  });

  it('says the login went out only once it did: a close before it is an unreachable slot, after it a refusal', () => {
    const machine = imapAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, starttls: true });
    assert.equal(machine.loginSent, false);
    machine.receive(utf8('* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] ready\r\nmf1 OK go\r\n'));
    machine.tlsStarted();
    assert.equal(machine.state, 'capability');
    assert.equal(machine.loginSent, false);
    machine.receive(utf8('* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\nmf2 OK done\r\n'));
    assert.equal(machine.state, 'login');
    assert.equal(machine.loginSent, true);
  });

  it('reports a wrong password as auth-failed and an outage as unavailable', () => {
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + 'mf1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n']), [
      'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
      'fail auth-failed login: mf1 NO [AUTHENTICATIONFAILED] Authentication failed.',
      'state failed',
    ]);
    assert.deepStrictEqual(
      backendTrace({}, [DOVECOT_GREETING + 'mf1 NO [UNAVAILABLE] Temporary authentication failure. [host:2024-01-01 10:00:00]\r\n'])[1],
      'fail unavailable login: mf1 NO [UNAVAILABLE] Temporary authentication failure. [host:2024-01-01 10:00:00]',
    );
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + 'mf1 NO [INUSE] Mailbox is locked\r\n'])[1], 'fail in-use login: mf1 NO [INUSE] Mailbox is locked');
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + 'mf1 NO Login failed\r\n'])[1], 'fail auth-failed login: mf1 NO Login failed');
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + 'mf1 BAD Error in IMAP command\r\n'])[1], 'fail unavailable login: mf1 BAD Error in IMAP command');
    assert.deepStrictEqual(
      backendTrace({}, [DOVECOT_GREETING + '* BYE Server shutting down.\r\n'])[1],
      'fail unavailable login: unexpected response: * BYE Server shutting down.',
    );
  });
});

describe('IMAP backend login: Cyrus 3.6', () => {
  it('logs in with SASL PLAIN and an authorization identity after STARTTLS, discarding bytes after the OK', () => {
    const options = { mode: 'sasl-authzid', proxyUser: 'mailfront', proxyPassword: 'pr0xy', starttls: true } as const;
    // If the injected lines after the STARTTLS OK were read, the capabilities would lack SASL-IR.
    const trace = backendTrace(options, [
      CYRUS_GREETING + 'mf1 OK Begin TLS negotiation now\r\n' + '* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nmf2 OK injected\r\n',
      TLS,
      '* CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN SASL-IR\r\nmf2 OK Completed\r\n' + `mf3 ${CYRUS_LOGIN_OK}`,
    ]);
    assert.deepStrictEqual(trace, [
      'send mf1 STARTTLS\r\n',
      'starttls',
      'tls-started in tls-handshake',
      `send mf2 CAPABILITY\r\nmf3 AUTHENTICATE PLAIN ${b64('alice\0mailfront\0pr0xy')}\r\n`,
      `done ${CYRUS_POST_LOGIN}`,
      'state done',
      'leftover ',
    ]);
  });

  it('waits for the continuation when SASL-IR is not offered', () => {
    const options = { mode: 'sasl-authzid', proxyUser: 'mailfront', proxyPassword: 'pr0xy' } as const;
    assert.deepStrictEqual(
      backendTrace(options, ['* OK [CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN] localhost Cyrus IMAP 3.6.1 server ready\r\n+ \r\n' + `mf1 ${CYRUS_LOGIN_OK}`]),
      [`send mf1 AUTHENTICATE PLAIN\r\n${b64('alice\0mailfront\0pr0xy')}\r\n`, `done ${CYRUS_POST_LOGIN}`, 'state done', 'leftover '],
    );
  });

  it('sends the proxy password with AUTHENTICATE PLAIN only to a backend that lists AUTH=PLAIN', () => {
    const options = { mode: 'sasl-authzid', proxyUser: 'mailfront', proxyPassword: 'pr0xy', forward: { ip: '192.0.2.1', port: 1, sessionId: 'x' } } as const;
    const refused = 'fail unavailable login: login mode sasl-authzid needs AUTH=PLAIN, which the backend does not offer';
    // Nothing goes out, not even the ID, and the login counts as never sent.
    const machine = imapAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, ...options });
    const actions = machine.receive(bytes('* OK [CAPABILITY IMAP4rev1 LITERAL+ ID SASL-IR AUTH=GSSAPI] ready\r\n'));
    assert.deepStrictEqual(actions.map((a) => (a.type === 'fail' ? `fail ${a.refusal} ${a.detail}` : a.type)), [refused]);
    assert.equal(machine.loginSent, false);
    // The same when the list comes after STARTTLS.
    assert.deepStrictEqual(backendTrace({ ...options, starttls: true }, [CYRUS_GREETING + 'mf1 OK go\r\n', TLS, '* CAPABILITY IMAP4rev1 LITERAL+ ID SASL-IR\r\nmf2 OK done\r\n']), [
      'send mf1 STARTTLS\r\n',
      'starttls',
      'tls-started in tls-handshake',
      'send mf2 CAPABILITY\r\n',
      refused,
      'state failed',
    ]);
  });

  it('refuses to go on without STARTTLS when it is required', () => {
    assert.deepStrictEqual(backendTrace({ starttls: true }, ['* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n']), [
      'fail unavailable starttls: the backend does not offer STARTTLS',
      'state failed',
    ]);
    assert.deepStrictEqual(backendTrace({ starttls: true }, [CYRUS_GREETING + 'mf1 NO [UNAVAILABLE] TLS not configured\r\n']), [
      'send mf1 STARTTLS\r\n',
      'fail unavailable starttls: mf1 NO [UNAVAILABLE] TLS not configured',
      'state failed',
    ]);
  });
});

describe('IMAP backend login: other servers', () => {
  it('sends no password to a backend that advertises LOGINDISABLED without TLS, whatever the login mode', () => {
    // Dovecot with disable_plaintext_auth (and ssl) on a connection without TLS.
    const greeting = '* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ STARTTLS LOGINDISABLED] Dovecot ready.\r\n';
    const refused = 'fail unavailable login: the backend advertises LOGINDISABLED (it takes no password on a connection without TLS): set backend.tls to starttls or implicit';
    const forward = { ip: '192.0.2.1', port: 1, sessionId: 'x' };
    const modes = [
      {},
      { password: 'p'.repeat(3000) },
      { mode: 'master-user', proxyUser: 'mfproxy', proxyPassword: 'm4ster' },
      { mode: 'sasl-authzid', proxyUser: 'mailfront', proxyPassword: 'pr0xy' },
    ] as const;
    for (const options of modes) {
      const machine = imapAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, ...options, forward });
      const actions = machine.receive(bytes(`${greeting}mf1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n`));
      assert.deepStrictEqual(actions.map((a) => (a.type === 'fail' ? `fail ${a.refusal} ${a.detail}` : a.type)), [refused], JSON.stringify(options));
      assert.equal(machine.loginSent, false);
      // Even where the backend would take AUTHENTICATE PLAIN without TLS: LOGINDISABLED says it wants TLS.
      assert.deepStrictEqual(backendTrace(options, [greeting.replace('LOGINDISABLED', 'LOGINDISABLED AUTH=PLAIN')]), [refused, 'state failed']);
    }
    // Learned from CAPABILITY when the greeting has none (the CAPABILITY itself is no secret).
    assert.deepStrictEqual(backendTrace({}, ['* OK ready\r\n* CAPABILITY IMAP4rev1 LITERAL+ LOGINDISABLED\r\nmf1 OK done\r\n']), ['send mf1 CAPABILITY\r\n', refused, 'state failed']);
  });

  it('on a connection that is TLS from its first byte (backend.tls: implicit), LOGINDISABLED only rules out LOGIN', () => {
    const greeting = '* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ LOGINDISABLED AUTH=PLAIN] ready\r\n';
    assert.deepStrictEqual(backendTrace({ implicitTls: true }, [greeting, 'mf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n']), [
      `send mf1 AUTHENTICATE PLAIN ${b64('\0alice\0secret')}\r\n`,
      'done IMAP4rev1',
      'state done',
      'leftover ',
    ]);
  });

  it('after STARTTLS, takes the new capabilities: LOGIN where LOGINDISABLED is gone, AUTHENTICATE PLAIN where it stays', () => {
    const greeting = '* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ STARTTLS LOGINDISABLED] ready\r\nmf1 OK go\r\n';
    const after = (list: string, login: string): string[] => backendTrace({ starttls: true }, [greeting, TLS, `* CAPABILITY ${list}\r\nmf2 OK done\r\n${login}`]).slice(3);
    assert.deepStrictEqual(after('IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN', 'mf3 OK [CAPABILITY IMAP4rev1] Logged in\r\n'), [
      'send mf2 CAPABILITY\r\nmf3 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
      'done IMAP4rev1',
      'state done',
      'leftover ',
    ]);
    // RFC 9051 §6.2.3: no LOGIN to a server that lists LOGINDISABLED, even over TLS.
    assert.deepStrictEqual(after('IMAP4rev1 SASL-IR LITERAL+ LOGINDISABLED AUTH=PLAIN', 'mf3 OK [CAPABILITY IMAP4rev1] Logged in\r\n'), [
      `send mf2 CAPABILITY\r\nmf3 AUTHENTICATE PLAIN ${b64('\0alice\0secret')}\r\n`,
      'done IMAP4rev1',
      'state done',
      'leftover ',
    ]);
    // The master user's name with its separator, as Dovecot's PLAIN takes it; without SASL-IR on the continuation.
    const master = { starttls: true, mode: 'master-user', proxyUser: 'mfproxy', proxyPassword: 'm4ster' } as const;
    assert.deepStrictEqual(backendTrace(master, [greeting, TLS, '* CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN\r\nmf2 OK done\r\n+ \r\nmf3 OK [CAPABILITY IMAP4rev1] in\r\n']).slice(3), [
      `send mf2 CAPABILITY\r\nmf3 AUTHENTICATE PLAIN\r\n${b64('\0alice*mfproxy\0m4ster')}\r\n`,
      'done IMAP4rev1',
      'state done',
      'leftover ',
    ]);
    assert.deepStrictEqual(after('IMAP4rev1 SASL-IR LITERAL+ LOGINDISABLED AUTH=GSSAPI', ''), [
      'send mf2 CAPABILITY\r\n',
      'fail unavailable login: the backend advertises LOGINDISABLED and does not offer AUTH=PLAIN',
      'state failed',
    ]);
  });

  it('uses synchronising literals without LITERAL+, and asks for capabilities after login', () => {
    assert.deepStrictEqual(
      backendTrace({}, [
        '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Old server ready\r\n+ OK\r\n+ Ready for additional command text\r\nmf1 OK Logged in\r\n' +
          '* CAPABILITY IMAP4rev1 IDLE  UIDPLUS\r\nmf2 OK Capability completed\r\n* 1 EXISTS\r\n',
      ]),
      [
        'send mf1 LOGIN {5}\r\nalice {6}\r\nsecret\r\nmf2 CAPABILITY\r\n',
        'done IMAP4rev1 IDLE UIDPLUS',
        'state done',
        'leftover * 1 EXISTS\r\n',
      ],
    );
  });

  it('uses LITERAL- only up to 4096 octets', () => {
    const password = 'x'.repeat(5000);
    assert.deepStrictEqual(
      // No AUTH=PLAIN: a password this long would go as AUTHENTICATE PLAIN otherwise.
      backendTrace({ password }, ['* OK [CAPABILITY IMAP4rev1 LITERAL-] ready\r\n+ go ahead\r\nmf1 OK [CAPABILITY IMAP4rev1 LITERAL-] ok\r\n']),
      [`send mf1 LOGIN {5+}\r\nalice {5000}\r\n${password}\r\n`, 'done IMAP4rev1 LITERAL-', 'state done', 'leftover '],
    );
  });

  it('asks for capabilities when the greeting has none, and takes an untagged CAPABILITY before the OK', () => {
    assert.deepStrictEqual(
      backendTrace({}, [
        '* OK IMAP server ready\r\n* CAPABILITY IMAP4rev1 LITERAL+\r\nmf1 OK done\r\n' +
          '* CAPABILITY IMAP4rev1 IDLE\r\n* ID ("name" {7}\r\nDovecot)\r\nmf2 OK Logged in\r\n',
      ]),
      ['send mf1 CAPABILITY\r\nmf2 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n', 'done IMAP4rev1 IDLE', 'state done', 'leftover '],
    );
  });

  it('fails on greetings it cannot log in after', () => {
    for (const greeting of ['* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice', '* BYE Too many connections', 'HTTP/1.1 400 Bad Request', '+ hello']) {
      assert.deepStrictEqual(backendTrace({}, [`${greeting}\r\n`]), [`fail unavailable greeting: ${greeting}`, 'state failed']);
    }
  });

  it('fails on unexpected responses', () => {
    assert.deepStrictEqual(backendTrace({}, ['* OK ready\r\n+ more\r\n']), [
      'send mf1 CAPABILITY\r\n',
      'fail unavailable capability: unexpected response: + more',
      'state failed',
    ]);
    assert.deepStrictEqual(backendTrace({}, ['* OK ready\r\nmf1 OK no capabilities\r\n']), [
      'send mf1 CAPABILITY\r\n',
      'fail unavailable capability: no CAPABILITY in the reply',
      'state failed',
    ]);
    assert.deepStrictEqual(backendTrace({}, ['* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\nzz9 OK what\r\n']), [
      'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
      'fail unavailable login: unexpected response: zz9 OK what',
      'state failed',
    ]);
    assert.deepStrictEqual(backendTrace({}, ['* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n+ again\r\n']), [
      'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n',
      'fail unavailable login: unexpected continuation: + again',
      'state failed',
    ]);
  });

  it('never sends credentials with CR, LF or NUL, nor logs in without a proxy account', () => {
    for (const options of [{ password: 'se\r\ncret' }, { user: 'al\0ice' }, { mode: 'master-user', proxyUser: 'p\n', proxyPassword: 'x' }] as const) {
      assert.deepStrictEqual(backendTrace(options, [DOVECOT_GREETING + 'mf1 OK Logged in\r\n']), [
        'fail auth-failed greeting: credentials with unsafe characters',
        'state failed',
      ]);
    }
    assert.deepStrictEqual(backendTrace({ mode: 'sasl-authzid' }, [DOVECOT_GREETING]), [
      'fail unavailable greeting: login mode sasl-authzid needs a proxy user and password',
      'state failed',
    ]);
  });

  it('bounds one response, literals included', () => {
    const long = bytes(`* OK ${'x'.repeat(MAX_BACKEND_RESPONSE_BYTES)}\r\n`);
    for (const { chunk } of chunkers(3)) {
      assert.deepStrictEqual(runBackend({}, [long], chunk), [
        `fail unavailable greeting: response longer than ${MAX_BACKEND_RESPONSE_BYTES} bytes`,
        'state failed',
      ]);
    }
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + '* ID ("name" {99999999999999999999}\r\n']).slice(1), [
      `fail unavailable login: response longer than ${MAX_BACKEND_RESPONSE_BYTES} bytes`,
      'state failed',
    ]);
  });

  it('bounds the whole dialogue: a backend that keeps sending untagged responses fails the login', () => {
    // Untagged responses while the LOGIN is answered are ignored, and each is small: without a
    // bound on the dialogue the stream kept the login parsing until its timeout.
    const whole = (b: Uint8Array): Uint8Array[] => [b];
    const filler = '* OK filler\r\n';
    const flood = [DOVECOT_GREETING, ...Array.from({ length: MAX_BACKEND_DIALOGUE_RESPONSES + 50 }, () => filler), 'mf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n'];
    assert.deepStrictEqual(runBackend({}, flood, whole).slice(1), [
      `fail unavailable login: more than ${MAX_BACKEND_DIALOGUE_RESPONSES} responses in the login dialogue`,
      'state failed',
    ]);
    // The same in one read.
    assert.deepStrictEqual(runBackend({}, [flood.join('')], whole).slice(1), [
      `fail unavailable login: more than ${MAX_BACKEND_DIALOGUE_RESPONSES} responses in the login dialogue`,
      'state failed',
    ]);
    // In bytes: a few responses, each under the bound of one, that add up past the dialogue's.
    const big = `* OK ${'x'.repeat(MAX_BACKEND_RESPONSE_BYTES - 100)}\r\n`;
    const count = Math.ceil(MAX_BACKEND_DIALOGUE_BYTES / big.length) + 1;
    assert.deepStrictEqual(runBackend({}, [DOVECOT_GREETING, ...Array.from({ length: count }, () => big), 'mf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n'], whole).slice(1), [
      `fail unavailable login: login dialogue longer than ${MAX_BACKEND_DIALOGUE_BYTES} bytes`,
      'state failed',
    ]);
    // Literals count too.
    const literal = `* ID ("name" {${MAX_BACKEND_RESPONSE_BYTES - 100}}\r\n${'y'.repeat(MAX_BACKEND_RESPONSE_BYTES - 100)})\r\n`;
    assert.deepStrictEqual(runBackend({}, [DOVECOT_GREETING, ...Array.from({ length: count }, () => literal), 'mf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n'], whole).slice(1), [
      `fail unavailable login: login dialogue longer than ${MAX_BACKEND_DIALOGUE_BYTES} bytes`,
      'state failed',
    ]);
    // The counts run across STARTTLS and every state.
    const perState = Math.floor(MAX_BACKEND_DIALOGUE_RESPONSES / 2);
    const some = (n: number): string => filler.repeat(n);
    assert.deepStrictEqual(
      runBackend({ starttls: true }, [CYRUS_GREETING + some(perState) + 'mf1 OK go\r\n', TLS, some(perState) + `* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\nmf2 OK done\r\n`, CYRUS_LOGIN_OK], whole).slice(-2),
      [`fail unavailable capability: more than ${MAX_BACKEND_DIALOGUE_RESPONSES} responses in the login dialogue`, 'state failed'],
    );
  });

  it('a real dialogue stays far inside the bound of the whole dialogue', () => {
    // Cyrus with STARTTLS, an ID and its long post-login capability list: the most a login reads.
    const trace = runBackend({ starttls: true, forward: { ip: '192.0.2.1', port: 1, sessionId: 'x' } }, [
      CYRUS_GREETING + 'mf1 OK Begin TLS negotiation now\r\n',
      TLS,
      `* CAPABILITY IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN SASL-IR\r\nmf2 OK Completed\r\n`,
      '* ID ("name" "Cyrus IMAPD" "version" "3.6.1-Debian-3.6.1-4+deb12u5" "vendor" "Project Cyrus" "support-url" "https://www.cyrusimap.org" "os" "Linux" "os-version" "6.1.0" "environment" "Built w/Cyrus SASL 2.1.28; Running w/Cyrus SASL 2.1.28; Built w/OpenSSL 3.0.15; Running w/OpenSSL 3.0.15")\r\nmf3 OK Completed\r\n',
      'mf4 ' + CYRUS_LOGIN_OK,
    ], (b) => [b]);
    assert.equal(trace.at(-3), `done ${CYRUS_POST_LOGIN}`);
  });

  it('reads "{N}" at the end of a status response or continuation as text, and at the end of untagged data as a literal', () => {
    // RFC 9051 §7.1: resp-text runs to the end of the line. Read as a literal, the NO below
    // would leave the login waiting for 30 octets until its timeout.
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + 'mf1 NO [AUTHENTICATIONFAILED] Authentication failed {30}\r\n']).slice(1), [
      'fail auth-failed login: mf1 NO [AUTHENTICATIONFAILED] Authentication failed {30}',
      'state failed',
    ]);
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + '* BYE going down {12}\r\n']).slice(1), ['fail unavailable login: unexpected response: * BYE going down {12}', 'state failed']);
    // Untagged OK (an ALERT), a tagged OK and continuation requests: text too.
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + '* OK [ALERT] quota {5}\r\nmf1 OK Logged in {7}\r\n* CAPABILITY IMAP4rev1\r\nmf2 OK done\r\n']), [
      'send mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\nmf2 CAPABILITY\r\n',
      'done IMAP4rev1',
      'state done',
      'leftover * OK [ALERT] quota {5}\r\n',
    ]);
    assert.deepStrictEqual(backendTrace({}, ['* OK [CAPABILITY IMAP4rev1] ready\r\n', '+ send it {4}\r\n', '+ \r\n', 'mf1 OK [CAPABILITY IMAP4rev1] in\r\n']), [
      'send mf1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n',
      'done IMAP4rev1',
      'state done',
      'leftover ',
    ]);
    // Untagged data still skips its literal, and a line of the literal that looks like a tagged NO is not read.
    assert.deepStrictEqual(backendTrace({}, [DOVECOT_GREETING + '* ID ("name" {13}\r\nmf1 NO haha\r\n)\r\nmf1 OK [CAPABILITY IMAP4rev1] Logged in\r\n']).slice(1), ['done IMAP4rev1', 'state done', 'leftover ']);
  });

  it('names its states and ignores input after the end', () => {
    const machine = imapAdapter.createBackendLogin({ ...BACKEND_DEFAULTS, starttls: true });
    assert.equal(machine.state, 'greeting');
    machine.receive(utf8(CYRUS_GREETING));
    assert.equal(machine.state, 'starttls');
    assert.deepStrictEqual(machine.receive(utf8('mf1 OK go\r\n')), [{ type: 'starttls' }]);
    assert.equal(machine.state, 'tls-handshake');
    assert.deepStrictEqual(machine.receive(utf8('* junk\r\n')), []);
    assert.equal(machine.tlsStarted().length, 1);
    assert.equal(machine.state, 'capability');
    assert.deepStrictEqual(machine.tlsStarted(), []);
  });

  it('classifies NO responses by their RFC 5530 code', () => {
    assert.equal(classifyLoginNo(null), 'auth-failed');
    assert.equal(classifyLoginNo('AUTHENTICATIONFAILED'), 'auth-failed');
    assert.equal(classifyLoginNo('EXPIRED'), 'auth-failed');
    assert.equal(classifyLoginNo('UNAVAILABLE'), 'unavailable');
    assert.equal(classifyLoginNo('SERVERBUG'), 'unavailable');
    assert.equal(classifyLoginNo('INUSE'), 'in-use');
  });
});

describe('IMAP backend login: random responses', () => {
  const pieces = [
    '* OK ', '* CAPABILITY ', '[CAPABILITY IMAP4rev1 LITERAL+ SASL-IR STARTTLS] ', 'IMAP4rev1 ', 'LITERAL- ', 'mf1 ', 'mf2 ', 'mf3 ',
    'OK ', 'NO ', 'BAD ', '[AUTHENTICATIONFAILED] ', '[UNAVAILABLE] ', '* BYE ', '* PREAUTH ', '+ ', '{3}\r\n', '{99999999}\r\n',
    '\r\n', '\n', 'text ', '\x00', '\xff',
  ];
  const input = fc.array(fc.constantFrom(...pieces), { maxLength: 40 }).map((parts) => parts.join(''));
  const options = fc.record({
    mode: fc.constantFrom('replay', 'master-user', 'sasl-authzid'),
    starttls: fc.boolean(),
    proxyUser: fc.constant('proxy'),
    proxyPassword: fc.constant('pw'),
  });

  it('never throws, and gives the same result however the responses are split', () => {
    fc.assert(
      fc.property(input, options, fc.array(fc.nat(), { maxLength: 6 }), (text, opts, cuts) => {
        const data = Buffer.from(text, 'latin1');
        const positions = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((x, y) => x - y);
        const cut = (b: Uint8Array): Uint8Array[] => [0, ...positions].map((from, i) => b.subarray(from, [...positions, b.length][i]));
        const expected = runBackend(opts, [data], (b) => [b]);
        assert.deepStrictEqual(runBackend(opts, [data], cut), expected);
        assert.deepStrictEqual(runBackend(opts, [data], (b) => Array.from(b, (_, i) => b.subarray(i, i + 1))), expected);
      }),
      { numRuns: 500 },
    );
  });
});
