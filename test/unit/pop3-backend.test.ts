import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_BACKEND_RESPONSE_BYTES } from '../../src/limits.js';
import { LONG_CREDENTIALS_BYTES } from '../../src/protocol/pop3/backend.js';
import { classifyRefusal, pop3Adapter } from '../../src/protocol/pop3/index.js';
import type { BackendLoginOptions } from '../../src/protocol/types.js';
import { backendEverySplit, sent, TLS, type Event } from './pop3-harness.js';

// Transcripts as Dovecot 2.3 pop3-login and Cyrus 3.6 pop3d send them.
const DOVECOT_GREETING = '+OK Dovecot (Debian) ready.\r\n';
const DOVECOT_TRUSTED_GREETING = '+OK [XCLIENT] Dovecot (Debian) ready.\r\n';
const DOVECOT_LOGGED_IN = '+OK Logged in.\r\n';
const DOVECOT_LOCKED = "-ERR [IN-USE] Couldn't open INBOX: Mailbox is locked\r\n";
const DOVECOT_AUTH_FAILED = '-ERR [AUTH] Authentication failed.\r\n';
const DOVECOT_CAPA = '+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n';
// disable_plaintext_auth = yes, to a peer neither local nor in login_trusted_networks, without TLS.
const DOVECOT_CAPA_NO_PLAINTEXT = '+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nSASL\r\n.\r\n';
const DOVECOT_NO_PLAINTEXT_USER = '-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n';

const CYRUS_GREETING = '+OK localhost Cyrus POP3 3.6.1 server ready <1896583371.1714060800@localhost>\r\n';
const CYRUS_LOGGED_IN = '+OK Mailbox locked and ready\r\n';
const CYRUS_CAPA = '+OK List of capabilities follows\r\nSASL PLAIN LOGIN\r\nEXPIRE NEVER\r\nLOGIN-DELAY 0\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nUSER\r\nIMPLEMENTATION Cyrus POP3 3.6.1\r\n.\r\n';
// allowplaintext: no, without TLS: no SASL line at all, and no USER.
const CYRUS_CAPA_NO_PLAINTEXT = '+OK List of capabilities follows\r\nEXPIRE NEVER\r\nLOGIN-DELAY 0\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nIMPLEMENTATION Cyrus POP3 3.6.1\r\n.\r\n';
const CYRUS_NO_PLAINTEXT_USER = '-ERR [AUTH] USER command only available under a layer\r\n';

const REPLAY: BackendLoginOptions = { mode: 'replay', user: 'alice', password: 'pass word', starttls: false };
const MASTER: BackendLoginOptions = { mode: 'master-user', user: 'alice', password: 'unused', proxyUser: 'mailfront', proxyPassword: 'master secret', starttls: false };
const AUTHZID: BackendLoginOptions = { mode: 'sasl-authzid', user: 'alice', password: 'unused', proxyUser: 'mailfront', proxyPassword: 'proxy secret', starttls: false };
const FORWARD = { ip: '192.0.2.7', port: 50123, sessionId: 'Qk1hU2Vzc2lvbg' };

const send = (line: string): Event => ({ send: `${line}\r\n` });
const CAPA = send('CAPA');
const NO_PLAINTEXT = 'capa: the backend offers neither SASL PLAIN nor USER (it takes no password on a connection without TLS): set backend.tls to starttls or implicit';
const DONE: Event = { done: { capabilities: null } };
const fail = (refusal: string, detail: string): Event => ({ fail: { refusal, detail } });
const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

