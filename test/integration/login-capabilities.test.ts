/**
 * The capabilities in IMAP's login reply against a real Cyrus, which lists STARTTLS,
 * LOGINDISABLED or AUTH=… in its own post-login capabilities: the client gets the list without
 * them (they belong to the not-authenticated state, RFC 9051 §6.2), while a CAPABILITY command
 * through the splice still reaches Cyrus and shows its own list. Also: slapd.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startCyrus, startSlapd } from './servers/index.js';
import type { Cyrus, Slapd } from './servers/index.js';
import { registerSecrets, startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Carol-caps-2b7e';
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-caps-proxy-91' };
registerSecrets([PASSWORD, CYRUS_PROXY.password]);

let slapd: Slapd;
let cyrus: Cyrus;
let front: Front;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'carol', password: PASSWORD, store: 'gamma' }] });
  cyrus = await startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only' }], proxyAdmin: CYRUS_PROXY });
  front = await startFront({
    slapd,
    stores: {
      gamma: {
        currentMaster: 'c1',
        slots: { c1: { imapPort: cyrus.imapPort } },
        backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
      },
    },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), cyrus?.stop()]);
});

const PREAUTH_ONLY = /^(?:STARTTLS|LOGINDISABLED|AUTH=.*)$/i;

test('the login reply leaves out the capabilities of the not-authenticated state that Cyrus lists after login', async () => {
  const raw = await LineClient.connect(front.imapTrustedPort);
  try {
    await raw.readLine();
    raw.write(`a LOGIN carol "${PASSWORD}"\r\n`);
    const reply = await raw.readLine();
    const code = /^a OK \[CAPABILITY ([^\]]*)\] /.exec(reply);
    assert.ok(code !== null, reply);
    const shown = (code[1] as string).split(' ');
    assert.ok(shown.includes('IMAP4rev1') || shown.includes('IMAP4rev2'), reply);
    assert.deepEqual(shown.filter((atom) => PREAUTH_ONLY.test(atom)), [], reply);

    // What Cyrus itself lists, through the splice: the atoms left out are there, the rest is the same.
    raw.write('b CAPABILITY\r\n');
    const untagged = await raw.readLine();
    assert.equal(await raw.readLine(), 'b OK Completed');
    assert.match(untagged, /^\* CAPABILITY /);
    const own = untagged.slice('* CAPABILITY '.length).split(' ');
    assert.notDeepEqual(own.filter((atom) => PREAUTH_ONLY.test(atom)), [], `Cyrus lists none of them after login, so this test shows nothing: ${untagged}`);
    assert.deepEqual(own.filter((atom) => !PREAUTH_ONLY.test(atom)), shown);
  } finally {
    raw.close();
  }
});
