import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildReport, type IdleFigure, type Results } from '../../bench/report.js';

function idle(bytesPerSessionAfterGc: number, bytesPerSession = bytesPerSessionAfterGc): IdleFigure {
  return {
    sessions: 1000,
    errors: 0,
    openSeconds: 1,
    rssBeforeBytes: 0,
    rssAfterBytes: bytesPerSession * 1000,
    bytesPerSession,
    rssBeforeGcBytes: 0,
    rssAfterGcBytes: bytesPerSessionAfterGc * 1000,
    bytesPerSessionAfterGc,
    forcedGc: true,
    openFilesAfter: 0,
  };
}

function empty(): Results {
  return { noop: {}, fetch: {}, imap: {}, latency: { imap: {}, pop3: {} }, cpu: {}, pop3: {}, idle: {}, profiles: {} } as Results;
}

const goal = (r: Results, starts: string) => {
  const g = buildReport(r, true).goals.find((x) => x.goal.startsWith(starts));
  assert.ok(g, `a goal starting "${starts}"`);
  return g;
};

test('the idle-memory goal is the issue\'s 9 KB, 9,000 bytes, not 9 KiB', () => {
  const r = empty();
  // 9,100 bytes: under 9 KiB (9,216), over 9 KB.
  r.idle.mailfront = idle(9100, 8900);
  const gc = goal(r, 'memory per idle plaintext session ≤ 9 KB, 9,000 bytes (after a full GC)');
  assert.equal(gc.met, false);
  assert.equal(gc.measured, '9100 bytes');
  const found = goal(r, 'memory per idle plaintext session ≤ 9 KB, 9,000 bytes (RSS as found)');
  assert.equal(found.met, true);
  assert.equal(found.by, '100 bytes to spare');
});

test('a rate ratio is shown with the median of the rounds\' own ratios beside it', () => {
  const r = empty();
  const figure = (rounds: number[]) => ({
    loop: { logins: 1000, errors: 0, seconds: 10, perSecond: [...rounds].sort((a, b) => a - b)[1]!, loginMs: { p50: 1, p99: 2, mean: 1, max: 3, n: 1000 }, sessionMs: { p50: 1, p99: 2, mean: 1, max: 3, n: 1000 }, loadCpuShare: 0.1 },
    rounds: rounds.map((perSecond) => ({ perSecond, cpuPer1000: {} })),
    cpuPer1000: {},
    machineBusy: 1,
    foreignCores: 0,
  });
  // Medians 300 and 300 (ratio 1.00), but round by round mailfront was 0.9× direct.
  r.imap.direct = figure([300, 400, 200]);
  r.imap.mailfront = figure([270, 360, 300]);
  const table = buildReport(r, false).table;
  const line = table.split('\n').find((l) => l.startsWith('| IMAP logins/s (connect'));
  assert.ok(line?.includes("1.00× (rounds' median 0.90×)"), line);
  const g = goal(r, 'IMAP login rate ≥ 0.95× direct');
  assert.equal(g.measured, "1.00× (rounds' median 0.90×)");
});

