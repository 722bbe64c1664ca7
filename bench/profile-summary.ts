/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`): the top self-time frames and the self
 * time per code area (mailfront's own files, each npm package, Node's internals, GC).
 *
 *   node dist/bench/profile-summary.js FILE.cpuprofile [TOP=15]
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
  readonly columnNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
  readonly hitCount?: number;
  readonly children?: readonly number[];
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples?: readonly number[];
  readonly timeDeltas?: readonly number[];
}

export interface FrameTime {
  readonly frame: string;
  readonly area: string;
  readonly selfMs: number;
  /** Share of the busy (non-idle) time. */
  readonly share: number;
  /** The nearest callers in mailfront's own code or a package (not Node internals), by the time they account for. */
  readonly callers: ReadonlyArray<{ readonly frame: string; readonly selfMs: number }>;
}

export interface ProfileSummary {
  readonly totalMs: number;
  readonly busyMs: number;
  readonly top: readonly FrameTime[];
  readonly areas: ReadonlyArray<{ readonly area: string; readonly selfMs: number; readonly share: number }>;
}

/** The code area a frame belongs to: a package, a mailfront source folder, node internals, or a V8 pseudo-frame. */
function areaOf(frame: CallFrame): string {
  const url = frame.url;
  if (url === '') {
    if (frame.functionName.startsWith('(')) return frame.functionName; // (garbage collector), (program), (idle)
    return '(native)';
  }
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0] ?? ''}`;
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1] ?? ''}` : (rest[0] ?? url);
  }
  const src = url.indexOf('/src/');
  if (src >= 0) return `mailfront ${url.slice(src + 1).replace(/\.js$/, '')}`;
  return url.replace(/^file:\/\//, '');
}

function frameName(frame: CallFrame): string {
  const name = frame.functionName === '' ? '(anonymous)' : frame.functionName;
  if (frame.url === '') return name;
  const file = frame.url.replace(/^file:\/\//, '').replace(/^.*\/node_modules\//, '').replace(/^.*\/dist[^/]*\//, '');
  return `${name} ${file}:${frame.lineNumber + 1}`;
}

/** Self time per frame and per area of a profile. */
export function summarise(profile: CpuProfile, top = 15): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  if (profile.samples !== undefined && profile.timeDeltas !== undefined) {
    // timeDeltas[i] is the time before sample i; attribute the gap after each sample to it.
    const { samples, timeDeltas } = profile;
    for (let i = 0; i < samples.length; i++) {
      const id = samples[i];
      const dt = timeDeltas[i + 1] ?? 0;
      if (id !== undefined) selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, dt));
    }
  } else {
    const interval = (profile.endTime - profile.startTime) / Math.max(1, profile.nodes.reduce((n, p) => n + (p.hitCount ?? 0), 0));
    for (const n of profile.nodes) selfUs.set(n.id, (n.hitCount ?? 0) * interval);
  }
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  /** The first ancestor outside node:internal / node:* and native frames: who in user land caused this. */
  const userCaller = (id: number): string => {
    for (let p = parent.get(id); p !== undefined; p = parent.get(p)) {
      const f = byId.get(p)?.callFrame;
      if (f === undefined) break;
      if (f.url !== '' && !f.url.startsWith('node:')) return frameName(f);
    }
    return '(no user-land caller)';
  };
  const callers = new Map<string, Map<string, number>>();
  const frames = new Map<string, { area: string; us: number }>();
  const areas = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (node === undefined) continue;
    totalUs += us;
    if (node.callFrame.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    const key = frameName(node.callFrame);
    const area = areaOf(node.callFrame);
    const f = frames.get(key) ?? { area, us: 0 };
    f.us += us;
    frames.set(key, f);
    const byCaller = callers.get(key) ?? new Map<string, number>();
    const caller = userCaller(id);
    byCaller.set(caller, (byCaller.get(caller) ?? 0) + us);
    callers.set(key, byCaller);
    areas.set(area, (areas.get(area) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const share = (us: number): number => (busyUs > 0 ? us / busyUs : 0);
  return {
    totalMs: totalUs / 1000,
    busyMs: busyUs / 1000,
    top: [...frames].sort((a, b) => b[1].us - a[1].us).slice(0, top).map(([frame, f]) => ({
      frame,
      area: f.area,
      selfMs: f.us / 1000,
      share: share(f.us),
      callers: [...(callers.get(frame) ?? [])].sort((a, b) => b[1] - a[1]).slice(0, 4).map(([c, us]) => ({ frame: c, selfMs: us / 1000 })),
    })),
    areas: [...areas].sort((a, b) => b[1] - a[1]).map(([area, us]) => ({ area, selfMs: us / 1000, share: share(us) })),
  };
}

/** Reads a .cpuprofile file and summarises it. */
export function summariseFile(file: string, top = 15): ProfileSummary {
  return summarise(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, top);
}

/** The summary as text: a table of the top frames, then the areas above 1 %. */
export function formatSummary(s: ProfileSummary): string {
  const pct = (x: number): string => `${(x * 100).toFixed(1).padStart(5)} %`;
  const lines = [
    `profile: ${(s.totalMs / 1000).toFixed(2)} s sampled, ${(s.busyMs / 1000).toFixed(2)} s busy (not idle); shares are of the busy time`,
    '',
    'top self-time frames:',
    ...s.top.flatMap((f, i) => [
      `${String(i + 1).padStart(3)}. ${pct(f.share)} ${f.selfMs.toFixed(0).padStart(7)} ms  ${f.frame}  [${f.area}]`,
      ...(f.area.startsWith('(') || f.area.startsWith('node:')
        ? f.callers.filter((c) => c.selfMs >= Math.max(1, f.selfMs * 0.05)).map((c) => `${' '.repeat(22)}${c.selfMs.toFixed(0).padStart(7)} ms from ${c.frame}`)
        : []),
    ]),
    '',
    'self time by area:',
    ...s.areas.filter((a) => a.share >= 0.01).map((a) => `     ${pct(a.share)} ${a.selfMs.toFixed(0).padStart(7)} ms  ${a.area}`),
  ];
  return lines.join('\n');
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [file, top] = process.argv.slice(2);
  if (file === undefined) {
    process.stderr.write('usage: node dist/bench/profile-summary.js FILE.cpuprofile [TOP=15]\n');
    process.exit(2);
  }
  process.stdout.write(`${formatSummary(summariseFile(file, top === undefined ? 15 : Number(top)))}\n`);
}
