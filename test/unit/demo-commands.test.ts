// What `npm run demo` tells the user to run must be there on the machine the bootstrap prepared:
// each program its printed commands start is in the package list of the demo's bootstrap
// (scripts/bootstrap.sh --demo, as scripts/demo.sh runs it), or is node.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const DEMO = readFileSync(join(ROOT, 'scripts/demo.ts'), 'utf8');
const BOOTSTRAP = readFileSync(join(ROOT, 'scripts/bootstrap.sh'), 'utf8');

/** The package that puts each program a demo command may start on PATH. */
const PROGRAM_PACKAGE: Readonly<Record<string, string>> = { python3: 'python3', openssl: 'openssl', curl: 'curl', wget: 'wget', nc: 'netcat-openbsd', telnet: 'telnet', socat: 'socat', 'sieve-connect': 'sieve-connect', ldapsearch: 'ldap-utils' };

test('every program the demo prints a command for is installed by the bootstrap', () => {
  assert.match(readFileSync(join(ROOT, 'scripts/demo.sh'), 'utf8'), /^bash scripts\/bootstrap\.sh --demo$/m, 'the demo runs the bootstrap for the demo');
  const packages = new Set((/^DEMO_PACKAGES=\(([^)]*)\)/m.exec(BOOTSTRAP)?.[1] ?? '').split(/\s+/).filter(Boolean));
  assert.ok(packages.has('slapd'), 'the demo\'s package list was found');
  // The text printed once the demo runs: from its first line to the end of the template.
  const printed = /mailfront demo is running[\s\S]*?Press Ctrl-C/.exec(DEMO)?.[0] ?? '';
  assert.notEqual(printed, '', 'the demo\'s printed text was found');
  const programs = [...printed.matchAll(/(?:^ {2}|: )([a-z][\w-]*) (?=\S)/gm)].map((m) => m[1]!).filter((word) => word in PROGRAM_PACKAGE);
  assert.ok(programs.includes('python3') && programs.includes('openssl'), `the commands were found: ${programs.join(', ')}`);
  for (const program of programs) assert.ok(packages.has(PROGRAM_PACKAGE[program]!), `the demo prints a ${program} command, but the bootstrap does not install ${PROGRAM_PACKAGE[program]}`);
});
