/**
 * The client's own ID parameters on their way to the backend (backend.forward_client_id): what
 * the pre-auth machine keeps of the last ID before login (encoded once, without the fields only a
 * trusted proxy may send nor NIL values, within 27 pairs and 512 bytes, forgotten at STARTTLS),
 * how the pairs read back with an IMAP parser, where the backend login machine puts them in its
 * ID, and the config key.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { readBackend, readConfig } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { ImapCommandParser, type ImapArg } from '../../src/protocol/imap/parser.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import type { ForwardedClientId, PreauthMachine } from '../../src/protocol/types.js';
import { backendTrace, BACKEND_DEFAULTS, chunkers, TLS_CLIENT, utf8 } from './imap-testkit.js';

const DOVECOT_GREETING = '* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot ready.\r\n';
const LOGIN = 'mf2 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n';

/** A pre-auth machine (TLS already on) fed `input` in `pieces`. */
function machineAfter(input: string, pieces: (b: Uint8Array) => Uint8Array[] = (b) => [b], options = {}): PreauthMachine {
  const machine = imapAdapter.createPreauth({ ...TLS_CLIENT, ...options });
  machine.greeting();
  for (const piece of pieces(utf8(input))) machine.receive(piece);
  return machine;
}

/** The pairs parsed back by mailfront's own IMAP parser, as [field, value]. */
function readBack(id: ForwardedClientId): Array<[string, string]> {
  const parser = new ImapCommandParser();
  parser.push(utf8(`a ID (${id.pairs})\r\n`));
  const event = parser.nextCommand();
  assert.equal(event?.type, 'command', JSON.stringify(event));
  const [list] = event.type === 'command' ? event.command.args : [];
  assert.equal(list?.type, 'list');
  const items = (list as Extract<ImapArg, { type: 'list' }>).items;
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i < items.length; i += 2) {
    const field = items[i];
    const value = items[i + 1];
    assert.ok(field?.type === 'string' && value?.type === 'string', JSON.stringify([field, value]));
    pairs.push([field.value, value.value]);
  }
  return pairs;
}