describe('pop3 backend login: Dovecot', () => {
  it('replays USER and PASS straight after the greeting, with no CAPA', () => {
    const run = backendEverySplit(REPLAY, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events, [send('USER alice'), send('PASS pass word'), DONE]);
    assert.equal(run.state, 'done');
  });

  it('gives the same result when the whole transcript arrives in one chunk', () => {
    const run = backendEverySplit(REPLAY, [DOVECOT_GREETING + '+OK\r\n' + DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events, [send('USER alice'), send('PASS pass word'), DONE]);
  });

  it('relays what the backend sent after its login reply', () => {
    const run = backendEverySplit(REPLAY, [DOVECOT_GREETING, '+OK\r\n', `${DOVECOT_LOGGED_IN}+OK 2 messages (320 octets)\r\n`]);
    assert.deepEqual(run.events, [send('USER alice'), send('PASS pass word'), DONE, { relayed: '+OK 2 messages (320 octets)\r\n' }]);
  });

  it('logs in as a master user with "user*master"', () => {
    const run = backendEverySplit(MASTER, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events, [send('USER alice*mailfront'), send('PASS master secret'), DONE]);
  });

  it('uses a configured master user separator', () => {
    const run = backendEverySplit({ ...MASTER, masterUserSeparator: '%' }, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events, [send('USER alice%mailfront'), send('PASS master secret'), DONE]);
  });

  it('issues STLS, discards what follows its +OK, and logs in under TLS', () => {
    const script = [
      DOVECOT_GREETING,
      // A man in the middle appends a fake login reply to the STLS answer.
      '+OK Begin TLS negotiation now.\r\n+OK Logged in.\r\n',
      '-ERR more injected\r\n',
      TLS,
      '+OK\r\n',
      DOVECOT_LOGGED_IN,
    ] as const;
    const run = backendEverySplit({ ...REPLAY, starttls: true }, script);
    assert.deepEqual(run.events, [send('STLS'), { starttls: true }, send('USER alice'), send('PASS pass word'), DONE]);
  });

  it('fails as unavailable when STLS is refused', () => {
    const run = backendEverySplit({ ...REPLAY, starttls: true }, [DOVECOT_GREETING, '-ERR TLS support isn\'t enabled.\r\n']);
    assert.deepEqual(run.events, [send('STLS'), fail('unavailable', "STLS refused: -ERR TLS support isn't enabled.")]);
    assert.equal(run.state, 'failed');
  });

  it('pipelines XCLIENT and USER in one write when the greeting says [XCLIENT] (Dovecot trusted networks)', () => {
    const run = backendEverySplit({ ...REPLAY, forward: FORWARD }, [DOVECOT_TRUSTED_GREETING, '+OK Updated\r\n+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events, [{ send: 'XCLIENT ADDR=192.0.2.7 PORT=50123 SESSION=Qk1hU2Vzc2lvbg\r\nUSER alice\r\n' }, send('PASS pass word'), DONE]);
    const v6 = backendEverySplit({ ...REPLAY, forward: { ...FORWARD, ip: '2001:db8::7' } }, [DOVECOT_TRUSTED_GREETING, '+OK Updated\r\n', '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(v6.events[0], { send: 'XCLIENT ADDR=2001:db8::7 PORT=50123 SESSION=Qk1hU2Vzc2lvbg\r\nUSER alice\r\n' });
  });

  it('pipelines XCLIENT ahead of AUTH PLAIN (once CAPA listed PLAIN), and of a master-user USER', () => {
    const response = b64('alice\0mailfront\0proxy secret');
    const sasl = backendEverySplit({ ...AUTHZID, forward: FORWARD }, [DOVECOT_TRUSTED_GREETING, DOVECOT_CAPA, '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(sasl.events, [CAPA, { send: `XCLIENT ADDR=192.0.2.7 PORT=50123 SESSION=Qk1hU2Vzc2lvbg\r\nAUTH PLAIN ${response}\r\n` }, DONE]);
    const master = backendEverySplit({ ...MASTER, forward: FORWARD }, [DOVECOT_TRUSTED_GREETING, '+OK\r\n', '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(master.events.slice(1), [send('PASS master secret'), DONE]);
  });

  it('goes on to log in when XCLIENT is refused, and fails on a refused USER behind it', () => {
    const run = backendEverySplit({ ...REPLAY, forward: FORWARD }, [DOVECOT_TRUSTED_GREETING, '-ERR Unknown command.\r\n', '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events.slice(1), [send('PASS pass word'), DONE]);
    const refused = backendEverySplit({ ...REPLAY, forward: FORWARD }, [DOVECOT_TRUSTED_GREETING, '+OK\r\n', '-ERR [AUTH] No such user\r\n']);
    assert.deepEqual(refused.events.slice(1), [fail('auth-failed', '-ERR [AUTH] No such user')]);
    const garbled = backendEverySplit({ ...REPLAY, forward: FORWARD }, [DOVECOT_TRUSTED_GREETING, '* what\r\n']);
    assert.deepEqual(garbled.events.slice(1), [fail('unavailable', 'unexpected XCLIENT reply: * what')]);
  });

  it('does not send XCLIENT to an untrusting backend, nor without a forward option', () => {
    const untrusted = backendEverySplit({ ...REPLAY, forward: FORWARD }, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(untrusted.events, [send('USER alice'), send('PASS pass word'), DONE]);
    const unasked = backendEverySplit(REPLAY, [DOVECOT_TRUSTED_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(unasked.events, [send('USER alice'), send('PASS pass word'), DONE]);
  });

  it('leaves out XCLIENT values that could not be sent safely', () => {
    const run = backendEverySplit({ ...REPLAY, forward: { ip: '192.0.2.7', port: 70000, sessionId: 'a b\r\nDELE 1' } }, [DOVECOT_TRUSTED_GREETING, '+OK\r\n', '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events[0], { send: 'XCLIENT ADDR=192.0.2.7\r\nUSER alice\r\n' });
    const badIp = backendEverySplit({ ...REPLAY, forward: { ...FORWARD, ip: '1.2.3.4 PORT=1' } }, [DOVECOT_TRUSTED_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(badIp.events, [send('USER alice'), send('PASS pass word'), DONE]);
  });

  it('replays credentials too long for its 1 KiB line buffer as AUTH PLAIN, the response on the continuation', () => {
    const password = 'p'.repeat(3000);
    const response = b64(`\0alice\0${password}`);
    const run = backendEverySplit({ ...REPLAY, password }, [DOVECOT_GREETING, DOVECOT_CAPA, '+ \r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events, [CAPA, send('AUTH PLAIN'), send(response), DONE]);
    // Behind XCLIENT in the same write, as USER would be.
    const forwarded = backendEverySplit({ ...REPLAY, password, forward: FORWARD }, [DOVECOT_TRUSTED_GREETING, DOVECOT_CAPA, '+OK\r\n', '+ \r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(forwarded.events, [CAPA, { send: 'XCLIENT ADDR=192.0.2.7 PORT=50123 SESSION=Qk1hU2Vzc2lvbg\r\nAUTH PLAIN\r\n' }, send(response), DONE]);
    // A user name with a space, which USER could not carry, is fine in PLAIN.
    const spaced = backendEverySplit({ ...REPLAY, user: 'al ice', password }, [DOVECOT_GREETING, DOVECOT_CAPA, '+ \r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(spaced.events, [CAPA, send('AUTH PLAIN'), send(b64(`\0al ice\0${password}`)), DONE]);
    const refused = backendEverySplit({ ...REPLAY, password }, [DOVECOT_GREETING, DOVECOT_CAPA, '+ \r\n', DOVECOT_AUTH_FAILED]);
    assert.deepEqual(refused.events, [CAPA, send('AUTH PLAIN'), send(response), fail('auth-failed', '-ERR [AUTH] Authentication failed.')]);
  });

  it('keeps USER and PASS up to the long-credentials bound, counted in UTF-8 bytes of both', () => {
    const at = 'p'.repeat(LONG_CREDENTIALS_BYTES - 'alice'.length);
    assert.deepEqual(backendEverySplit({ ...REPLAY, password: at }, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]).events, [send('USER alice'), send(`PASS ${at}`), DONE]);
    const over = `${'p'.repeat(LONG_CREDENTIALS_BYTES - 'alice'.length - 1)}\u00e9`;
    assert.deepEqual(backendEverySplit({ ...REPLAY, password: over }, [DOVECOT_GREETING, DOVECOT_CAPA, '+ \r\n', DOVECOT_LOGGED_IN]).events, [CAPA, send('AUTH PLAIN'), send(b64(`\0alice\0${over}`)), DONE]);
  });

  it('says the login went out once USER or AUTH did, XCLIENT ahead of it or not', () => {
    for (const [options, greeting] of [[{ ...REPLAY, starttls: true }, DOVECOT_GREETING], [{ ...REPLAY, forward: FORWARD }, DOVECOT_TRUSTED_GREETING]] as const) {
      const machine = pop3Adapter.createBackendLogin(options);
      assert.equal(machine.loginSent, false);
      machine.receive(Buffer.from(greeting));
      if (options.starttls) {
        assert.equal(machine.loginSent, false);
        machine.receive(Buffer.from('+OK Begin TLS negotiation\r\n'));
        assert.equal(machine.loginSent, false);
        machine.tlsStarted();
      }
      assert.equal(machine.loginSent, true, machine.state);
    }
  });

  it('reports a locked mailbox as in-use', () => {
    const run = backendEverySplit(REPLAY, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_LOCKED]);
    assert.deepEqual(run.events.at(-1), fail('in-use', "-ERR [IN-USE] Couldn't open INBOX: Mailbox is locked"));
  });

  it('reports a refused password as auth-failed, with the backend text only as detail', () => {
    const run = backendEverySplit(REPLAY, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_AUTH_FAILED]);
    assert.deepEqual(run.events.at(-1), fail('auth-failed', '-ERR [AUTH] Authentication failed.'));
  });

  it('reports a temporary backend failure as unavailable', () => {
    const run = backendEverySplit(REPLAY, [DOVECOT_GREETING, '+OK\r\n', '-ERR [SYS/TEMP] Temporary authentication failure.\r\n']);
    assert.deepEqual(run.events.at(-1), fail('unavailable', '-ERR [SYS/TEMP] Temporary authentication failure.'));
  });

  it('fails a refused USER without sending the password', () => {
    const run = backendEverySplit(REPLAY, [DOVECOT_GREETING, '-ERR [AUTH] No such user\r\n']);
    assert.deepEqual(run.events, [send('USER alice'), fail('auth-failed', '-ERR [AUTH] No such user')]);
  });
});

describe('pop3 backend login: Cyrus', () => {
  it('logs in with SASL PLAIN and an authorization identity', () => {
    const run = backendEverySplit(AUTHZID, [CYRUS_GREETING, CYRUS_CAPA, CYRUS_LOGGED_IN]);
    const response = b64('alice\0mailfront\0proxy secret');
    assert.deepEqual(run.events, [CAPA, send(`AUTH PLAIN ${response}`), DONE]);
  });

  it('sends the PLAIN response on a continuation when the backend asks for one', () => {
    const run = backendEverySplit(AUTHZID, [CYRUS_GREETING, CYRUS_CAPA, '+ \r\n', CYRUS_LOGGED_IN]);
    const response = b64('alice\0mailfront\0proxy secret');
    assert.deepEqual(run.events, [CAPA, send(`AUTH PLAIN ${response}`), send(response), DONE]);
  });

  it('waits for the empty challenge when the initial response would pass 255 octets (RFC 5034 §4)', () => {
    const options = { ...AUTHZID, proxyPassword: 'p'.repeat(200) };
    const response = b64(`alice\0mailfront\0${'p'.repeat(200)}`);
    const run = backendEverySplit(options, [CYRUS_GREETING, CYRUS_CAPA, '+\r\n', CYRUS_LOGGED_IN]);
    assert.deepEqual(run.events, [CAPA, send('AUTH PLAIN'), send(response), DONE]);
  });

  it('replays USER and PASS', () => {
    const run = backendEverySplit(REPLAY, [CYRUS_GREETING, '+OK Name is a valid mailbox\r\n', CYRUS_LOGGED_IN]);
    assert.deepEqual(run.events, [send('USER alice'), send('PASS pass word'), DONE]);
  });

  it('reports a refused SASL login as auth-failed and a locked maildrop as in-use', () => {
    const refused = backendEverySplit(AUTHZID, [CYRUS_GREETING, CYRUS_CAPA, '-ERR [AUTH] authentication failure\r\n']);
    assert.deepEqual(refused.events.at(-1), fail('auth-failed', '-ERR [AUTH] authentication failure'));
    const locked = backendEverySplit(AUTHZID, [CYRUS_GREETING, CYRUS_CAPA, '-ERR [IN-USE] Unable to lock maildrop\r\n']);
    assert.deepEqual(locked.events.at(-1), fail('in-use', '-ERR [IN-USE] Unable to lock maildrop'));
  });

  it('reports a login sooner than popminpoll allows as login-delay, not as the server\'s trouble', () => {
    // Cyrus pop3d's answer (popminpoll: 1) to a login within a minute of the last one.
    const delayed = '-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart\r\n';
    assert.deepEqual(backendEverySplit(AUTHZID, [CYRUS_GREETING, CYRUS_CAPA, delayed]).events.at(-1), fail('login-delay', delayed.trimEnd()));
    assert.deepEqual(backendEverySplit(REPLAY, [CYRUS_GREETING, '+OK Name is a valid mailbox\r\n', delayed]).events.at(-1), fail('login-delay', delayed.trimEnd()));
  });

  it('fails when the backend challenges again after the response', () => {
    const run = backendEverySplit(AUTHZID, [CYRUS_GREETING, CYRUS_CAPA, '+ \r\n', '+ \r\n']);
    assert.deepEqual(run.events.at(-1), fail('unavailable', 'unexpected login reply: +'));
  });
});

describe('pop3 backend login: no password in clear to a backend that does not take one', () => {
  const long = { ...REPLAY, password: 'p'.repeat(3000) };
  const secrets = [b64('alice\0mailfront\0proxy secret'), b64(`\0alice\0${'p'.repeat(3000)}`)];
  const noSecret = (events: readonly Event[]): void => {
    for (const secret of secrets) assert.ok(!sent(events).includes(secret), sent(events));
    assert.ok(!sent(events).includes('AUTH'), sent(events));
  };

  it('asks CAPA before AUTH PLAIN without TLS, and sends nothing more when SASL lists no PLAIN and USER is not offered (Dovecot)', () => {
    for (const options of [AUTHZID, long, { ...AUTHZID, forward: FORWARD }, { ...long, forward: FORWARD }]) {
      const run = backendEverySplit(options, [DOVECOT_GREETING, DOVECOT_CAPA_NO_PLAINTEXT]);
      assert.deepEqual(run.events, [CAPA, fail('unavailable', NO_PLAINTEXT)], JSON.stringify(options));
      assert.equal(run.state, 'failed');
      noSecret(run.events);
    }
  });

  it('fails so too against Cyrus with allowplaintext: no, which lists no SASL line at all', () => {
    const run = backendEverySplit(AUTHZID, [CYRUS_GREETING, CYRUS_CAPA_NO_PLAINTEXT]);
    assert.deepEqual(run.events, [CAPA, fail('unavailable', NO_PLAINTEXT)]);
    noSecret(run.events);
  });

  it('sends no CAPA under TLS, implicit or after STLS: the PLAIN response is not in clear there', () => {
    const response = b64('alice\0mailfront\0proxy secret');
    const implicit = backendEverySplit({ ...AUTHZID, implicitTls: true }, [DOVECOT_GREETING, DOVECOT_LOGGED_IN]);
    assert.deepEqual(implicit.events, [send(`AUTH PLAIN ${response}`), DONE]);
    const stls = backendEverySplit({ ...AUTHZID, starttls: true }, [DOVECOT_GREETING, '+OK Begin TLS negotiation now.\r\n', TLS, DOVECOT_LOGGED_IN]);
    assert.deepEqual(stls.events, [send('STLS'), { starttls: true }, send(`AUTH PLAIN ${response}`), DONE]);
    const longTls = backendEverySplit({ ...long, implicitTls: true }, [DOVECOT_GREETING, '+ \r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(longTls.events, [send('AUTH PLAIN'), send(secrets[1]!), DONE]);
  });

  it('sends USER and PASS with no CAPA: a backend that takes no password without TLS refuses USER, and PASS never goes out', () => {
    const dovecot = backendEverySplit(REPLAY, [DOVECOT_GREETING, DOVECOT_NO_PLAINTEXT_USER]);
    assert.deepEqual(dovecot.events, [send('USER alice'), fail('auth-failed', DOVECOT_NO_PLAINTEXT_USER.trimEnd())]);
    const cyrus = backendEverySplit(MASTER, [CYRUS_GREETING, CYRUS_NO_PLAINTEXT_USER]);
    assert.deepEqual(cyrus.events, [send('USER alice*mailfront'), fail('auth-failed', CYRUS_NO_PLAINTEXT_USER.trimEnd())]);
  });

  it('fails as unavailable when a backend that takes USER lists SASL without PLAIN, naming what it offers', () => {
    const capa = '+OK\r\nUSER\r\nSASL LOGIN CRAM-MD5\r\n.\r\n';
    const authzid = backendEverySplit(AUTHZID, [DOVECOT_GREETING, capa]);
    assert.deepEqual(authzid.events, [CAPA, fail('unavailable', 'capa: login mode sasl-authzid needs SASL PLAIN, which the backend does not offer here (it offers "LOGIN CRAM-MD5")')]);
    const replay = backendEverySplit(long, [DOVECOT_GREETING, capa]);
    assert.deepEqual(replay.events, [CAPA, fail('unavailable', `capa: credentials over ${LONG_CREDENTIALS_BYTES} bytes need SASL PLAIN, which the backend does not offer here (it offers "LOGIN CRAM-MD5")`)]);
  });

  it('fails as unavailable when the backend does not answer CAPA, or answers it with something else', () => {
    const refused = backendEverySplit(AUTHZID, [DOVECOT_GREETING, '-ERR Unknown command.\r\n']);
    assert.deepEqual(refused.events, [CAPA, fail('unavailable', 'capa: login mode sasl-authzid needs SASL PLAIN, and the backend does not answer CAPA (-ERR Unknown command.)')]);
    const garbled = backendEverySplit(AUTHZID, [DOVECOT_GREETING, '+ \r\n']);
    assert.deepEqual(garbled.events, [CAPA, fail('unavailable', 'unexpected CAPA reply: +')]);
  });

  it('reads an -ERR to CAPA with [SYS/TEMP], [SYS/PERM] or [IN-USE] as the backend refusing the session, not as no CAPA', () => {
    // Cyrus pop3d while its shutdown file is in place: the greeting, then this to CAPA, and a close.
    const shutdown = '-ERR [SYS/TEMP] Server down for maintenance';
    for (const options of [AUTHZID, long]) {
      const run = backendEverySplit(options, [CYRUS_GREETING, `${shutdown}\r\n`]);
      assert.deepEqual(run.events, [CAPA, fail('unavailable', `CAPA refused: ${shutdown}`)], JSON.stringify(options));
      assert.equal(run.state, 'failed');
      noSecret(run.events);
    }
    const perm = backendEverySplit(AUTHZID, [CYRUS_GREETING, '-ERR [SYS/PERM] Disk failure\r\n']);
    assert.deepEqual(perm.events, [CAPA, fail('unavailable', 'CAPA refused: -ERR [SYS/PERM] Disk failure')]);
    const inUse = backendEverySplit(AUTHZID, [DOVECOT_GREETING, '-ERR [IN-USE] Mailbox is locked\r\n']);
    assert.deepEqual(inUse.events, [CAPA, fail('in-use', 'CAPA refused: -ERR [IN-USE] Mailbox is locked')]);
    // A code about credentials says nothing of CAPA: read as a bare -ERR, no CAPA.
    const auth = backendEverySplit(AUTHZID, [DOVECOT_GREETING, '-ERR [AUTH] Unknown command.\r\n']);
    assert.deepEqual(auth.events, [CAPA, fail('unavailable', 'capa: login mode sasl-authzid needs SASL PLAIN, and the backend does not answer CAPA (-ERR [AUTH] Unknown command.)')]);
  });

  it('reads CAPA case-insensitively and dot-stuffed, and the login reply after its "."', () => {
    const response = b64('alice\0mailfront\0proxy secret');
    const run = backendEverySplit(AUTHZID, [DOVECOT_GREETING, '+OK\r\n..X-DOTTED\r\nsasl login plain\r\n.\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(run.events, [CAPA, send(`AUTH PLAIN ${response}`), DONE]);
    // A line ".SASL PLAIN" is "SASL PLAIN" unstuffed; ". " is no end of the list.
    const stuffed = backendEverySplit(AUTHZID, [DOVECOT_GREETING, '+OK\r\n. \r\n.SASL PLAIN\r\n.\r\n', DOVECOT_LOGGED_IN]);
    assert.deepEqual(stuffed.events, [CAPA, send(`AUTH PLAIN ${response}`), DONE]);
  });

  it('says the login went out only once AUTH did, not at CAPA, and names the CAPA states', () => {
    const machine = pop3Adapter.createBackendLogin({ ...AUTHZID, forward: FORWARD });
    const states = [machine.state];
    const loginSent = [machine.loginSent];
    for (const input of [DOVECOT_TRUSTED_GREETING, '+OK\r\n', 'SASL PLAIN\r\n', '.\r\n', '+OK\r\n', DOVECOT_LOGGED_IN]) {
      machine.receive(Buffer.from(input));
      states.push(machine.state);
      loginSent.push(machine.loginSent);
    }
    assert.deepEqual(states, ['greeting', 'capa', 'capa-list', 'capa-list', 'xclient', 'auth', 'done']);
    assert.deepEqual(loginSent, [false, false, false, false, true, true, true]);
  });
});

describe('pop3 backend login: failures and limits', () => {
  it('fails as unavailable on an -ERR or a foreign greeting', () => {
    const refused = backendEverySplit(REPLAY, ['-ERR [SYS/TEMP] Too many connections\r\n']);
    assert.deepEqual(refused.events, [fail('unavailable', 'greeting: -ERR [SYS/TEMP] Too many connections')]);
    const imap = backendEverySplit(REPLAY, ['* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n']);
    assert.deepEqual(imap.events, [fail('unavailable', 'unexpected greeting: * OK [CAPABILITY IMAP4rev1] Dovecot ready.')]);
  });

  it('never sends credentials holding CR, LF or NUL, nor a USER with a space', () => {
    const unsafe: BackendLoginOptions[] = [
      { ...REPLAY, password: 'secret\r\nDELE 1' },
      { ...REPLAY, user: 'alice\0' },
      { ...REPLAY, user: 'alice bob' },
      { ...REPLAY, user: '' },
      { ...MASTER, proxyPassword: 'x\ny' },
      { ...AUTHZID, user: 'alice\0admin' },
      { ...AUTHZID, proxyPassword: 'a\rb' },
    ];
    for (const options of unsafe) {
      const run = backendEverySplit(options, [DOVECOT_GREETING, '+OK\r\n', DOVECOT_LOGGED_IN]);
      assert.deepEqual(run.events, [fail('auth-failed', 'credentials cannot be sent safely')], JSON.stringify(options));
    }
  });

  it('fails as unavailable when a proxy account is missing', () => {
    const { proxyUser: _u, ...noProxyUser } = MASTER;
    const run = backendEverySplit(noProxyUser, [DOVECOT_GREETING]);
    assert.deepEqual(run.events.at(-1), fail('unavailable', 'master-user login needs proxyUser and proxyPassword'));
    const { proxyPassword: _p, ...noProxyPassword } = AUTHZID;
    const sasl = backendEverySplit(noProxyPassword, [CYRUS_GREETING]);
    assert.deepEqual(sasl.events.at(-1), fail('unavailable', 'sasl-authzid login needs proxyUser and proxyPassword'));
  });

  it('fails on a backend line that never ends', () => {
    const run = backendEverySplit(REPLAY, ['+OK ' + 'x'.repeat(MAX_BACKEND_RESPONSE_BYTES)]);
    assert.deepEqual(run.events, [fail('unavailable', 'backend response too long')]);
  });

  it('reads nothing more after failing or finishing', () => {
    const machine = pop3Adapter.createBackendLogin(REPLAY);
    assert.equal(machine.state, 'greeting');
    assert.equal(machine.receive(Buffer.from('-ERR no\r\n'))[0]?.type, 'fail');
    assert.deepEqual(machine.receive(Buffer.from('+OK\r\n')), []);
    assert.deepEqual(machine.tlsStarted(), []);
  });

  it('names its states as the dialogue goes', () => {
    const machine = pop3Adapter.createBackendLogin({ ...AUTHZID, starttls: true });
    const states = [machine.state];
    for (const input of [CYRUS_GREETING, '+OK Begin TLS negotiation\r\n']) {
      machine.receive(Buffer.from(input));
      states.push(machine.state);
    }
    machine.tlsStarted();
    states.push(machine.state);
    assert.deepEqual(states, ['greeting', 'stls', 'tls-handshake', 'auth']);
    const forwarding = pop3Adapter.createBackendLogin({ ...REPLAY, forward: FORWARD });
    const seen = [forwarding.state];
    for (const input of [DOVECOT_TRUSTED_GREETING, '+OK\r\n', '+OK\r\n', DOVECOT_LOGGED_IN]) {
      forwarding.receive(Buffer.from(input));
      seen.push(forwarding.state);
    }
    assert.deepEqual(seen, ['greeting', 'xclient', 'user', 'pass', 'done']);
  });

  it('classifies response codes as RFC 2449 and RFC 3206 define them', () => {
    assert.equal(classifyRefusal('-ERR [IN-USE] locked'), 'in-use');
    assert.equal(classifyRefusal('-ERR [SYS/TEMP] later'), 'unavailable');
    assert.equal(classifyRefusal('-ERR [SYS/PERM] broken'), 'unavailable');
    assert.equal(classifyRefusal('-ERR [LOGIN-DELAY] too soon'), 'login-delay');
    assert.equal(classifyRefusal('-ERR [login-delay/600] too soon'), 'login-delay');
    assert.equal(classifyRefusal('-ERR [AUTH] no'), 'auth-failed');
    assert.equal(classifyRefusal('-ERR Authentication failed.'), 'auth-failed');
    assert.equal(classifyRefusal('-ERR'), 'auth-failed');
  });
});
