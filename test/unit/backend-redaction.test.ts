// A backend that quotes the login it refuses must not put the password in mailfront's log:
// every backend login machine redacts the credentials it sent from the detail of a failure.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { redactCredentials } from '../../src/protocol/rules.js';
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

test('IMAP, POP3 and ManageSieve: a refusal that quotes the password, its Latin-1 reading or the SASL message is logged redacted', () => {
  const imap = failDetail(imapAdapter, OPTIONS, ['* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n', `mf1 BAD Error in IMAP command LOGIN: LOGIN {5+} alice {12+} ${latin(PASSWORD)}\r\n`]);
  assert.doesNotMatch(imap, /Pl.*in-pw-1/);
  assert.match(imap, /\[redacted\]/);
  const pop3 = failDetail(pop3Adapter, OPTIONS, ['+OK ready\r\n', '+OK\r\n', `-ERR no such command: PASS ${latin(PASSWORD)}\r\n`]);
  assert.doesNotMatch(pop3, /Pl.*in-pw-1/);
  const sieve = failDetail(managesieveAdapter, { ...OPTIONS, mode: 'sasl-authzid', proxyUser: 'proxyadmin', proxyPassword: PROXY }, [
    '"IMPLEMENTATION" "x"\r\n"SASL" "PLAIN"\r\nOK\r\n',
    `NO "bad AUTHENTICATE PLAIN ${Buffer.from(`alice\0proxyadmin\0${PROXY}`).toString('base64')}"\r\n`,
  ]);
  assert.doesNotMatch(sieve, new RegExp(Buffer.from(`alice\0proxyadmin\0${PROXY}`).toString('base64').slice(0, 12)));
  assert.match(sieve, /\[redacted\]/);
});

test('redactCredentials: every form, the longest first, and nothing else', () => {
  const options = { user: 'bob', password: 'pw-2', proxyUser: 'master', proxyPassword: 'Mx-3' };
  const plain = Buffer.from('bob*master\0Mx-3'.replace('bob*master', '\0bob*master')).toString('base64');
  assert.equal(redactCredentials(`a pw-2 b ${Buffer.from('pw-2').toString('base64')} c ${plain} d bob`, options), 'a [redacted] b [redacted] c [redacted] d bob');
  assert.equal(redactCredentials('nothing here', options), 'nothing here');
  assert.equal(redactCredentials('x', { user: 'u', password: '' }), 'x');
});
