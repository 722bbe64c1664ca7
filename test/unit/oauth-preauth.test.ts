/**
 * OAUTHBEARER (RFC 7628) and XOAUTH2 before login, in the three pre-auth machines: offered only
 * when oauth2 is configured and where PLAIN is; with and without an initial response; a token
 * refused gets the mechanism's error challenge, the client's dummy response (AQ==, an empty line,
 * or "*") and then the refusal, counted as a failed login; a temporary failure is answered at
 * once; a token that can be no token (too long, bad characters) is refused without a login. Every
 * input gives the same trace however it is split. And sasl.ts's decoders.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MAX_AUTHENTICATE_LINE_BYTES, MAX_LINE_BYTES, MAX_PREAUTH_LITERAL_BYTES, MAX_SASL_RESPONSE_BYTES } from '../../src/limits.js';
import { MAX_OAUTH_TOKEN_BYTES, bearerFailureChallenge, decodeOAuthBearer, decodeXOAuth2 } from '../../src/protocol/sasl.js';
import { TLS_CLIENT, preauthTrace } from './imap-testkit.js';
import { bytewise, runPreauth, whole } from './pop3-harness.js';
import type { Event } from './pop3-harness.js';
import { PLAIN_PORT, preauthTrace as sieveTrace } from './managesieve-harness.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';

const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl';
const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const oauthbearer = (user: string | null, token = TOKEN): string => b64(`n,${user === null ? '' : `a=${user}`},\x01host=mail.example.org\x01port=993\x01auth=Bearer ${token}\x01\x01`);
const xoauth2 = (user: string, token = TOKEN): string => b64(`user=${user}\x01auth=Bearer ${token}\x01\x01`);
/** A token at MAX_OAUTH_TOKEN_BYTES (an Entra or Keycloak JWT with its groups is 4 to 8 KB). */
const LONGEST = `eyJhbGciOiJSUzI1NiJ9.${'x'.repeat(MAX_OAUTH_TOKEN_BYTES - 'eyJhbGciOiJSUzI1NiJ9.'.length - 'c2lnbmF0dXJl'.length - 1)}.c2lnbmF0dXJl`;
const CHALLENGE = bearerFailureChallenge('OAUTHBEARER');
const XCHALLENGE = bearerFailureChallenge('XOAUTH2');

describe('sasl.ts', () => {
  test('OAUTHBEARER: the authzid (=2C and =3D decoded) and the token; none named; malformed ones refused', () => {
    assert.deepEqual(decodeOAuthBearer(oauthbearer('alice@example.org')), { ok: true, user: 'alice@example.org', token: TOKEN });
    assert.deepEqual(decodeOAuthBearer(oauthbearer(null)), { ok: true, user: undefined, token: TOKEN });
    assert.deepEqual(decodeOAuthBearer(oauthbearer('a=2Cb=3Dc')), { ok: true, user: 'a,b=c', token: TOKEN });
    assert.deepEqual(decodeOAuthBearer(b64(`y,,\x01AUTH=bearer ${TOKEN}\x01\x01`)), { ok: true, user: undefined, token: TOKEN });
    assert.deepEqual(decodeOAuthBearer(b64(`p=tls-unique,,\x01auth=Bearer ${TOKEN}\x01\x01`)), { ok: false, reason: 'bad-format' }, 'channel binding');
    assert.deepEqual(decodeOAuthBearer(b64('n,,\x01host=x\x01\x01')), { ok: false, reason: 'bad-format' }, 'no auth');
    assert.deepEqual(decodeOAuthBearer(b64(`n,,\x01auth=Basic ${TOKEN}\x01\x01`)), { ok: false, reason: 'bad-format' });
    assert.deepEqual(decodeOAuthBearer(b64(`n,,\x01auth=Bearer ${TOKEN}\x01`)), { ok: false, reason: 'bad-format' }, 'one kvsep short');
    assert.deepEqual(decodeOAuthBearer(b64('\x01')), { ok: false, reason: 'bad-format' }, 'the dummy response');
    assert.deepEqual(decodeOAuthBearer('not base64!'), { ok: false, reason: 'bad-base64' });
    assert.deepEqual(decodeOAuthBearer(oauthbearer('alice', 'a"quote')), { ok: false, reason: 'bad-characters' });
    assert.deepEqual(decodeOAuthBearer(b64(`n,a=al\rice,\x01auth=Bearer ${TOKEN}\x01\x01`)), { ok: false, reason: 'bad-characters' });
    assert.deepEqual(decodeOAuthBearer(oauthbearer('alice', 'x'.repeat(MAX_OAUTH_TOKEN_BYTES + 1))), { ok: false, reason: 'too-long' });
    assert.equal(decodeOAuthBearer(oauthbearer('alice', 'x'.repeat(MAX_OAUTH_TOKEN_BYTES))).ok, true);
  });

  test('XOAUTH2: user= is required', () => {
    assert.deepEqual(decodeXOAuth2(xoauth2('alice@example.org')), { ok: true, user: 'alice@example.org', token: TOKEN });
    assert.deepEqual(decodeXOAuth2(b64(`auth=Bearer ${TOKEN}\x01\x01`)), { ok: false, reason: 'bad-format' });
    assert.deepEqual(decodeXOAuth2(b64(`user=\x01auth=Bearer ${TOKEN}\x01\x01`)), { ok: false, reason: 'bad-format' });
  });

  test('the error challenges are RFC 7628 §3.2.2\'s and Google\'s', () => {
    assert.deepEqual(JSON.parse(Buffer.from(CHALLENGE, 'base64').toString()), { status: 'invalid_token', schemes: 'bearer' });
    assert.deepEqual(JSON.parse(Buffer.from(XCHALLENGE, 'base64').toString()), { status: '401', schemes: 'bearer' });
  });
});