describe('the client ID the pre-auth machine keeps', () => {
  it('keeps nothing until an ID names something to forward', () => {
    assert.equal(machineAfter('').clientId, null);
    assert.equal(machineAfter('a ID NIL\r\nb ID ()\r\n').clientId, null);
    assert.equal(machineAfter('a ID ("x-originating-ip" "192.0.2.1" "x-session-id" "s")\r\n').clientId, null);
  });

  it('encodes the pairs once: quoted strings, escapes, and literals for 8-bit text, after the quoted pairs; a NIL value is left out', () => {
    const literal = 'Grüße ✓';
    const id = machineAfter(`a ID ("name" "Grüße" "version" "1.0 \\"rc\\" \\\\ {5} )" "os" NIL "vendor" "" "support-url" {${Buffer.byteLength(literal)}+}\r\n${literal})\r\n`).clientId;
    assert.deepEqual(id, {
      pairs: `"version" "1.0 \\"rc\\" \\\\ {5} )" "vendor" "" "name" {7+}\r\nGrüße "support-url" {${Buffer.byteLength(literal)}+}\r\n${literal}`,
      quotedLength: '"version" "1.0 \\"rc\\" \\\\ {5} )" "vendor" ""'.length,
    });
    assert.deepEqual(readBack(id), [
      ['version', '1.0 "rc" \\ {5} )'],
      ['vendor', ''],
      ['name', 'Grüße'],
      ['support-url', literal],
    ]);
  });

  it('leaves out every field a backend believes only from a trusted proxy, whatever its case', () => {
    const reserved = [
      'x-originating-ip', 'X-Originating-Port', 'x-connected-ip', 'x-connected-port', 'x-connected-name', 'x-proxy-ttl', 'X-SESSION-ID',
      'x-session-ext-id', 'x-forward-master_user', 'X-Forward-', 'x-client-transport', 'x-multiplex',
    ];
    const id = machineAfter(`a ID (${reserved.map((field) => `"${field}" "v"`).join(' ')} "name" "Mail" "x-mailer-build" "7" "x-client" "c")\r\n`).clientId;
    assert.ok(id);
    assert.deepEqual(readBack(id), [['name', 'Mail'], ['x-mailer-build', '7'], ['x-client', 'c']]);
  });

  it('keeps the last ID before login: a later one replaces it, ID NIL takes it back, a refused one changes nothing', () => {
    assert.deepEqual(machineAfter('a ID ("name" "One" "os" "x")\r\nb ID ("name" "Two")\r\n').clientId, { pairs: '"name" "Two"', quotedLength: 12 });
    assert.equal(machineAfter('a ID ("name" "One")\r\nb ID NIL\r\n').clientId, null);
    // Over 30 pairs, a value over 1024 bytes, a control character (CR, LF, NUL, in a literal): BAD, and the ID before stands.
    const pairs31 = Array.from({ length: 31 }, (_, i) => `"k${i}" "v"`).join(' ');
    const refused = machineAfter(
      `a ID ("name" "Kept")\r\nb ID (${pairs31})\r\nc ID ("name" "${'x'.repeat(1025)}")\r\nd ID ("name" {4+}\r\na\r\nb)\r\ne ID ("name" {3+}\r\na\0b)\r\nf ID ("name" "Kept"\r\n`,
    );
    assert.deepEqual(refused.clientId, { pairs: '"name" "Kept"', quotedLength: 13 });
  });

  it('keeps at most 27 pairs, so that with mailfront\'s three fields the ID keeps to the 30 of RFC 2971', () => {
    const id = machineAfter(`a ID (${Array.from({ length: 30 }, (_, i) => `"k${i}" "v"`).join(' ')})\r\n`).clientId;
    assert.ok(id);
    assert.deepEqual(readBack(id).map(([field]) => field), Array.from({ length: 27 }, (_, i) => `k${i}`));
    assert.equal(machineAfter('a ID ("os" NIL "vendor" NIL)\r\n').clientId, null);
  });

  it('keeps at most 512 bytes of pairs: a pair past them is left out, a later one that fits is kept', () => {
    const long = Array.from({ length: 29 }, (_, i) => `"f${String(i + 1).padStart(2, '0')}" "${'v'.repeat(100)}"`);
    const id = machineAfter(`a ID (${long.join(' ')} "name" "Small")\r\n`).clientId;
    assert.ok(id);
    assert.deepEqual(readBack(id).map(([field]) => field), ['f01', 'f02', 'f03', 'f04', 'name']);
    assert.ok(Buffer.byteLength(id.pairs) <= 512, `${Buffer.byteLength(id.pairs)} bytes`);
  });

  it('forgets an ID sent before STARTTLS; one sent after it is kept', () => {
    const machine = machineAfter('a ID ("name" "Injected")\r\nb STARTTLS\r\n', undefined, { tlsActive: false, starttlsAvailable: true });
    assert.deepEqual(machine.clientId, { pairs: '"name" "Injected"', quotedLength: 17 });
    machine.tlsStarted();
    assert.equal(machine.clientId, null);
    machine.receive(utf8('c ID ("name" "Mail")\r\n'));
    assert.deepEqual(machine.clientId, { pairs: '"name" "Mail"', quotedLength: 13 });
  });

  it('keeps the same pairs however the input is split', () => {
    const input = 'a ID ("name" "Grüße" "x-originating-ip" "1.2.3.4" "os" {4+}\r\nÄö)\r\n';
    const whole = machineAfter(input).clientId;
    assert.ok(whole);
    for (const { label, chunk } of chunkers(utf8(input).length)) assert.deepEqual(machineAfter(input, chunk).clientId, whole, label);
  });
});

