/**
 * Summarises a V8 .heapsnapshot (e.g. from `node --heapsnapshot-signal=SIGUSR2`): self size and
 * count per constructor (objects), per function (closures) and per kind (strings, arrays, code).
 * Given a baseline snapshot too, shows the growth between the two, divided by the number of
 * sessions opened in between: what one idle session costs in the JavaScript heap.
 *
 *   node dist/bench/heap-summary.js FILE.heapsnapshot [TOP=25]
 *   node dist/bench/heap-summary.js BASELINE.heapsnapshot FILE.heapsnapshot SESSIONS [TOP=25]
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface HeapSnapshot {
  readonly snapshot: { readonly meta: { readonly node_fields: readonly string[]; readonly node_types: readonly unknown[] } };
  readonly nodes: readonly number[];
  readonly strings: readonly string[];
}

export interface HeapGroup {
  readonly group: string;
  readonly count: number;
  readonly bytes: number;
}

/** Total self size and the groups, largest first. */
export function summariseHeap(snapshot: HeapSnapshot): { totalBytes: number; groups: HeapGroup[] } {
  const fields = snapshot.snapshot.meta.node_fields;
  const width = fields.length;
  const typeAt = fields.indexOf('type');
  const nameAt = fields.indexOf('name');
  const sizeAt = fields.indexOf('self_size');
  const types = snapshot.snapshot.meta.node_types[0] as readonly string[];
  const groups = new Map<string, { count: number; bytes: number }>();
  let totalBytes = 0;
  for (let i = 0; i < snapshot.nodes.length; i += width) {
    const type = types[snapshot.nodes[i + typeAt] ?? 0] ?? '?';
    const name = snapshot.strings[snapshot.nodes[i + nameAt] ?? 0] ?? '';
    const size = snapshot.nodes[i + sizeAt] ?? 0;
    totalBytes += size;
    // Strings, numbers and code are grouped by kind: their names are their contents.
    const key = type === 'object' || type === 'closure' || type === 'native' || type === 'hidden' ? `${type} ${name.slice(0, 60)}` : `(${type})`;
    const g = groups.get(key) ?? { count: 0, bytes: 0 };
    g.count++;
    g.bytes += size;
    groups.set(key, g);
  }
  return { totalBytes, groups: [...groups].map(([group, g]) => ({ group, ...g })).sort((a, b) => b.bytes - a.bytes) };
}

function load(file: string): { totalBytes: number; groups: HeapGroup[] } {
  return summariseHeap(JSON.parse(readFileSync(file, 'utf8')) as HeapSnapshot);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  const out = (s: string): boolean => process.stdout.write(`${s}\n`);
  if (args.length === 0) {
    process.stderr.write('usage: node dist/bench/heap-summary.js [BASELINE.heapsnapshot] FILE.heapsnapshot [SESSIONS] [TOP=25]\n');
    process.exit(2);
  }
  if (args[1]?.endsWith('.heapsnapshot')) {
    const [baseFile, file, sessionsArg, topArg] = args;
    const sessions = Math.max(1, Number(sessionsArg ?? 1));
    const base = load(baseFile!);
    const after = load(file!);
    const before = new Map(base.groups.map((g) => [g.group, g]));
    const growth = after.groups
      .map((g) => ({ group: g.group, count: g.count - (before.get(g.group)?.count ?? 0), bytes: g.bytes - (before.get(g.group)?.bytes ?? 0) }))
      .sort((a, b) => b.bytes - a.bytes);
    out(`heap growth: ${((after.totalBytes - base.totalBytes) / 1048576).toFixed(1)} MiB = ${((after.totalBytes - base.totalBytes) / sessions).toFixed(0)} B per session (${sessions} sessions)`);
    for (const g of growth.slice(0, topArg === undefined ? 25 : Number(topArg))) {
      out(`${(g.bytes / sessions).toFixed(0).padStart(7)} B/session ${(g.count / sessions).toFixed(2).padStart(6)} per session  ${g.group}`);
    }
  } else {
    const [file, topArg] = args;
    const { totalBytes, groups } = load(file!);
    out(`heap: ${(totalBytes / 1048576).toFixed(1)} MiB in objects`);
    for (const g of groups.slice(0, topArg === undefined ? 25 : Number(topArg))) out(`${(g.bytes / 1024).toFixed(0).padStart(9)} KiB ${String(g.count).padStart(8)} ×  ${g.group}`);
  }
}