describe('IMAP', () => {
  const OAUTH = { oauth: true };
  /** The capability list a CAPABILITY answers with under `options`. */
  const capabilitiesWith = (options: object): string => preauthTrace({ options, phases: ['c CAPABILITY\r\n'] })[0] ?? '';

  test('offered with oauth2 where PLAIN is; not without it, nor where LOGINDISABLED', () => {
    assert.match(capabilitiesWith(OAUTH), /AUTH=PLAIN AUTH=LOGIN AUTH=OAUTHBEARER AUTH=XOAUTH2\r\n/);
    assert.doesNotMatch(capabilitiesWith({}), /OAUTHBEARER/);
    assert.doesNotMatch(capabilitiesWith({ ...OAUTH, tlsActive: false, starttlsAvailable: true }), /OAUTHBEARER/);
    assert.match(capabilitiesWith({ ...OAUTH, tlsActive: false, plaintextWithoutTls: true }), /AUTH=OAUTHBEARER/);
    const plain = preauthTrace({ options: { ...OAUTH, tlsActive: false, starttlsAvailable: true }, phases: [`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice')}\r\n`] });
    assert.match(plain.join('\n'), /a NO \[PRIVACYREQUIRED\]/);
    assert.ok(!plain.some((l) => l.startsWith('bearer-login')));
    const off = preauthTrace({ phases: [`a AUTHENTICATE XOAUTH2 ${xoauth2('alice')}\r\n`] });
    assert.match(off.join('\n'), /a NO Unsupported authentication mechanism/);
  });

  test('SASL-IR and without: a bearer login with the user named, then the backend\'s OK', () => {
    const ir = preauthTrace({ options: OAUTH, phases: [`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice')}\r\n`], logins: [{ ok: true, capabilities: 'IMAP4rev1' }] });
    assert.deepEqual(ir, [`bearer-login ${JSON.stringify({ user: 'alice', token: TOKEN, mechanism: 'OAUTHBEARER' })}`, 'send a OK [CAPABILITY IMAP4rev1] Logged in\r\n', 'forward ']);
    const twoStep = preauthTrace({ options: OAUTH, phases: ['b AUTHENTICATE XOAUTH2\r\n', `${xoauth2('bob@example.org')}\r\n`], logins: [{ ok: true, capabilities: null }] });
    assert.deepEqual(twoStep, ['send + \r\n', `bearer-login ${JSON.stringify({ user: 'bob@example.org', token: TOKEN, mechanism: 'XOAUTH2' })}`, 'send b OK Logged in\r\n', 'forward ']);
  });

  test('a token refused: the error challenge, the dummy response, then NO [AUTHENTICATIONFAILED]; the third closes', () => {
    const trace = preauthTrace({
      options: OAUTH,
      phases: [`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice')}\r\n`, 'AQ==\r\n', `b AUTHENTICATE XOAUTH2 ${xoauth2('alice')}\r\n`, '\r\n', `c AUTHENTICATE OAUTHBEARER ${oauthbearer(null)}\r\n`, '*\r\n'],
      respond: 'immediately',
    });
    const text = trace.join('\n');
    assert.match(text, new RegExp(`send \\+ ${CHALLENGE.replace(/[+/=]/g, '\\$&')}\r\na NO \\[AUTHENTICATIONFAILED\\] Authentication failed\\.`));
    assert.match(text, new RegExp(`send \\+ ${XCHALLENGE.replace(/[+/=]/g, '\\$&')}\r\nb NO \\[AUTHENTICATIONFAILED\\]`));
    assert.match(text, /\r\nc NO \[AUTHENTICATIONFAILED\] Authentication failed\.\r\n\* BYE Too many failed login attempts/);
    assert.equal(trace.filter((l) => l.startsWith('bearer-login')).length, 3);
    assert.equal(trace.at(-1), 'close limit');
  });

  test('a token refused when the pre-auth deadline comes: the refusal at once, no challenge to answer, then the BYE', () => {
    const machine = imapAdapter.createPreauth({ ...TLS_CLIENT, ...OAUTH });
    assert.equal(machine.receive(Buffer.from(`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice')}\r\n`))[0]?.type, 'bearer-login');
    assert.deepEqual(machine.timedOut('auth-failed'), [{ type: 'send', data: 'a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n* BYE No login within the time allowed\r\n' }, { type: 'close', reason: 'timeout' }]);
  });

  test('a token refused when the server stops: the refusal at once, no challenge to answer, then the BYE', () => {
    const machine = imapAdapter.createPreauth({ ...TLS_CLIENT, ...OAUTH });
    assert.equal(machine.receive(Buffer.from(`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice')}\r\n`))[0]?.type, 'bearer-login');
    assert.deepEqual(machine.shuttingDown('auth-failed'), [{ type: 'send', data: 'a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n* BYE [UNAVAILABLE] Server shutting down\r\n' }, { type: 'close', reason: 'shutdown' }]);
  });

  test('a temporary failure is answered at once, without the challenge, and not counted', () => {
    const trace = preauthTrace({ options: OAUTH, phases: [`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice')}\r\n`, 'b NOOP\r\n'], logins: [{ ok: false, refusal: 'unavailable', text: 'Try later.' }], respond: 'immediately' });
    assert.deepEqual(trace.slice(1), ['send a NO [UNAVAILABLE] Try later.\r\nb OK NOOP completed.\r\n']);
  });

  test('a token too long for any, or with characters no token has: refused without a login, through the challenge', () => {
    for (const token of ['x'.repeat(MAX_OAUTH_TOKEN_BYTES + 1), 'has space']) {
      const trace = preauthTrace({ options: OAUTH, phases: [`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice', token)}\r\n`, 'AQ==\r\n'] }, [1, 30]);
      assert.ok(!trace.some((l) => l.startsWith('bearer-login')), token.slice(0, 10));
      assert.deepEqual(trace, [`send + ${CHALLENGE}\r\na NO [AUTHENTICATIONFAILED] Authentication failed.\r\n`]);
    }
    const bad = preauthTrace({ options: OAUTH, phases: ['a AUTHENTICATE OAUTHBEARER %%%\r\n'] });
    assert.deepEqual(bad, ['send a BAD Invalid SASL response\r\n']);
  });

  test(`a token of MAX_OAUTH_TOKEN_BYTES (${MAX_OAUTH_TOKEN_BYTES}) is a bearer login, with SASL-IR and without`, () => {
    assert.equal(LONGEST.length, MAX_OAUTH_TOKEN_BYTES);
    const login = (mechanism: string): string => `bearer-login ${JSON.stringify({ user: 'alice', token: LONGEST, mechanism })}`;
    const ir = preauthTrace({ options: OAUTH, phases: [`a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice', LONGEST)}\r\n`], logins: [{ ok: true, capabilities: null }] }, [1, 8191, 8192, 8193, 20000]);
    assert.deepEqual(ir, [login('OAUTHBEARER'), 'send a OK Logged in\r\n', 'forward ']);
    const twoStep = preauthTrace({ options: OAUTH, phases: ['b AUTHENTICATE XOAUTH2\r\n', `${xoauth2('alice', LONGEST)}\r\n`], logins: [{ ok: true, capabilities: null }] }, [1, 8192, 20000]);
    assert.deepEqual(twoStep, ['send + \r\n', login('XOAUTH2'), 'send b OK Logged in\r\n', 'forward ']);
  });

  test('a cancel before any response is the usual BAD', () => {
    const trace = preauthTrace({ options: OAUTH, phases: ['a AUTHENTICATE OAUTHBEARER\r\n', '*\r\n'] });
    assert.deepEqual(trace, ['send + \r\na BAD Authentication cancelled.\r\n']);
  });

  test('without oauth, the TLS client is as before', () => {
    assert.doesNotMatch(capabilitiesWith({ ...TLS_CLIENT }), /XOAUTH2/);
  });
});