test('login latency rows come from the one-at-a-time loops; the rate loops\' latencies are labelled as taken at saturation', () => {
  const r = empty();
  const ms = (p50: number, p99: number) => ({ p50, p99, mean: p50, max: p99, n: 400 });
  const loop = (p50: number) => ({ logins: 1000, errors: 0, seconds: 10, perSecond: 300, loginMs: ms(p50, p50 * 2), sessionMs: ms(p50, p50 * 2), loadCpuShare: 0.1 });
  const figure = (p50: number) => ({ loop: loop(p50), cpuPer1000: {}, machineBusy: 1, foreignCores: 0 });
  // At saturation 20 clients queue: 60 ms is 20 ÷ 333/s of waiting, not the login's cost.
  r.imap.direct = figure(60);
  r.imap.mailfront = figure(66);
  r.latency.imap = { direct: ms(4.0, 7.0), mailfront: ms(4.5, 8.0) };
  r.pop3.direct = figure(50);
  r.pop3.mailfront = figure(55);
  r.latency.pop3 = { direct: ms(3.0, 5.0), mailfront: ms(3.3, 6.0) };
  const lines = buildReport(r, false).table.split('\n');
  const cells = (start: string): string[] => {
    const line = lines.find((l) => l.startsWith(`| ${start}`));
    assert.ok(line, `a row starting "${start}"`);
    return line.split('|').map((c) => c.trim());
  };
  assert.deepEqual(cells('IMAP login latency p50, ms').slice(2, 4), ['4.00', '4.50']);
  assert.deepEqual(cells('IMAP login latency p99, ms').slice(2, 4), ['7.00', '8.00']);
  assert.deepEqual(cells('POP3 login latency p50, ms').slice(2, 4), ['3.00', '3.30']);
  assert.deepEqual(cells('POP3 login latency p99, ms').slice(2, 4), ['5.00', '6.00']);
  const saturated = lines.filter((l) => l.includes('60.00') || l.includes('50.00'));
  assert.equal(saturated.length, 2, 'the saturated p50s appear once each');
  for (const l of saturated) assert.match(l, /at saturation/);
});

test('the master-user row sets mailfront against the direct and nginx rounds taken in turn with it, and gives no ratio without them', () => {
  const r = empty();
  const figure = (perSecond: number) => ({
    loop: { logins: 1000, errors: 0, seconds: 10, perSecond, loginMs: { p50: 1, p99: 2, mean: 1, max: 3, n: 1000 }, sessionMs: { p50: 1, p99: 2, mean: 1, max: 3, n: 1000 }, loadCpuShare: 0.1 },
    cpuPer1000: {},
    machineBusy: 1,
    foreignCores: 0,
  });
  // The IMAP step's figures, minutes before the master-user rounds.
  r.imap.direct = figure(400);
  r.imap.nginx = figure(250);
  r.imap['mailfront-master-user'] = figure(300);
  const row = (): string[] => {
    const line = buildReport(r, true).table.split('\n').find((l) => l.startsWith('| IMAP logins/s, mailfront master-user login'));
    assert.ok(line);
    return line.split('|').map((c) => c.trim());
  };
  assert.deepEqual(row().slice(2, 7), ['—', '300', '—', '—', '—'], 'nothing taken beside it: no ratio from another step\'s figures');
  r.imap['direct-master-user'] = figure(320);
  r.imap['nginx-master-user'] = figure(240);
  assert.deepEqual(row().slice(2, 7), ['320', '300', '240', '0.94×', '1.25×']);
});

test('the fresh mailfront\'s first logins are labelled as taken before the rounds', () => {
  const line = buildReport(empty(), true).table.split('\n').find((l) => l.includes('a fresh mailfront\'s first logins (each user once'));
  assert.match(line ?? '', /taken before the rounds/);
});

test('the goals measured in pinned steps say so, and the others do not', () => {
  const r = empty();
  const names = (pinned: readonly string[]) => buildReport(r, true, pinned).goals.map((g) => g.goal);
  const pinned = names(['imap', 'master-user', 'pop3']);
  const tagged = pinned.filter((g) => g.includes('[pinned'));
  assert.deepEqual(
    tagged.map((g) => g.replace(/ \[pinned.*$/, '')),
    [
      'IMAP login rate ≥ 0.95× direct',
      'IMAP login rate ≥ 1.2× nginx',
      'POP3 login rate ≥ 0.95× direct',
      'POP3 login rate ≥ 1.2× nginx',
      'CPU per 1,000 IMAP logins, cold cache ≤ 0.6 s',
      'CPU per 1,000 IMAP logins, cold cache ≤ 0.6 s (a fresh mailfront\'s first logins)',
      'CPU per 1,000 IMAP logins, warm cache ≤ 0.3 s',
    ],
  );
  assert.ok(!pinned.some((g) => g.startsWith('FETCH') && g.includes('[pinned')));
  assert.ok(!pinned.some((g) => g.includes('instant backend') && g.includes('[pinned')));
  assert.equal(names([]).filter((g) => g.includes('[pinned')).length, 0);
});
