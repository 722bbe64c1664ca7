// The `expired` login refusal (the password right, but the directory's password policy says it
// expired or must be changed) as each protocol words it: IMAP NO [EXPIRED] (RFC 5530), POP3
// -ERR [AUTH] (RFC 3206 has no code for it), ManageSieve NO without a code; the session's text or
// the machine's own; and no failed login towards the per-connection limit (the password was right).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import type { PreauthAction, PreauthOptions, ProtocolAdapter } from '../../src/protocol/types.js';
import { MAX_AUTH_ATTEMPTS } from '../../src/limits.js';

const OPTIONS: PreauthOptions = { tlsActive: true, starttlsAvailable: false, plaintextWithoutTls: false, greetingText: 'ready' };
const TEXT = 'Your password was reset and must be changed, please change it and log in again.';

const LOGIN: Record<string, string> = {
  imap: 't1 LOGIN alice secret\r\n',
  pop3: 'USER alice\r\nPASS secret\r\n',
  managesieve: `AUTHENTICATE "PLAIN" "${Buffer.from('\0alice\0secret').toString('base64')}"\r\n`,
};

const sent = (actions: readonly PreauthAction[]): string => actions.map((a) => (a.type === 'send' ? a.data : `<${a.type}>`)).join('');

/** The machine's answers to `times` logins each refused `expired` (with `text`), and whether it asked for a login each time. */
function refuse(adapter: ProtocolAdapter, times: number, text?: string): string[] {
  const machine = adapter.createPreauth(OPTIONS);
  machine.greeting();
  const answers: string[] = [];
  for (let i = 0; i < times; i++) {
    const actions = machine.receive(Buffer.from(LOGIN[adapter.name]!));
    assert.ok(actions.some((a) => a.type === 'login'), `${adapter.name}: login ${i + 1} asked`);
    answers.push(sent(machine.loginFailed('expired', text)));
  }
  return answers;
}

test('each protocol words it with its code, the session\'s text or its own', () => {
  assert.deepEqual(refuse(imapAdapter, 1, TEXT), [`t1 NO [EXPIRED] ${TEXT}\r\n`]);
  assert.deepEqual(refuse(imapAdapter, 1), ['t1 NO [EXPIRED] Your password has expired, please change it and log in again.\r\n']);
  assert.deepEqual(refuse(pop3Adapter, 1, TEXT), [`-ERR [AUTH] ${TEXT}\r\n`]);
  assert.deepEqual(refuse(pop3Adapter, 1), ['-ERR [AUTH] Your password has expired, please change it and log in again.\r\n']);
  assert.deepEqual(refuse(managesieveAdapter, 1, TEXT), [`NO "${TEXT}"\r\n`]);
  assert.deepEqual(refuse(managesieveAdapter, 1), ['NO "Your password has expired, please change it and log in again."\r\n']);
  // A text with a line break is one line still.
  assert.deepEqual(refuse(imapAdapter, 1, 'expired\r\n* OK injected'), ['t1 NO [EXPIRED] expired  * OK injected\r\n']);
});

test(`is no failed login: more than ${MAX_AUTH_ATTEMPTS} on one connection do not close it`, () => {
  for (const adapter of [imapAdapter, pop3Adapter, managesieveAdapter]) {
    const answers = refuse(adapter, MAX_AUTH_ATTEMPTS + 1);
    assert.equal(answers.length, MAX_AUTH_ATTEMPTS + 1);
    for (const answer of answers) assert.doesNotMatch(answer, /<close>|BYE/, `${adapter.name}: ${answer}`);
  }
});
