/**
 * The suite-wide secret scan: every mailfront log line that any test file produced (written by
 * front.ts to MAILFRONT_TEST_LOG_DIR) is searched for every secret any test file registered
 * (passwords, proxy and bind secrets, SASL blobs) and their base64 forms. scripts/test.sh runs
 * this file after all the others. A scan of nothing fails: no logs means the scan is broken.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { MIN_SECRET_CHARS, formsOf } from './secrets.js';

const dir = process.env['MAILFRONT_TEST_LOG_DIR'];

test('no secret registered by any test file appears in any mailfront log line of the suite', { skip: dir === undefined ? 'MAILFRONT_TEST_LOG_DIR is not set (scripts/test.sh sets it)' : false }, (t) => {
  assert.ok(dir !== undefined);
  const files = readdirSync(dir);
  const logFiles = files.filter((f) => f.endsWith('.log'));
  const secretFiles = files.filter((f) => f.endsWith('-secrets.json'));
  assert.ok(logFiles.length > 0, `no log files in ${dir}: the scan would pass on nothing`);
  assert.ok(secretFiles.length > 0, `no registered secrets in ${dir}`);
  for (const log of logFiles) {
    const owner = log.split('-')[0];
    assert.ok(secretFiles.includes(`${owner}-secrets.json`), `${log}: its test process registered no secrets`);
  }

  const secrets = new Set<string>();
  for (const file of secretFiles) {
    const list = JSON.parse(readFileSync(join(dir, file), 'utf8')) as unknown;
    assert.ok(Array.isArray(list) && list.every((s) => typeof s === 'string'), `${file}: not a list of strings`);
    for (const secret of list as string[]) {
      assert.ok(secret.length >= MIN_SECRET_CHARS, `${file}: a registered secret is shorter than ${MIN_SECRET_CHARS} characters`);
      secrets.add(secret);
    }
  }
  const needles = new Map<string, string>();
  for (const secret of secrets) for (const form of formsOf(secret)) needles.set(form, secret);

  let lines = 0;
  const found: string[] = [];
  for (const log of logFiles) {
    const text = readFileSync(join(dir, log), 'utf8');
    const count = text.split('\n').length - 1;
    lines += count;
    for (const [needle, secret] of needles) {
      // Whole-file search first; only a hit is located line by line.
      if (!text.includes(needle)) continue;
      text.split('\n').forEach((line, i) => {
        if (line.includes(needle)) found.push(`${log}:${i + 1}: ${JSON.stringify(secret)}${needle === secret ? '' : ` (as ${needle})`} in ${line.slice(0, 300)}`);
      });
    }
  }
  t.diagnostic(`scanned ${lines} log lines in ${logFiles.length} files for ${secrets.size} secrets (${needles.size} forms)`);
  assert.ok(lines > 0, 'the log files are empty: the scan would pass on nothing');
  assert.deepEqual(found, [], `secrets in the logs:\n${found.slice(0, 20).join('\n')}`);
});

test('the scan finds a secret in each of its forms', () => {
  const secret = 'Alice-pw-9f3e';
  const blob = Buffer.from(`\0alice\0${secret}`).toString('base64');
  assert.ok(formsOf(secret).some((f) => blob.includes(f)), 'inside a SASL PLAIN blob');
  for (const prefix of ['', 'x', 'xy', 'xyz']) {
    const encoded = Buffer.from(`${prefix}${secret}tail`).toString('base64');
    assert.ok(formsOf(secret).some((f) => encoded.includes(f)), `base64 after ${prefix.length} bytes`);
  }
  assert.ok(formsOf('pa"ss\\word').includes('pa\\"ss\\\\word'), 'JSON-escaped');
  assert.ok(!formsOf(secret).some((f) => f.length < MIN_SECRET_CHARS));
});
