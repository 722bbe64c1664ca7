// deploy/mailfront.service's Type: exec (systemd 240 and later), so that `systemctl start` fails
// when the executable cannot be run; with Type=simple the unit was reported started either way.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

function unitFile(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'deploy/mailfront.service'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find deploy/mailfront.service above the test');
    dir = parent;
  }
  return join(dir, 'deploy/mailfront.service');
}

test('the unit is Type=exec: a start whose executable cannot be run fails', () => {
  const types = [...readFileSync(unitFile(), 'utf8').matchAll(/^Type=(.*)$/gm)].map((m) => m[1]);
  assert.deepEqual(types, ['exec']);
});
