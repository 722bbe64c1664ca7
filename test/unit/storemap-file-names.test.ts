// Store and slot names YAML reads as numbers. An unquoted name that reads back as written (101)
// is that name, for routing and for a failover written to the file; one that does not (0101,
// 1e3, 0x1A: the numbers 101, 1000, 26) or that is no text at all (true, null) is refused, the
// message naming where and saying to quote it, rather than a store of another name.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

function mapFile(text: string): { file: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'mf-storemap-names-'));
  const file = join(dir, 'stores.yaml');
  writeFileSync(file, text);
  return { file, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

test('a store named by an unquoted number that reads back as written (101) is routed and failed over through the file', async () => {
  const { file, remove } = mapFile('stores:\n  101:   # store 101\n    current_master: s1\n    slots:\n      s1: { host: 127.0.0.1, imap_port: 10143 }\n      s2: { host: 127.0.0.1, imap_port: 10144 }\n');
  try {
    const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, createLogger('silent'), { changes: () => undefined });
    const loaded = await holder.reload('start');
    assert.equal(loaded.ok, true, loaded.error);
    assert.equal(holder.current.stores.get('101')?.currentMaster, 's1');
    const result = await holder.failover('101', 's2');
    assert.equal(result.ok, true, result.error);
    assert.equal(holder.current.stores.get('101')?.currentMaster, 's2');
    const text = readFileSync(file, 'utf8');
    assert.match(text, /^ {2}101:/m, 'the key is kept as written');
    assert.match(text, /# store 101/, 'the comment is kept');
    assert.equal((parse(text) as { stores: Record<string, { current_master: unknown }> }).stores['101']?.current_master, 's2');
  } finally {
    remove();
  }
});

test('slots named by unquoted numbers that read back as written (102) may be named by current_master and preferred_master unquoted, and failed over to', async () => {
  const { file, remove } = mapFile('stores:\n  alpha:\n    current_master: 102\n    preferred_master: 102\n    slots:\n      102: { host: 127.0.0.1, imap_port: 10143 }\n      103: { host: 127.0.0.1, imap_port: 10144 }\n');
  try {
    const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, createLogger('silent'), { changes: () => undefined });
    const loaded = await holder.reload('start');
    assert.equal(loaded.ok, true, loaded.error);
    assert.equal(holder.current.stores.get('alpha')?.currentMaster, '102');
    const result = await holder.failover('alpha', '103');
    assert.equal(result.ok, true, result.error);
    assert.equal(holder.current.stores.get('alpha')?.currentMaster, '103');
    assert.equal(holder.current.stores.get('alpha')?.preferredMaster, '102');
  } finally {
    remove();
  }
});

test('store and slot names, and masters, that YAML does not read as written are refused, naming them and saying to quote them', async () => {
  const slot = (port: number): string => `{ host: 127.0.0.1, imap_port: ${port} }`;
  const { file, remove } = mapFile(
    [
      'stores:',
      `  0101: { current_master: s1, slots: { s1: ${slot(10143)} } }`,
      `  1e3: { current_master: s2, slots: { s2: ${slot(10144)} } }`,
      `  0x1A: { current_master: s3, slots: { s3: ${slot(10145)} } }`,
      `  true: { current_master: s4, slots: { s4: ${slot(10146)} } }`,
      `  null: { current_master: s5, slots: { s5: ${slot(10147)} } }`,
      `  1.50: { current_master: s6, slots: { s6: ${slot(10148)} } }`,
      `  alpha: { current_master: 0102, preferred_master: 0102, slots: { 0102: ${slot(10149)}, "0103": ${slot(10150)} } }`,
      '',
    ].join('\n'),
  );
  try {
    const rejected = await new FileStoreMapSource(file, false).load().then(
      () => assert.fail('the map was taken'),
      (error: Error) => error,
    );
    for (const [path, written] of [
      ['stores.0101', '0101'],
      ['stores.1e3', '1e3'],
      ['stores.0x1A', '0x1A'],
      ['stores.true', 'true'],
      ['stores.null', 'null'],
      ['stores.1.50', '1.50'],
    ]) {
      assert.ok(rejected.message.includes(`${path}: expected a store name YAML reads as written: quote it ("${written}")`), `${path} is refused: ${rejected.message}`);
    }
    for (const path of ['stores.alpha.slots.0102', 'stores.alpha.current_master', 'stores.alpha.preferred_master']) {
      assert.ok(rejected.message.includes(`${path}: expected a slot name YAML reads as written: quote it ("0102")`), `${path} is refused: ${rejected.message}`);
    }
    assert.ok(!rejected.message.includes('0103'), 'a quoted name is taken as written');
  } finally {
    remove();
  }
});

