// backend.source_addresses: the local addresses connections to the slots, and their health
// probes, leave from, taken in turn within the slot's family; an address that is no IP literal is
// refused when the config is read, one the host does not have when it is checked (start,
// check-config, reload) and, if it gets that far, at the dial (kind local-resources, naming it).
// Plain TCP listeners on 127.0.0.1 record where each connection came from: 127.0.0.2 and
// 127.0.0.3 are local on Linux's lo (127.0.0.0/8), 192.0.2.1 (TEST-NET-1) is only ever bound.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { dialSlot, probeSlot, unusableSourceAddresses, configSourceAddresses } from '../../src/backend/connect.js';
import { ConfigError, loadConfig, loadStoreMap } from '../../src/config/load.js';
import type { BackendConfig } from '../../src/config/schema.js';
import { MailfrontError } from '../../src/errors.js';
import { Canceller } from '../../src/cancel.js';
import type { Slot } from '../../src/routing/storemap.js';
import { tmpDir } from '../integration/servers/tmp.js';

/** A listener on 127.0.0.1 that greets as IMAP and records each peer's address. */
interface Recorder {
  readonly server: Server;
  readonly port: number;
  readonly peers: string[];
}

let recorder: Recorder;
const sockets = new Set<Socket>();

before(async () => {
  const peers: string[] = [];
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    peers.push(socket.remoteAddress ?? '?');
    socket.write('* OK ready\r\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  recorder = { server, port: address.port, peers };
});

after(async () => {
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => recorder.server.close(resolve));
});

function backend(overrides: Partial<BackendConfig> = {}): BackendConfig {
  return Object.freeze({ loginMode: 'replay', masterUserSeparator: '*', tls: 'none', forwardClientAddress: false, forwardClientId: false, connectTimeoutMs: 2_000, loginTimeoutMs: 2_000, proxyProtocol: 'none', ...overrides });
}

function slot(host = '127.0.0.1'): Slot {
  return { name: 'a', store: 's', host, imapPort: recorder.port };
}

/** Dials `times` times under `config` and returns the peers the listener saw for them. */
async function dialled(config: BackendConfig, times: number, host?: string): Promise<string[]> {
  const from = recorder.peers.length;
  for (let i = 0; i < times; i++) {
    const socket = await dialSlot(slot(host), 'imap', config, new Canceller());
    socket.destroy();
  }
  for (let i = 0; i < 100 && recorder.peers.length < from + times; i++) await new Promise((r) => setTimeout(r, 10));
  return recorder.peers.slice(from);
}

test('connections leave from the source addresses in turn; without any, the kernel picks (127.0.0.1)', async () => {
  assert.deepEqual(await dialled(backend(), 2), ['127.0.0.1', '127.0.0.1']);
  const config = backend({ sourceAddresses: Object.freeze(['127.0.0.2', '127.0.0.3']) });
  assert.deepEqual(await dialled(config, 5), ['127.0.0.2', '127.0.0.3', '127.0.0.2', '127.0.0.3', '127.0.0.2']);
  // Another config holding the same list (a store inheriting its profile's) goes on in the same turn.
  assert.deepEqual(await dialled({ ...config, connectTimeoutMs: 3_000 }, 1), ['127.0.0.3']);
});

test('only the addresses of the slot\'s family are taken: an IPv6 address in the list does not break an IPv4 slot\'s turn', async () => {
  const config = backend({ sourceAddresses: Object.freeze(['::1', '127.0.0.3', '127.0.0.2']) });
  assert.deepEqual(await dialled(config, 3), ['127.0.0.3', '127.0.0.2', '127.0.0.3']);
});