describe('the client ID in the backend login machine\'s ID', () => {
  const forward = { ip: '192.0.2.1', port: 1, sessionId: 'x' };
  const clientId: ForwardedClientId = { pairs: '"name" "Thunderbird" "os" "Linux" "vendor" {5+}\r\nGrüß', quotedLength: '"name" "Thunderbird" "os" "Linux"'.length };

  /** What the machine sends on `greeting`, as UTF-8. */
  function firstWrite(greeting: string, options: Parameters<typeof imapAdapter.createBackendLogin>[0]): string {
    const [first] = imapAdapter.createBackendLogin(options).receive(utf8(greeting));
    assert.equal(first?.type, 'send');
    return first?.type === 'send' ? Buffer.from(first.data).toString('utf8') : '';
  }

  it('goes after mailfront\'s own fields, in the ID pipelined ahead of the login', () => {
    assert.equal(
      firstWrite(DOVECOT_GREETING, { ...BACKEND_DEFAULTS, forward, clientId }),
      `mf1 ID ("x-originating-ip" "192.0.2.1" "x-originating-port" "1" "x-session-id" "x" "name" "Thunderbird" "os" "Linux" "vendor" {5+}\r\nGrüß)\r\n${LOGIN}`,
    );
    // The ID's answer and the login's: logged in.
    const trace = backendTrace({ forward, clientId: { pairs: '"name" "Thunderbird"', quotedLength: 20 } }, [DOVECOT_GREETING + 'mf1 OK ID completed.\r\nmf2 OK [CAPABILITY IMAP4rev1] Logged in\r\n']);
    assert.deepEqual(trace, [`send mf1 ID ("x-originating-ip" "192.0.2.1" "x-originating-port" "1" "x-session-id" "x" "name" "Thunderbird")\r\n${LOGIN}`, 'done IMAP4rev1', 'state done', 'leftover ']);
  });

  it('goes alone when the address is not forwarded, and makes no ID when there is nothing to send', () => {
    assert.equal(firstWrite(DOVECOT_GREETING, { ...BACKEND_DEFAULTS, clientId }), `mf1 ID ("name" "Thunderbird" "os" "Linux" "vendor" {5+}\r\nGrüß)\r\n${LOGIN}`);
    assert.equal(firstWrite(DOVECOT_GREETING, { ...BACKEND_DEFAULTS, clientId: null }), 'mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n');
  });

  it('is not sent to a backend that does not list ID', () => {
    const greeting = '* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n';
    assert.equal(firstWrite(greeting, { ...BACKEND_DEFAULTS, forward, clientId }), 'mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n');
    assert.equal(firstWrite(greeting, { ...BACKEND_DEFAULTS, clientId }), 'mf1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n');
  });

  it('leaves out the pairs with a literal for a backend that takes neither LITERAL+ nor LITERAL-', () => {
    const greeting = '* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] ready\r\n';
    assert.equal(firstWrite(greeting, { ...BACKEND_DEFAULTS, clientId }), 'mf1 ID ("name" "Thunderbird" "os" "Linux")\r\nmf2 LOGIN {5}\r\n');
    assert.equal(firstWrite(greeting, { ...BACKEND_DEFAULTS, clientId: { pairs: '"vendor" {5+}\r\nGrüß', quotedLength: 0 } }), 'mf1 LOGIN {5}\r\n');
    assert.equal(firstWrite(greeting.replace('ID', 'ID LITERAL-'), { ...BACKEND_DEFAULTS, clientId }), `mf1 ID ("name" "Thunderbird" "os" "Linux" "vendor" {5+}\r\nGrüß)\r\n${LOGIN}`);
  });
});

describe('backend.forward_client_id', () => {
  /** The backend section read from `backend` (with `profile` read over it), and the issues as "path: expected …, found …". */
  function read(backend: Record<string, unknown>, profile: Record<string, unknown> = {}): { readonly on: boolean; readonly profileOn: boolean; readonly issues: string[] } {
    const issues = new IssueList();
    const base = readBackend(backend, 'backend', (p) => p, issues);
    const overridden = readBackend(profile, 'backend_profiles.p', (p) => p, issues, base);
    return { on: base.forwardClientId, profileOn: overridden.forwardClientId, issues: issues.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`) };
  }

  it('is on by default, whatever forward_client_address says; a profile or store inherits it or sets its own', () => {
    assert.deepEqual(read({}), { on: true, profileOn: true, issues: [] });
    assert.deepEqual(read({ forward_client_address: false }), { on: true, profileOn: true, issues: [] });
    assert.deepEqual(read({ forward_client_id: false }), { on: false, profileOn: false, issues: [] });
    assert.deepEqual(read({ forward_client_id: false }, { forward_client_id: true }), { on: false, profileOn: true, issues: [] });
  });

  it('is true or false: anything else is refused naming its path', () => {
    assert.deepEqual(read({ forward_client_id: 'yes' }).issues, ['backend.forward_client_id: expected true or false, found "yes"']);
    assert.deepEqual(read({}, { forward_client_id: 1 }).issues, ['backend_profiles.p.forward_client_id: expected true or false, found number 1']);
    const issues = new IssueList();
    readConfig(
      {
        listeners: [{ protocol: 'imap', host: '127.0.0.1', port: 1143, tls: 'none', plaintext_without_tls: true }],
        directory: { urls: ['ldap://127.0.0.1:389'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x' },
        store_map: { file: '/nonexistent/stores.yaml' },
        backend: { forward_client_id: 'no' },
      },
      '/nonexistent/mailfront.yaml',
      (p) => p,
      issues,
    );
    assert.deepEqual(issues.issues.map((i) => i.path), ['backend.forward_client_id']);
  });
});