test('two keys that read as one name (101: and "101":, a store or a slot of one) are refused, naming where; the map in force stays', async () => {
  const { file, remove } = mapFile(
    [
      'stores:',
      '  101:',
      '    current_master: a1',
      '    slots:',
      '      a1: { host: 127.0.0.1, imap_port: 10143 }',
      '      a2: { host: 127.0.0.1, imap_port: 10144 }',
      '  beta:',
      '    current_master: b1',
      '    slots:',
      '      b1: { host: 127.0.0.1, imap_port: 10145 }',
      '      201: { host: 127.0.0.1, imap_port: 10146 }',
      '',
    ].join('\n'),
  );
  try {
    const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, createLogger('silent'), { changes: () => undefined });
    const loaded = await holder.reload('start');
    assert.equal(loaded.ok, true, loaded.error);
    // Added later: the same names quoted. YAML holds them apart (a number and a string); the map
    // would be read from the second, a failover written to the first.
    writeFileSync(
      file,
      readFileSync(file, 'utf8').replace('      201: {', '      "201": { host: 127.0.0.1, imap_port: 10148 }\n      201: {') +
        ['  "101":', '    current_master: c1', '    slots:', '      c1: { host: 127.0.0.1, imap_port: 10147 }', ''].join('\n'),
    );
    const rejected = await new FileStoreMapSource(file, false).load().then(
      () => assert.fail('the map was taken'),
      (error: Error) => error,
    );
    assert.ok(rejected.message.includes('stores.101: expected a store name given once (keep one of the keys), found 101 (line 2) and "101" (line 13), both read as "101"'), rejected.message);
    assert.ok(rejected.message.includes('stores.beta.slots.201: expected a slot name given once (keep one of the keys), found "201" (line 11) and 201 (line 12), both read as "201"'), rejected.message);
    // A failover of the store is not written to either key.
    const before = readFileSync(file, 'utf8');
    await assert.rejects(holder.failover('101', 'a2'), /failover of store "101" to "a2" refused, nothing was written: .*\(store "101", store "beta"; fix them first\).*stores\.101: expected a store name given once/s);
    assert.equal(readFileSync(file, 'utf8'), before, 'the file was edited');
    assert.equal(holder.current.stores.get('101')?.currentMaster, 'a1', 'the map in force changed');
  } finally {
    remove();
  }
});

test('a key given twice as written (a store, a slot, a setting) is refused by the YAML reader, naming its line', async () => {
  const slot = (port: number): string => `{ host: 127.0.0.1, imap_port: ${port} }`;
  for (const [text, line] of [
    [`stores:\n  alpha: { current_master: a1, slots: { a1: ${slot(10143)} } }\n  alpha: { current_master: a2, slots: { a2: ${slot(10144)} } }\n`, 3],
    [`stores:\n  alpha:\n    current_master: a1\n    slots:\n      a1: ${slot(10143)}\n      a1: ${slot(10144)}\n`, 6],
    [`stores:\n  alpha:\n    current_master: a1\n    current_master: a2\n    slots:\n      a1: ${slot(10143)}\n      a2: ${slot(10144)}\n`, 4],
    [`stores:\n  "alpha": { current_master: a1, slots: { a1: ${slot(10143)} } }\n  'alpha': { current_master: a2, slots: { a2: ${slot(10144)} } }\n`, 3],
  ] as const) {
    const { file, remove } = mapFile(text);
    try {
      const rejected = await new FileStoreMapSource(file, false).load().then(
        () => assert.fail(`the map was taken: ${text}`),
        (error: Error) => error,
      );
      assert.match(rejected.message, new RegExp(`line ${line} column \\d+: expected each key at most once in a mapping`), text);
    } finally {
      remove();
    }
  }
});