test('a slot named by host name is looked up and dialled at an address of a family the sources have', async () => {
  const config = backend({ sourceAddresses: Object.freeze(['127.0.0.2']) });
  assert.deepEqual(await dialled(config, 2, 'localhost'), ['127.0.0.2', '127.0.0.2']);
  // "127.1" is no IP literal to Node, but the resolver reads it as 127.0.0.1 (inet_aton), and only that.
  assert.deepEqual(await dialled(config, 1, '127.1'), ['127.0.0.2']);
  // An IPv6-only list and a name with no IPv6 address: a dial failure naming why.
  const v6 = backend({ sourceAddresses: Object.freeze(['::1']) });
  const error = await dialSlot(slot('127.1'), 'imap', v6, new Canceller()).then(
    () => assert.fail('dialled'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof MailfrontError);
  assert.equal(error.code, 'BACKEND_SOURCE_FAMILY_MISSING');
  assert.equal(error.kind, 'connect');
  assert.match(error.message, /\(127\.0\.0\.1\): backend\.source_addresses of its store holds IPv6 addresses only/);
});

test('health probes leave from the source addresses too, in the same turn as logins', async () => {
  const config = backend({ sourceAddresses: Object.freeze(['127.0.0.2', '127.0.0.3']) });
  const from = recorder.peers.length;
  await probeSlot(slot(), 'imap', config, new Canceller());
  await probeSlot(slot(), 'imap', config, new Canceller());
  const socket = await dialSlot(slot(), 'imap', config, new Canceller());
  socket.destroy();
  for (let i = 0; i < 100 && recorder.peers.length < from + 3; i++) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(recorder.peers.slice(from), ['127.0.0.2', '127.0.0.3', '127.0.0.2']);
});

test('a source address the host does not have fails the dial as local-resources, naming the address; the slot is never reached', async () => {
  const from = recorder.peers.length;
  const config = backend({ sourceAddresses: Object.freeze(['192.0.2.1']) });
  const error = await dialSlot(slot(), 'imap', config, new Canceller()).then(
    () => assert.fail('dialled'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof MailfrontError, String(error));
  assert.equal(error.kind, 'local-resources');
  assert.equal(error.code, 'BACKEND_SOURCE_ADDRESS_NOT_LOCAL');
  assert.match(error.message, /192\.0\.2\.1 \(backend\.source_addresses\) is not an address of this host/);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(recorder.peers.length, from);
});

/** A directory with `files` in it, removed when the process exits. */
function writeTemp(files: Record<string, string>): string {
  const dir = tmpDir('source-addresses').path;
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

function configText(backendSection: string, profiles = ''): string {
  return `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, plaintext_without_tls: true }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password: x
  base_dn: ou=people,dc=example,dc=org
store_map: { file: stores.yaml }
backend:
${backendSection}
${profiles}`;
}

const STORES = `
stores:
  store1:
    current_master: slot1
    slots:
      slot1: { host: 127.0.0.1, imap_port: 1430 }
`;

function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected a ConfigError, nothing was thrown');
}

test('source_addresses is read as a list of IP literals, inherited by profiles, and set apart by one; anything else is refused naming its path', () => {
  const dir = writeTemp({
    'mf.yaml': configText('  source_addresses: [127.0.0.2, "::1"]', 'backend_profiles:\n  same: { tls: none }\n  own: { source_addresses: 127.0.0.3 }\n  none: { source_addresses: [] }\n'),
    'stores.yaml': STORES,
  });
  const config = loadConfig(join(dir, 'mf.yaml'));
  assert.deepEqual(config.backend.sourceAddresses, ['127.0.0.2', '::1']);
  assert.equal(config.backendProfiles.get('same')?.sourceAddresses, config.backend.sourceAddresses, 'inherited as the same list (one turn)');
  assert.deepEqual(config.backendProfiles.get('own')?.sourceAddresses, ['127.0.0.3']);
  assert.equal(config.backendProfiles.get('none')?.sourceAddresses, undefined);
  assert.equal(loadConfig(join(writeTemp({ 'mf.yaml': configText('  tls: none'), 'stores.yaml': STORES }), 'mf.yaml')).backend.sourceAddresses, undefined);

  const bad = writeTemp({
    'mf.yaml': configText('  source_addresses: [127.0.0.2, mail.example.org, 10.0.0.0/8, 0.0.0.0, "127.0.0.2:25", 7]', 'backend_profiles:\n  p: { source_addresses: { a: 1 } }\n'),
    'stores.yaml': STORES,
  });
  const error = configErrorOf(() => loadConfig(join(bad, 'mf.yaml')));
  assert.deepEqual(
    error.issues.map((i) => i.path),
    ['backend.source_addresses[1]', 'backend.source_addresses[2]', 'backend.source_addresses[3]', 'backend.source_addresses[4]', 'backend.source_addresses[5]', 'backend_profiles.p.source_addresses'],
  );
  assert.match(error.issues[0]!.expected, /an IPv4 or IPv6 address of this host, written as an IP literal/);
});

test('a slot whose address is of a family none of its store\'s source addresses has is refused in the store map, naming the slot', () => {
  const dir = writeTemp({
    'mf.yaml': configText('  source_addresses: [127.0.0.2]', 'backend_profiles:\n  both: { source_addresses: [127.0.0.2, "::1"] }\n'),
    'stores.yaml': `
stores:
  store1:
    current_master: slot1
    slots:
      slot1: { host: "::1", imap_port: 1430 }
      slot2: { host: 127.0.0.1, imap_port: 1430 }
      slot3: { host: mail.example.org, imap_port: 1430 }
  store2:
    backend_profile: both
    current_master: slot4
    slots:
      slot4: { host: "::1", imap_port: 1430 }
`,
  });
  const config = loadConfig(join(dir, 'mf.yaml'));
  const error = configErrorOf(() => loadStoreMap(join(dir, 'stores.yaml'), 1, config));
  assert.deepEqual(error.issues.map((i) => i.path), ['stores.store1.slots.slot1.host']);
  assert.match(error.issues[0]!.expected, /holds IPv4 addresses only/);
});

test('unusableSourceAddresses names each address the host does not have, by path, once', async () => {
  const dir = writeTemp({
    'mf.yaml': configText('  source_addresses: [127.0.0.2, 192.0.2.1]', 'backend_profiles:\n  same: { tls: none }\n  other: { source_addresses: [192.0.2.1, 127.0.0.3, 198.51.100.7] }\n'),
    'stores.yaml': STORES,
  });
  const config = loadConfig(join(dir, 'mf.yaml'));
  const issues = await unusableSourceAddresses(configSourceAddresses(config));
  assert.deepEqual(
    issues.map((i) => [i.path, i.found]),
    [
      ['backend.source_addresses[1]', '"192.0.2.1"'],
      ['backend_profiles.other.source_addresses[2]', '"198.51.100.7"'],
    ],
  );
  assert.match(issues[0]!.expected, /an address of this host .*EADDRNOTAVAIL/);
  assert.deepEqual(await unusableSourceAddresses([['backend.source_addresses', ['127.0.0.2', '::1']]]), []);
});