describe('POP3', () => {
  const TLS_OAUTH = { tlsActive: true, starttlsAvailable: false, plaintextWithoutTls: false, greetingText: 'ready', oauth: true };
  const sends = (events: Event[]): string => events.map((e) => ('send' in e ? e.send : 'bearerLogin' in e ? `<bearer ${JSON.stringify(e.bearerLogin)}>` : 'close' in e ? `<close ${e.close}>` : JSON.stringify(e))).join('');

  test('CAPA and AUTH list them; AUTH XOAUTH2 with an initial response is a bearer login', () => {
    const events = runPreauth(TLS_OAUTH, ['CAPA\r\n', 'AUTH\r\n', `AUTH XOAUTH2 ${xoauth2('alice')}\r\n`], whole, [{ succeed: true }]);
    const text = sends(events);
    assert.match(text, /SASL PLAIN LOGIN OAUTHBEARER XOAUTH2\r\n/);
    assert.match(text, /\+OK\r\nPLAIN\r\nLOGIN\r\nOAUTHBEARER\r\nXOAUTH2\r\n\.\r\n/);
    assert.match(text, /<bearer \{"user":"alice","token":"[^"]+","mechanism":"XOAUTH2"\}>/);
    assert.doesNotMatch(sends(runPreauth({ ...TLS_OAUTH, oauth: false }, ['CAPA\r\n'], whole)), /OAUTHBEARER/);
  });

  test('refused: "+ <challenge>", the dummy, then -ERR [AUTH]; without an initial response too; the third closes', () => {
    for (const split of [whole, bytewise]) {
      const events = runPreauth(TLS_OAUTH, [`AUTH OAUTHBEARER ${oauthbearer('alice')}\r\n`, 'AQ==\r\n', 'AUTH OAUTHBEARER\r\n', `${oauthbearer(null)}\r\n`, '*\r\n', `AUTH XOAUTH2 ${xoauth2('alice')}\r\n`, '\r\n'], split, [{ refuse: 'auth-failed' }, { refuse: 'auth-failed' }, { refuse: 'auth-failed' }]);
      const text = sends(events);
      assert.equal(text.split(`+ ${CHALLENGE}\r\n`).length - 1, 2, text);
      assert.equal(text.split(`+ ${XCHALLENGE}\r\n`).length - 1, 1, text);
      assert.equal(text.split('-ERR [AUTH] Authentication failed.\r\n').length - 1, 3, text);
      assert.ok(text.endsWith('-ERR [AUTH] Authentication failed.\r\n<close limit>'), text);
    }
  });

  test(`a token of MAX_OAUTH_TOKEN_BYTES is a bearer login, with an initial response and without`, () => {
    const bearer = `<bearer ${JSON.stringify({ user: 'alice', token: LONGEST, mechanism: 'OAUTHBEARER' })}>`;
    for (const split of [whole, bytewise]) {
      assert.ok(sends(runPreauth(TLS_OAUTH, [`AUTH OAUTHBEARER ${oauthbearer('alice', LONGEST)}\r\n`], split, [{ succeed: true }])).includes(bearer));
      const twoStep = sends(runPreauth(TLS_OAUTH, ['AUTH OAUTHBEARER\r\n', `${oauthbearer('alice', LONGEST)}\r\n`], split, [{ succeed: true }]));
      assert.ok(twoStep.startsWith(`${sends(runPreauth(TLS_OAUTH, [], whole))}+ \r\n${bearer}`), twoStep.slice(0, 300));
    }
  });

  test('a token refused when the pre-auth deadline comes: the refusal at once, no challenge to answer, then the -ERR', () => {
    const machine = pop3Adapter.createPreauth(TLS_OAUTH);
    assert.equal(machine.receive(Buffer.from(`AUTH OAUTHBEARER ${oauthbearer('alice')}\r\n`))[0]?.type, 'bearer-login');
    assert.deepEqual(machine.timedOut('auth-failed'), [
      { type: 'send', data: '-ERR [AUTH] Authentication failed.\r\n' },
      { type: 'send', data: '-ERR No login within the time allowed\r\n' },
      { type: 'close', reason: 'timeout' },
    ]);
  });

  test('a token refused when the server stops: the refusal at once, no challenge to answer, then the -ERR', () => {
    const machine = pop3Adapter.createPreauth(TLS_OAUTH);
    assert.equal(machine.receive(Buffer.from(`AUTH OAUTHBEARER ${oauthbearer('alice')}\r\n`))[0]?.type, 'bearer-login');
    assert.deepEqual(machine.shuttingDown('auth-failed'), [
      { type: 'send', data: '-ERR [AUTH] Authentication failed.\r\n' },
      { type: 'send', data: '-ERR [SYS/TEMP] Server shutting down, please wait and try again later.\r\n' },
      { type: 'close', reason: 'shutdown' },
    ]);
  });

  test('a temporary failure is answered at once: -ERR [SYS/TEMP]', () => {
    const text = sends(runPreauth(TLS_OAUTH, [`AUTH OAUTHBEARER ${oauthbearer('alice')}\r\n`], whole, [{ refuse: 'unavailable' }]));
    assert.match(text, /-ERR \[SYS\/TEMP\] Temporary failure/);
    assert.doesNotMatch(text, /\+ ey/);
  });
});

describe('ManageSieve', () => {
  const OAUTH = { oauth: true, tlsActive: true, starttlsAvailable: false };

  test('SASL lists them where PLAIN is; AUTHENTICATE "OAUTHBEARER" with an initial response is a bearer login', () => {
    const trace = sieveTrace({ options: OAUTH, phases: [`AUTHENTICATE "OAUTHBEARER" "${oauthbearer('alice')}"\r\n`], logins: [{ ok: true }] });
    assert.match(trace[0] ?? '', /"SASL" "PLAIN LOGIN OAUTHBEARER XOAUTH2"/);
    assert.equal(trace[1], `bearer-login ${JSON.stringify({ user: 'alice', token: TOKEN, mechanism: 'OAUTHBEARER' })}`);
    assert.match(sieveTrace({ options: { oauth: true }, phases: [] })[0] ?? '', /"SASL" ""/, 'before STARTTLS: none');
  });

  test('refused: the challenge as a string, the dummy "AQ==", then NO; without an initial response too', () => {
    const trace = sieveTrace({ options: OAUTH, phases: [`AUTHENTICATE "XOAUTH2" "${xoauth2('alice')}"\r\n`, '"AQ=="\r\n', 'AUTHENTICATE "OAUTHBEARER"\r\n', `"${oauthbearer('alice')}"\r\n`, '"*"\r\n'], respond: 'immediately' });
    const text = trace.join('\n');
    assert.match(text, new RegExp(`send "${XCHALLENGE.replace(/[+/=]/g, '\\$&')}"\r\n`));
    assert.match(text, new RegExp(`""\r\n[\\s\\S]*"${CHALLENGE.replace(/[+/=]/g, '\\$&')}"\r\n`));
    assert.equal(text.split('NO "Authentication failed."').length - 1, 2, text);
  });

  test('a token of MAX_OAUTH_TOKEN_BYTES is a bearer login: quoted and as a literal, as the initial response and after it', () => {
    const response = oauthbearer('alice', LONGEST);
    const login = `bearer-login ${JSON.stringify({ user: 'alice', token: LONGEST, mechanism: 'OAUTHBEARER' })}`;
    const literal = `{${response.length}+}\r\n${response}`;
    for (const phases of [
      [`AUTHENTICATE "OAUTHBEARER" "${response}"\r\n`],
      [`AUTHENTICATE "OAUTHBEARER" ${literal}\r\n`],
      ['AUTHENTICATE {11+}\r\nOAUTHBEARER\r\n', `"${response}"\r\n`],
      ['AUTHENTICATE "OAUTHBEARER"\r\n', `${literal}\r\n`],
    ]) {
      const trace = sieveTrace({ options: OAUTH, phases, logins: [{ ok: true }] });
      assert.ok(trace.includes(login), `${phases[0]?.slice(0, 40)}: ${trace.map((l) => l.slice(0, 60)).join(' | ')}`);
    }
  });

  test('a token refused when the pre-auth deadline comes: the refusal at once, no challenge to answer, then the BYE', () => {
    const machine = managesieveAdapter.createPreauth({ ...PLAIN_PORT, ...OAUTH });
    machine.greeting();
    assert.equal(machine.receive(Buffer.from(`AUTHENTICATE "OAUTHBEARER" "${oauthbearer('alice')}"\r\n`))[0]?.type, 'bearer-login');
    assert.deepEqual(machine.timedOut('auth-failed'), [{ type: 'send', data: 'NO "Authentication failed."\r\nBYE "No login within the time allowed."\r\n' }, { type: 'close', reason: 'timeout' }]);
  });

  test('a token refused when the server stops: the refusal at once, no challenge to answer, then the BYE', () => {
    const machine = managesieveAdapter.createPreauth({ ...PLAIN_PORT, ...OAUTH });
    machine.greeting();
    assert.equal(machine.receive(Buffer.from(`AUTHENTICATE "OAUTHBEARER" "${oauthbearer('alice')}"\r\n`))[0]?.type, 'bearer-login');
    assert.deepEqual(machine.shuttingDown('auth-failed'), [{ type: 'send', data: 'NO "Authentication failed."\r\nBYE (TRYLATER) "Server shutting down."\r\n' }, { type: 'close', reason: 'shutdown' }]);
  });

  test('a temporary failure: NO (TRYLATER) at once', () => {
    const trace = sieveTrace({ options: OAUTH, phases: [`AUTHENTICATE "OAUTHBEARER" "${oauthbearer('alice')}"\r\n`], logins: [{ ok: false, refusal: 'unavailable' }] });
    assert.match(trace.join('\n'), /NO \(TRYLATER\) "Temporary failure/);
  });

  test('as before without oauth', () => {
    assert.match(sieveTrace({ options: { ...PLAIN_PORT, tlsActive: true }, phases: [] })[0] ?? '', /"SASL" "PLAIN LOGIN"\r\n/);
  });
});

/**
 * The wider bounds (MAX_AUTHENTICATE_LINE_BYTES, MAX_SASL_RESPONSE_BYTES) are for a bearer
 * mechanism's lines where it is offered (oauth2 set, plaintext allowed): PLAIN and LOGIN, and
 * every line without oauth2, keep MAX_LINE_BYTES and MAX_PREAUTH_LITERAL_BYTES and their answers.
 * (POP3's are in pop3-preauth.test.ts, the IMAP parser's in imap-parser.test.ts.)
 */
describe('the wider bounds: bearer mechanisms with oauth2 only', () => {
  /** A line of exactly `bytes` bytes, CRLF included: `prefix` and then As. */
  const line = (prefix: string, bytes: number): string => `${prefix}${'A'.repeat(bytes - prefix.length - 2)}\r\n`;
  const SPLITS = [1, 8191, 8192, 8193, 20000];

  test('IMAP: an AUTHENTICATE PLAIN or LOGIN line or response over MAX_LINE_BYTES closes, oauth2 or not', () => {
    const bye = ['send * BYE [LIMIT] Command line too long\r\n', 'close limit'];
    for (const options of [{}, { oauth: true }]) {
      for (const mechanism of ['PLAIN', 'LOGIN']) {
        const label = `${mechanism} ${JSON.stringify(options)}`;
        assert.deepEqual(preauthTrace({ options, phases: [line(`a AUTHENTICATE ${mechanism} `, MAX_LINE_BYTES + 1)] }, SPLITS), bye, label);
        const response = preauthTrace({ options, phases: [`a AUTHENTICATE ${mechanism}\r\n`, line('', MAX_LINE_BYTES + 1)] }, SPLITS);
        assert.deepEqual(response, [`send + ${mechanism === 'LOGIN' ? 'VXNlcm5hbWU6' : ''}\r\n* BYE [LIMIT] Command line too long\r\n`, 'close limit'], label);
      }
      // At MAX_LINE_BYTES, a PLAIN login as before.
      const password = 'p'.repeat(6000);
      const initial = Buffer.from(`\0alice\0${password}`).toString('base64');
      const plain = `a AUTHENTICATE PLAIN ${initial}${' '.repeat(MAX_LINE_BYTES - 'a AUTHENTICATE PLAIN '.length - initial.length - 2)}\r\n`;
      assert.equal(plain.length, MAX_LINE_BYTES);
      assert.deepEqual(preauthTrace({ options, phases: [plain] }, SPLITS)[0], `login ${JSON.stringify({ user: 'alice', password, mechanism: 'PLAIN' })}`);
    }
  });

  test('IMAP: an OAUTHBEARER or XOAUTH2 line at MAX_AUTHENTICATE_LINE_BYTES is read only where they are offered', () => {
    const bye = ['send * BYE [LIMIT] Command line too long\r\n', 'close limit'];
    const OAUTH = { oauth: true };
    for (const mechanism of ['OAUTHBEARER', 'XOAUTH2']) {
      assert.deepEqual(preauthTrace({ options: OAUTH, phases: [line(`a AUTHENTICATE ${mechanism} `, MAX_AUTHENTICATE_LINE_BYTES)] }, SPLITS), ['send a BAD Invalid SASL response\r\n'], mechanism);
      assert.deepEqual(preauthTrace({ options: OAUTH, phases: [line(`a AUTHENTICATE ${mechanism} `, MAX_AUTHENTICATE_LINE_BYTES + 1)] }, SPLITS), bye, mechanism);
      // Without oauth2, and before TLS (LOGINDISABLED), no bearer mechanism is offered: MAX_LINE_BYTES, as before.
      for (const options of [{}, { ...OAUTH, tlsActive: false, starttlsAvailable: true }]) {
        assert.deepEqual(preauthTrace({ options, phases: [line(`a AUTHENTICATE ${mechanism} `, MAX_LINE_BYTES + 1)] }, SPLITS), bye, `${mechanism} ${JSON.stringify(options)}`);
      }
    }
    const longest = `a AUTHENTICATE OAUTHBEARER ${oauthbearer('alice', LONGEST)}\r\n`;
    assert.ok(preauthTrace({ options: OAUTH, phases: [longest] }, SPLITS)[0]?.startsWith('bearer-login '));
    assert.deepEqual(preauthTrace({ phases: [longest] }, SPLITS), bye);
    // A bearer response after "+ ": the wider bound with oauth2.
    const response = preauthTrace({ options: OAUTH, phases: ['a AUTHENTICATE XOAUTH2\r\n', line('', MAX_AUTHENTICATE_LINE_BYTES)] }, SPLITS);
    assert.deepEqual(response, ['send + \r\na BAD Invalid SASL response\r\n']);
  });

  test('ManageSieve: AUTHENTICATE "PLAIN" and "LOGIN" keep MAX_LINE_BYTES and MAX_PREAUTH_LITERAL_BYTES, oauth2 or not', () => {
    for (const options of [{ tlsActive: true, starttlsAvailable: false }, { oauth: true, tlsActive: true, starttlsAvailable: false }]) {
      const closed = (phases: string[], text: string, label: string): void => {
        const trace = sieveTrace({ options, phases });
        assert.equal(trace.at(-1), 'close limit', label);
        assert.ok(trace.at(-2)?.endsWith(`BYE "${text}"\r\n`), `${label}: ${trace.at(-2)?.slice(-60)}`);
      };
      // [the mechanism, its literal data's bytes (not counted in the line's)]
      for (const [mechanism, literalBytes] of [['"PLAIN"', 0], ['LOGIN', 0], ['{5+}\r\nPLAIN', 5]] as const) {
        const label = `${mechanism} ${JSON.stringify(options)}`;
        const atBound = line(`AUTHENTICATE ${mechanism} "`, MAX_LINE_BYTES + literalBytes).replace(/A\r\n$/, '"\r\n');
        assert.ok(!sieveTrace({ options, phases: [atBound] }).includes('close limit'), label);
        closed([line(`AUTHENTICATE ${mechanism} "`, MAX_LINE_BYTES + literalBytes + 1).replace(/A\r\n$/, '"\r\n')], 'Line too long.', label);
        closed([`AUTHENTICATE ${mechanism} {${MAX_PREAUTH_LITERAL_BYTES + 1}+}\r\n${'A'.repeat(MAX_PREAUTH_LITERAL_BYTES + 1)}\r\n`], 'Literal too big.', label);
      }
      closed(['AUTHENTICATE "PLAIN"\r\n', `"${'A'.repeat(MAX_LINE_BYTES)}"\r\n`], 'Line too long.', 'PLAIN response');
      closed(['AUTHENTICATE "PLAIN"\r\n', `{${MAX_PREAUTH_LITERAL_BYTES + 1}+}\r\n${'A'.repeat(MAX_PREAUTH_LITERAL_BYTES + 1)}\r\n`], 'Literal too big.', 'PLAIN response literal');
    }
  });

  test('ManageSieve: a bearer response at its largest is read only where the bearer mechanisms are offered', () => {
    const OAUTH = { oauth: true, tlsActive: true, starttlsAvailable: false };
    const response = oauthbearer('alice', LONGEST);
    const login = `bearer-login ${JSON.stringify({ user: 'alice', token: LONGEST, mechanism: 'OAUTHBEARER' })}`;
    const cases = [
      [`AUTHENTICATE "OAUTHBEARER" "${response}"\r\n`],
      [`AUTHENTICATE OAUTHBEARER {${response.length}+}\r\n${response}\r\n`],
      // The mechanism as a literal, the response as another on the same line.
      [`AUTHENTICATE {11+}\r\noauthbearer {${response.length}+}\r\n${response}\r\n`],
    ];
    for (const phases of cases) {
      assert.ok(sieveTrace({ options: OAUTH, phases, logins: [{ ok: true }] }).includes(login), phases[0]?.slice(0, 40));
      // Without oauth2: the line or the literal is too long, as before.
      const off = sieveTrace({ options: { tlsActive: true, starttlsAvailable: false }, phases });
      assert.equal(off.at(-1), 'close limit', phases[0]?.slice(0, 40));
      assert.match(off.at(-2) ?? '', /BYE "(Line too long|Literal too big)\."\r\n$/);
    }
    const over = sieveTrace({ options: OAUTH, phases: [`AUTHENTICATE "XOAUTH2" {${MAX_SASL_RESPONSE_BYTES + 1}+}\r\n`] });
    assert.ok(over.at(-2)?.endsWith('BYE "Literal too big."\r\n'));
  });
});
