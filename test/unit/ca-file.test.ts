// CA files (directory.ca_file, store_map.ldap.ca_file) must hold at least one PEM certificate,
// each of which parses: Node's TLS takes an empty, cut-short or garbage file without a word and
// then trusts nothing.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readCaCertificates } from '../../src/ca-file.js';
import { MailfrontError } from '../../src/errors.js';
import { testCertsPem } from '../integration/servers/certs.js';

let dir: string;
let ca: string;
let cert: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mf-ca-file-'));
  ({ ca, cert } = await testCertsPem());
});

after(() => rmSync(dir, { recursive: true, force: true }));

function read(content: string): Buffer {
  const file = join(dir, 'ca.pem');
  writeFileSync(file, content);
  return readCaCertificates(file, 'directory.ca_file');
}

test('a file of PEM certificates is read as it is, text around them and all', () => {
  for (const content of [ca, `${ca}${cert}`, `# our CA\n${ca}\n`]) assert.equal(read(content).toString(), content);
});

test('a CA file with no certificate, one cut short or one that does not parse is refused, naming the key and the file', () => {
  const half = ca.slice(0, ca.length / 2);
  const cases: Array<[string, RegExp]> = [
    ['', /holds no PEM certificate .*the file is empty/],
    ['garbage\n', /holds no PEM certificate .*8 bytes of something else/],
    [half, /ends inside a PEM certificate \(1 of 1/],
    [`${ca}${cert.slice(0, 60)}`, /ends inside a PEM certificate \(1 of 2/],
    ['-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', /cannot be parsed \(certificate 1 of 1/],
  ];
  for (const [content, reason] of cases) {
    assert.throws(() => read(content), (error: unknown) => {
      assert.ok(error instanceof MailfrontError, String(error));
      assert.equal(error.code, 'CA_FILE_UNUSABLE');
      assert.equal(error.kind, 'config');
      assert.match(error.message, /^directory\.ca_file: .*ca\.pem /);
      assert.match(error.message, reason);
      return true;
    }, JSON.stringify(content.slice(0, 40)));
  }
});

test('a CA file that cannot be read is refused as before (CA_FILE_UNREADABLE, the error code)', () => {
  assert.throws(() => readCaCertificates(join(dir, 'missing.pem'), 'store_map.ldap.ca_file'), /store_map\.ldap\.ca_file: cannot read .*missing\.pem: ENOENT/);
});

test("a CA in OpenSSL's TRUSTED CERTIFICATE form (openssl x509 -trustout), which Node's TLS takes, is read; one cut short or not base64 is refused", () => {
  const trusted = execFileSync('openssl', ['x509', '-trustout', '-addtrust', 'serverAuth'], { input: ca }).toString();
  assert.match(trusted, /^-----BEGIN TRUSTED CERTIFICATE-----\n/);
  for (const content of [trusted, `${trusted}${cert}`]) assert.equal(read(content).toString(), content);
  const cases: Array<[string, RegExp]> = [
    [trusted.slice(0, trusted.length / 2), /ends inside a PEM certificate \(1 of 1/],
    [trusted.replace('-----END TRUSTED CERTIFICATE-----', '-----END CERTIFICATE-----'), /ends inside a PEM certificate \(1 of 1/],
    ['-----BEGIN TRUSTED CERTIFICATE-----\nAAAA\n-----END TRUSTED CERTIFICATE-----\n', /cannot be parsed \(certificate 1 of 1/],
    ['-----BEGIN TRUSTED CERTIFICATE-----\nnot base64!\n-----END TRUSTED CERTIFICATE-----\n', /cannot be parsed \(certificate 1 of 1: its body is not base64/],
  ];
  for (const [content, reason] of cases) assert.throws(() => read(content), reason, JSON.stringify(content.slice(0, 60)));
});

test('a TRUSTED CERTIFICATE whose trust settings leave out or reject serverAuth is refused: TLS would find it unsuitable for every server', () => {
  const trustout = (...args: string[]): string => execFileSync('openssl', ['x509', '-trustout', ...args], { input: ca }).toString();
  // Taken as they are: no settings, serverAuth among the trusted uses, any use (anyExtendedKeyUsage).
  for (const ok of [trustout(), trustout('-addtrust', 'serverAuth', '-addtrust', 'emailProtection'), trustout('-addtrust', 'anyExtendedKeyUsage'), trustout('-addreject', 'emailProtection')]) assert.equal(read(ok).toString(), ok);
  assert.throws(() => read(trustout('-addtrust', 'emailProtection')), /its trust settings do not include serverAuth/);
  assert.throws(() => read(trustout('-addreject', 'serverAuth')), /its trust settings reject serverAuth/);
  assert.throws(() => read(trustout('-addtrust', 'serverAuth', '-addreject', 'anyExtendedKeyUsage')), /reject serverAuth/);
});
