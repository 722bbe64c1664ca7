/**
 * CA files renewed in place (the same path, new content) on reload: directory.ca_file and
 * store_map.ldap.ca_file are part of their sections' change test by content, so a reload sets the
 * directory or the store-map source up anew with the new CA; a reload that changes nothing keeps
 * them. A CA file with no usable certificate (empty, cut short mid-rewrite, garbage), which Node's
 * TLS takes without a word and then trusts nothing, rejects the reload naming the file.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { LDAP_STORES_DN, LineClient, run, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { startFront } from './front.js';

const PASSWORD = 'Ca-reload-pw-5c5c';
let slapd: Slapd;
let master: Dovecot;
let dir: { path: string; remove(): Promise<void> };
/** A CA that did not sign slapd's certificate. */
let otherCa: string;

before(async () => {
  slapd = await startSlapd({ tls: true, users: [{ uid: 'cara', password: PASSWORD, store: 'alpha' }] });
  master = await startDovecot({ name: 'ca-m', users: [{ name: 'cara', password: PASSWORD }] });
  dir = tmpDir('careload');
  otherCa = join(dir.path, 'other-ca.pem');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir.path, 'other.key'), '-out', otherCa, '-days', '2', '-subj', '/CN=Another CA']);
  await slapd.modify(
    [`dn: cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', 'cn: alpha', 'mailfrontCurrentMaster: m', '',
     `dn: cn=m,cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', 'cn: m', 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${master.imapPort}`, ''].join('\n'),
  );
});
after(async () => {
  await Promise.all([slapd?.stop(), master?.stop()]);
  await dir?.remove();
});

async function loginLine(port: number): Promise<string> {
  const c = await LineClient.connect(port);
  try {
    await c.readLine();
    c.send(`a LOGIN cara ${PASSWORD}`);
    return await c.readLine(10_000);
  } finally {
    c.close();
  }
}

test('directory.ca_file renewed in place: a reload sets the directory up with the new CA, and a reload that changes nothing keeps it', async () => {
  const ca = join(dir.path, 'dir-ca.pem');
  copyFileSync(otherCa, ca);
  const front = await startFront({ slapd, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort } } } }, directory: { urls: [slapd.ldapsUrl!], ca_file: ca } });
  try {
    assert.match(await loginLine(front.imapTrustedPort), /^a NO \[UNAVAILABLE\] /, 'the wrong CA does not verify slapd');
    const unchanged = (front.mailfront as unknown as { directory: unknown }).directory;
    assert.equal((await front.mailfront.reload()).ok, true);
    assert.equal((front.mailfront as unknown as { directory: unknown }).directory, unchanged, 'nothing changed: the directory is kept');
    copyFileSync(slapd.caFile!, ca);
    const renewed = await front.mailfront.reload();
    assert.equal(renewed.ok, true, renewed.error);
    assert.match(await loginLine(front.imapTrustedPort), /^a OK /, 'the renewed CA is in use');
  } finally {
    await front.stop();
  }
});

test('store_map.ldap.ca_file renewed in place: a reload puts a source with the new CA in place; one that cannot be read rejects the reload', async () => {
  const ca = join(dir.path, 'storemap-ca.pem');
  copyFileSync(slapd.caFile!, ca);
  const front = await startFront({ slapd, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort } } } } });
  const original = readFileSync(front.configFile, 'utf8');
  try {
    const config = parse(original) as Record<string, unknown>;
    config['store_map'] = { ldap: { urls: [slapd.ldapsUrl!], ca_file: ca, base_dn: LDAP_STORES_DN, bind_dn: slapd.rootDn, bind_password: slapd.rootPassword, poll_interval_ms: 100 } };
    writeFileSync(front.configFile, stringify(config));
    const switched = await front.mailfront.reload();
    assert.equal(switched.ok, true, switched.error);
    assert.equal(switched.storeMap.ok, true, switched.storeMap.error);
    const source = front.mailfront.holder.source;
    assert.match(source.description, /^ldap /);
    assert.equal((await front.mailfront.reload()).ok, true);
    assert.equal(front.mailfront.holder.source, source, 'nothing changed: the source is kept');
    copyFileSync(otherCa, ca);
    assert.equal((await front.mailfront.reload()).ok, true);
    assert.notEqual(front.mailfront.holder.source, source, 'the renewed CA file gives a new source');
    const renewed = front.mailfront.holder.source;
    rmSync(ca);
    const unreadable = await front.mailfront.reload();
    assert.equal(unreadable.ok, false);
    assert.match(unreadable.error ?? '', /store_map\.ldap\.ca_file: cannot read .*storemap-ca\.pem: ENOENT/);
    assert.equal(front.mailfront.holder.source, renewed);
    writeFileSync(ca, 'not a certificate\n');
    const garbage = await front.mailfront.reload();
    assert.equal(garbage.ok, false);
    assert.match(garbage.error ?? '', /store_map\.ldap\.ca_file: .*storemap-ca\.pem holds no PEM certificate/);
    assert.equal(front.mailfront.holder.source, renewed);
  } finally {
    writeFileSync(front.configFile, original);
    await front.mailfront.reload();
    await front.stop();
  }
});

test('directory.ca_file with no usable certificate (cut short mid-rewrite, empty, garbage) rejects the reload naming the file; the directory in force keeps serving logins', async () => {
  const ca = join(dir.path, 'dir-ca-cut.pem');
  copyFileSync(slapd.caFile!, ca);
  const front = await startFront({ slapd, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort } } } }, directory: { urls: [slapd.ldapsUrl!], ca_file: ca } });
  try {
    assert.match(await loginLine(front.imapTrustedPort), /^a OK /);
    const pem = readFileSync(slapd.caFile!, 'utf8');
    const inForce = (front.mailfront as unknown as { directory: unknown }).directory;
    const cases: Array<[string, string, RegExp]> = [
      ['cut short', pem.slice(0, pem.length / 2), /ends inside a PEM certificate/],
      ['cut short after its first line', pem.slice(0, 40), /ends inside a PEM certificate/],
      ['empty', '', /holds no PEM certificate .*the file is empty/],
      ['garbage', 'garbage\n', /holds no PEM certificate/],
      ['a certificate whose body is damaged', pem.replace(/\n[A-Za-z0-9+/]{20}/, '\n!!!!'), /cannot be parsed/],
    ];
    for (const [what, content, reason] of cases) {
      writeFileSync(ca, content);
      const reloaded = await front.mailfront.reload();
      assert.equal(reloaded.ok, false, what);
      assert.match(reloaded.error ?? '', /directory\.ca_file: .*dir-ca-cut\.pem /, what);
      assert.match(reloaded.error ?? '', reason, what);
      assert.equal((front.mailfront as unknown as { directory: unknown }).directory, inForce, `${what}: the directory in force stays`);
      assert.match(await loginLine(front.imapTrustedPort), /^a OK /, what);
    }
    // The renewal finished: the same content as in force, nothing to change.
    writeFileSync(ca, pem);
    assert.equal((await front.mailfront.reload()).ok, true);
    assert.match(await loginLine(front.imapTrustedPort), /^a OK /);
  } finally {
    await front.stop();
  }
});
