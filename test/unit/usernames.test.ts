import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeUser } from '../../src/auth/directory.js';
import { readConfig } from '../../src/config/schema.js';
import type { UsernameConfig } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';

const KEEP: UsernameConfig = { lowercase: true };
const STRIP: UsernameConfig = { lowercase: true, domain: 'strip', localDomains: ['example.org', 'xn--mller-kva.example'] };
const QUALIFY: UsernameConfig = { lowercase: true, domain: 'qualify', localDomains: ['example.org', 'example.net'] };

test('one user, many spellings: case, surrounding space, Unicode compatibility forms', () => {
  for (const spelling of ['alice', 'Alice', ' ALICE\t'.replace('\t', ' '), '\u00a0alice\u3000', 'ａｌｉｃｅ', 'ALİCE'.replace('İ', 'I')]) {
    assert.equal(normalizeUser(spelling, KEEP), 'alice', JSON.stringify(spelling));
  }
  assert.equal(normalizeUser('User@Example.ORG', KEEP), 'user@example.org');
  assert.equal(normalizeUser('user@example.org', KEEP), 'user@example.org');
  assert.equal(normalizeUser('ﬁona', KEEP), 'fiona', 'a ligature folds as LDAP folds it');
  assert.equal(normalizeUser('e\u0301mile', KEEP), normalizeUser('\u00e9mile', KEEP), 'combining and precomposed accents are one name');
  assert.equal(normalizeUser('jean  pierre', KEEP), 'jean pierre', 'runs of spaces are one space, as in LDAP matching');
  assert.equal(normalizeUser('İrem', KEEP), 'i\u0307rem'.normalize('NFKC'));
});

test('without lower-casing, the local part keeps its case but the domain does not', () => {
  assert.equal(normalizeUser('Alice', { lowercase: false }), 'Alice');
  assert.equal(normalizeUser('Alice@Example.ORG', { lowercase: false }), 'Alice@example.org');
  assert.equal(normalizeUser('Alice@Example.ORG', { lowercase: false, domain: 'strip', localDomains: ['example.org'] }), 'Alice');
});

test('characters that matching rules drop or that forge lines are refused, not silently removed', () => {
  for (const bad of ['al\u00adice', 'al\u200bice', 'alice\u200d', 'al\ufeffice', 'al\u202eice', 'a\nb', 'a\rb', 'a\0b', 'a\tb', 'a\u0085b', 'a\u2028b', 'al\u034fice', 'alice\ufe0f', 'al\ufffdice', 'a\ud800b', '   ', '', '@example.org', 'alice@', 'alice@ ']) {
    assert.equal(normalizeUser(bad, KEEP), null, JSON.stringify(bad));
  }
  assert.equal(normalizeUser('x'.repeat(257), KEEP), null);
  assert.equal(normalizeUser('x'.repeat(256), KEEP), 'x'.repeat(256));
  assert.equal(normalizeUser('ü'.repeat(129), KEEP), null, 'the bound is in bytes');
});

test('strip: a local domain is removed, a bare name stays, a foreign domain is refused', () => {
  assert.equal(normalizeUser('Alice@Example.ORG', STRIP), 'alice');
  assert.equal(normalizeUser('alice', STRIP), 'alice');
  assert.equal(normalizeUser(' alice @ example.org ', STRIP), 'alice');
  assert.equal(normalizeUser('alice@müller.example', STRIP), 'alice', 'an internationalised domain typed in Unicode');
  assert.equal(normalizeUser('alice@MÜLLER.example', STRIP), 'alice');
  assert.equal(normalizeUser('alice@other.org', STRIP), null);
  assert.equal(normalizeUser('alice@example.org.evil.test', STRIP), null);
  assert.equal(normalizeUser('alice@sub.example.org', STRIP), null, 'subdomains are other domains');
  assert.equal(normalizeUser('alice@bob@example.org', STRIP), null, 'two @ are refused');
  assert.equal(normalizeUser('alice＠example.org', STRIP), 'alice', 'a full-width @ is an @');
});

test('qualify: a bare name gets the first local domain, a local domain stays, a foreign one is refused', () => {
  assert.equal(normalizeUser('Alice', QUALIFY), 'alice@example.org');
  assert.equal(normalizeUser('alice@EXAMPLE.NET', QUALIFY), 'alice@example.net');
  assert.equal(normalizeUser('alice@example.org', QUALIFY), normalizeUser('ALICE', QUALIFY));
  assert.equal(normalizeUser('alice@other.org', QUALIFY), null);
  assert.equal(normalizeUser(`${'x'.repeat(250)}`, QUALIFY), null, 'the bound applies to the qualified name');
});

test('keep with local domains: names in other domains are refused before the directory is asked', () => {
  const config: UsernameConfig = { lowercase: true, domain: 'keep', localDomains: ['example.org'] };
  assert.equal(normalizeUser('alice', config), 'alice');
  assert.equal(normalizeUser('Alice@Example.org', config), 'alice@example.org');
  assert.equal(normalizeUser('alice@other.org', config), null);
  assert.equal(normalizeUser('a@b@example.org', config), null);
  assert.equal(normalizeUser('a@b@example.org', KEEP), 'a@b@example.org', 'without local domains, nothing is checked');
});

function readUsernameSection(section: unknown): { usernames: UsernameConfig; issues: string[] } {
  const issues = new IssueList();
  const config = readConfig({ usernames: section }, '/etc/mailfront/mailfront.yaml', (p) => p, issues);
  return { usernames: config.usernames, issues: issues.issues.filter((i) => i.path.startsWith('usernames')).map((i) => `${i.path}: ${i.expected}`) };
}

test('config: usernames.domain and usernames.local_domains', () => {
  assert.deepEqual(readUsernameSection(undefined), { usernames: { lowercase: true, domain: 'keep', localDomains: [] }, issues: [] });
  assert.deepEqual(readUsernameSection({ lowercase: false, domain: 'strip', local_domains: ['Example.ORG', 'xn--mller-kva.example'] }), {
    usernames: { lowercase: false, domain: 'strip', localDomains: ['example.org', 'xn--mller-kva.example'] },
    issues: [],
  });
  assert.deepEqual(readUsernameSection({ domain: 'qualify', local_domains: 'example.org' }).usernames.localDomains, ['example.org']);
  assert.deepEqual(readUsernameSection({ domain: 'qualify' }).issues, ['usernames.local_domains: the local mail domains (domain is "qualify")']);
  assert.deepEqual(readUsernameSection({ domain: 'remove', local_domains: ['müller.example', 'a..b', 'ok.example'] }).issues, [
    'usernames.domain: one of "keep", "strip", "qualify"',
    'usernames.local_domains[0]: a domain name in ASCII (internationalised names as xn--…)',
    'usernames.local_domains[1]: a domain name in ASCII (internationalised names as xn--…)',
  ]);
});
