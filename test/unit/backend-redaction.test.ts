// A backend that quotes the login it refuses must not put the password in mailfront's log:
// every backend login machine withholds such an answer from the detail of a failure.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { CREDENTIALS_WITHHELD, redactCredentials } from '../../src/protocol/rules.js';
import type { BackendAction, BackendLoginOptions, ProtocolAdapter } from '../../src/protocol/types.js';

const PASSWORD = 'Pl\u00e4in-pw-1';
const PROXY = 'Proxy-Master-9';
const OPTIONS: BackendLoginOptions = { mode: 'replay', user: 'alice', password: PASSWORD, starttls: false };
const latin = (text: string): string => Buffer.from(text, 'utf8').toString('latin1');

/** Runs `adapter`'s machine through `lines` and returns the fail detail it ended with. */
function failDetail(adapter: ProtocolAdapter, options: BackendLoginOptions, lines: readonly string[]): string {
  const machine = adapter.createBackendLogin(options);
  let actions: BackendAction[] = [];
  for (const line of lines) actions = machine.receive(Buffer.from(line, 'latin1'));
  const failed = actions.find((a) => a.type === 'fail');
  assert.ok(failed && failed.type === 'fail', JSON.stringify(actions));
  return failed.detail;
}

test('IMAP, POP3 and ManageSieve: a refusal that quotes the password, its Latin-1 reading or the SASL message is withheld from the log', () => {
  const imap = failDetail(imapAdapter, OPTIONS, ['* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n', `mf1 BAD Error in IMAP command LOGIN: LOGIN {5+} alice {12+} ${latin(PASSWORD)}\r\n`]);
  assert.ok(imap.includes(CREDENTIALS_WITHHELD), imap);
  assert.doesNotMatch(imap, /in-pw/);
  const pop3 = failDetail(pop3Adapter, OPTIONS, ['+OK ready\r\n', '+OK\r\n', `-ERR no such command: PASS ${latin(PASSWORD)}\r\n`]);
  assert.ok(pop3.includes(CREDENTIALS_WITHHELD), pop3);
  // Cut in two by the shortening of a long line, a password is still found: the whole line is looked at first.
  const cut = failDetail(pop3Adapter, OPTIONS, ['+OK ready\r\n', '+OK\r\n', `-ERR ${'x'.repeat(180)} PASS ${latin(PASSWORD)}\r\n`]);
  assert.doesNotMatch(cut, /Pl/, cut);
  const sieve = failDetail(managesieveAdapter, { ...OPTIONS, mode: 'sasl-authzid', proxyUser: 'proxyadmin', proxyPassword: PROXY }, [
    '"IMPLEMENTATION" "x"\r\n"SASL" "PLAIN"\r\nOK\r\n',
    `NO "bad AUTHENTICATE PLAIN ${Buffer.from(`alice\0proxyadmin\0${PROXY}`).toString('base64')}"\r\n`,
  ]);
  assert.ok(sieve.includes(CREDENTIALS_WITHHELD), sieve);
});

test('redactCredentials: any form withholds the whole answer, so no marker tells where a short password stood; other answers pass as they are', () => {
  const options = { user: 'bob', password: 'pw-2', proxyUser: 'master', proxyPassword: 'Mx-3' };
  for (const form of ['pw-2', Buffer.from('pw-2').toString('base64'), Buffer.from('\0bob*master\0Mx-3').toString('base64'), Buffer.from('bob\0bob\0pw-2').toString('base64')]) {
    assert.equal(redactCredentials(`a ${form} b`, options), CREDENTIALS_WITHHELD, form);
  }
  assert.equal(redactCredentials('Authentication failed.', { user: 'u', password: 'fail' }), CREDENTIALS_WITHHELD);
  assert.equal(redactCredentials('nothing here', options), 'nothing here');
  assert.equal(redactCredentials('x', { user: 'u', password: '' }), 'x');
});
