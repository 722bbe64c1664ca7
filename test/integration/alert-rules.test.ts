/**
 * The Prometheus rules mailfront ships (deploy/prometheus/): promtool checks them and runs their
 * unit tests; every metric they read is in the /metrics of a running mailfront, of a type that
 * suits how it is read, with the labels they match on, so that a metric renamed in src/metrics.ts
 * cannot leave an alert watching nothing; and the compose demo's Prometheus loads them.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { LineClient, run, startDovecot, startRedis, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Redis, Slapd } from './servers/index.js';
import { registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';

const PROMTOOL = '/usr/bin/promtool';

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'deploy/prometheus'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find deploy/prometheus above the test');
    dir = parent;
  }
  return dir;
}

const ROOT = repoRoot();
const RULES = join(ROOT, 'deploy/prometheus/mailfront-rules.yml');
const RULES_TEST = join(ROOT, 'deploy/prometheus/mailfront-rules.test.yml');
const DOCKER = join(ROOT, 'docker');

/** Series the rules read that Prometheus makes itself, not mailfront. */
const PROMETHEUS_OWN = new Set(['up']);
/** PromQL words that are not metric names (those followed by a parenthesis are functions and are skipped anyway). */
const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan']);
/** Functions whose argument must be a counter (or a histogram's _bucket, _sum or _count). */
const COUNTER_FUNCTIONS = /\b(?:rate|irate|increase|resets)\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)/g;

interface RuleFile {
  readonly groups: Array<{ readonly name: string; readonly rules: Array<{ readonly record?: string; readonly alert?: string; readonly expr: string }> }>;
}

/** Runs promtool; returns its exit code and everything it printed. */
async function promtool(args: readonly string[]): Promise<{ ok: boolean; output: string }> {
  try {
    // `test rules` takes 6 s of CPU: twice run's default 30 s on a loaded machine.
    const { stdout, stderr } = await run(PROMTOOL, args, { timeoutMs: 180_000 });
    return { ok: true, output: stdout + stderr };
  } catch (error) {
    return { ok: false, output: error instanceof Error ? error.message : String(error) };
  }
}

/** The metric names an expression reads (label values, label names and function names left out). */
function metricNamesIn(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ');
  const names = new Set<string>();
  for (const match of bare.matchAll(/(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, name = '', call] = match;
    if (call === undefined && !KEYWORDS.has(name.toLowerCase())) names.add(name);
  }
  return [...names];
}

/** Each selector's metric name and the label names its matchers use: `a{x="1",y=~"2"}` is a: x, y. */
function selectorsIn(expr: string): Array<{ name: string; labels: string[] }> {
  const selectors: Array<{ name: string; labels: string[] }> = [];
  for (const match of expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}/g)) {
    const labels = [...(match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)].map((m) => m[1] ?? '');
    selectors.push({ name: match[1] ?? '', labels });
  }
  return selectors;
}

/** What an exposition holds: each sample name's family type, and the label names its samples carry. */
interface Exposition {
  readonly types: Map<string, string>;
  readonly labels: Map<string, Set<string>>;
}

function parseExposition(body: string): Exposition {
  const types = new Map<string, string>();
  const labels = new Map<string, Set<string>>();
  for (const line of body.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type !== null) {
      const [, family = '', kind = ''] = type;
      types.set(family, kind);
      if (kind === 'histogram' || kind === 'summary') for (const suffix of ['_bucket', '_sum', '_count']) types.set(family + suffix, kind);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? /.exec(line);
    if (sample === null) continue;
    const [, name = '', inner = ''] = sample;
    const names = labels.get(name) ?? new Set<string>();
    for (const m of inner.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) names.add(m[1] ?? '');
    labels.set(name, names);
  }
  return { types, labels };
}

/**
 * What is wrong with the rules' metrics against `exposition`: names it does not have, names read
 * as counters that are not, label names matched on that its samples do not carry.
 */
function problemsOf(rules: RuleFile, exposition: Exposition): string[] {
  const recorded = new Set(rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.record !== undefined ? [r.record] : []))));
  const problems: string[] = [];
  for (const group of rules.groups) {
    for (const rule of group.rules) {
      const what = rule.alert ?? rule.record ?? '?';
      for (const name of metricNamesIn(rule.expr)) {
        if (!recorded.has(name) && !PROMETHEUS_OWN.has(name) && !exposition.types.has(name)) problems.push(`${what}: ${name} is not in mailfront's /metrics`);
      }
      for (const match of rule.expr.matchAll(COUNTER_FUNCTIONS)) {
        const name = match[1] ?? '';
        const type = exposition.types.get(name);
        if (type !== undefined && type !== 'counter' && !(type === 'histogram' && /_(?:bucket|sum|count)$/.test(name))) problems.push(`${what}: ${name} is a ${type}, read as a counter`);
      }
      for (const { name, labels } of selectorsIn(rule.expr)) {
        const carried = exposition.labels.get(name);
        if (carried === undefined) continue;
        for (const label of labels) if (label !== '__name__' && !carried.has(label)) problems.push(`${what}: ${name} has no label ${label}`);
      }
    }
  }
  return problems;
}

const readRules = (text = readFileSync(RULES, 'utf8')): RuleFile => parse(text) as RuleFile;

// The cases run at once: each reads the shipped files, writes only a temporary folder of its own,
// and the running mailfront's are its own.
describe('the shipped Prometheus rules', { concurrency: true }, () => {
  it('pass promtool check rules', async () => {
    const { ok, output } = await promtool(['check', 'rules', RULES]);
    assert.ok(ok, output);
    const rules = readRules();
    const count = rules.groups.reduce((n, g) => n + g.rules.length, 0);
    assert.match(output, new RegExp(`SUCCESS: ${count} rules found`));
    assert.ok(rules.groups.some((g) => g.rules.some((r) => r.alert !== undefined)), 'there are alerts');
  });

  it('pass their promtool unit tests, which test every alert', async () => {
    const { ok, output } = await promtool(['test', 'rules', RULES_TEST]);
    assert.ok(ok, output);
    assert.match(output, /SUCCESS/);
    const tests = parse(readFileSync(RULES_TEST, 'utf8')) as { tests: Array<{ alert_rule_test?: Array<{ alertname: string; exp_alerts: unknown[] }> }> };
    const fired = new Set(tests.tests.flatMap((t) => (t.alert_rule_test ?? []).filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    const quiet = new Set(tests.tests.flatMap((t) => (t.alert_rule_test ?? []).filter((a) => a.exp_alerts.length === 0).map((a) => a.alertname)));
    const alerts = readRules().groups.flatMap((g) => g.rules.flatMap((r) => (r.alert !== undefined ? [r.alert] : [])));
    assert.deepEqual(alerts.filter((a) => !fired.has(a)), [], 'every alert is tested firing');
    assert.deepEqual(alerts.filter((a) => !quiet.has(a)), [], 'every alert is tested quiet');
  });

  describe('read only metrics a running mailfront exposes', () => {
    const PASSWORD = 'Alert-rules-pw-7c2e';
    registerPasswords(PASSWORD, 'Alert-rules-wrong-9b1d');
    let slapd: Slapd;
    let dovecot: Dovecot;
    let redis: Redis;
    let front: Front;
    let exposition: Exposition;

    before(async () => {
      [slapd, dovecot, redis] = await Promise.all([
        startSlapd({ users: [{ uid: 'ada', password: PASSWORD, store: 'alpha' }] }),
        startDovecot({ name: 'alerts', users: [{ name: 'ada', password: PASSWORD }] }),
        startRedis(),
      ]);
      // Redis for the throttle: mailfront_throttle_redis_up is exposed only while it is configured.
      front = await startFront({
        slapd,
        stores: { alpha: { currentMaster: 'a1', preferredMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort }, a2: { imapPort: dovecot.imapPort } } } },
        throttle: { enabled: true, redis: { url: redis.url } },
        health: { interval_ms: 1000 },
      });
      // A login and a failed one, so that the login, LDAP and backend families have samples (and labels to check).
      const client = await LineClient.connect(front.imapTrustedPort);
      try {
        await client.readLine();
        assert.equal((await client.imap(`LOGIN ada "Alert-rules-wrong-9b1d"`)).status, 'NO');
        assert.equal((await client.imap(`LOGIN ada "${PASSWORD}"`)).status, 'OK');
      } finally {
        client.close();
      }
      const { host, port } = front.mailfront.httpAddress()!;
      // The first health round is spread over health.interval_ms: wait for both slots' results.
      let body = '';
      for (let i = 0; i < 50; i++) {
        body = await (await fetch(`http://${host}:${port}/metrics`)).text();
        if ((body.match(/^mailfront_slot_up\{/gm) ?? []).length === 2) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      exposition = parseExposition(body);
    });
    after(async () => {
      await front?.stop();
      await Promise.all([slapd?.stop(), dovecot?.stop(), redis?.stop()]);
    });

    it('every metric name, counter and matched label of the rules is in /metrics', () => {
      assert.ok(exposition.types.has('mailfront_throttle_redis_up'), 'the exposition has the metrics registered only at times');
      assert.ok(exposition.labels.has('mailfront_slot_up'), 'the slots were probed');
      assert.ok(exposition.labels.has('process_max_fds'), 'the process metrics are there');
      // Both from the start: every store of the map has its maintenance gauge (0 when not in
      // maintenance) and its failover count, and readiness is read at each scrape.
      assert.ok(exposition.labels.get('mailfront_store_maintenance')?.has('store'), 'the maintenance gauge of a store never in maintenance');
      assert.ok(exposition.labels.get('mailfront_failovers_total')?.has('store'), 'the failover count of a store never failed over');
      assert.ok(exposition.labels.has('mailfront_ready'), 'the readiness gauge');
      assert.deepEqual(problemsOf(readRules(), exposition), []);
    });

    it('would notice a metric or label renamed in the rules, and a gauge read as a counter', () => {
      const text = readFileSync(RULES, 'utf8');
      assert.ok(text.includes('mailfront_slot_up == 0') && text.includes('mailfront_store_map_source_up == 0') && text.includes('{result=~"timeout|error"}'));
      const broken = text
        .replaceAll('mailfront_slot_up == 0', 'mailfront_slot_healthy == 0')
        .replaceAll('{result=~"timeout|error"}', '{outcome=~"timeout|error"}')
        .replace('mailfront_store_map_source_up == 0', 'rate(mailfront_store_map_source_up[5m]) == 0');
      const problems = problemsOf(readRules(broken), exposition);
      assert.ok(problems.includes('MailfrontStoreMasterDown: mailfront_slot_healthy is not in mailfront\'s /metrics'), problems.join('\n'));
      assert.ok(problems.includes('MailfrontDirectoryErrors: mailfront_ldap_request_duration_seconds_count has no label outcome'), problems.join('\n'));
      assert.ok(problems.includes('MailfrontStoreMapSourceDown: mailfront_store_map_source_up is a gauge, read as a counter'), problems.join('\n'));
    });
  });

  it('would notice a wrong expectation in the unit tests (promtool is really testing)', async () => {
    const dir = tmpDir('alert-rules');
    try {
      await copyFile(RULES, join(dir.path, 'mailfront-rules.yml'));
      const tests = readFileSync(RULES_TEST, 'utf8');
      const expected = 'exp_labels: { severity: critical, job: mailfront, store: s1, slot: s101 }';
      assert.ok(tests.includes(expected));
      await writeFile(join(dir.path, 'mailfront-rules.test.yml'), tests.replace(expected, expected.replace('critical', 'warning')));
      const { ok, output } = await promtool(['test', 'rules', join(dir.path, 'mailfront-rules.test.yml')]);
      assert.equal(ok, false, output);
      assert.match(output, /alertname: MailfrontStoreMasterDown/);
    } finally {
      await dir.remove();
    }
  });

  it("are loaded by the compose demo's Prometheus, mounted where its rule_files look", async () => {
    const compose = parse(readFileSync(join(DOCKER, 'compose.yaml'), 'utf8'), { merge: true }) as { services: Record<string, { volumes?: string[] }> };
    const mounts = (compose.services['prometheus']?.volumes ?? []).map((spec) => spec.split(':'));
    const configMount = mounts.find(([, target]) => target === '/etc/prometheus/prometheus.yml');
    assert.ok(configMount, 'prometheus.yml is mounted');
    const configFile = resolve(DOCKER, configMount[0] ?? '');
    const rulesMount = mounts.find(([source]) => source !== undefined && resolve(DOCKER, source) === RULES);
    assert.ok(rulesMount, `compose.yaml mounts ${RULES} into the prometheus service`);
    const target = rulesMount[1] ?? '';
    const config = parse(readFileSync(configFile, 'utf8')) as Record<string, unknown> & { rule_files?: string[] };
    const globs = (config.rule_files ?? []).map((g) => resolve('/etc/prometheus', g));
    const matches = (glob: string, path: string): boolean => new RegExp(`^${glob.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*')}$`).test(path);
    assert.ok(globs.some((g) => matches(g, target)), `rule_files ${JSON.stringify(config.rule_files)} take ${target}`);
    // The config as Prometheus will read it, with the mounted file where it is on this machine.
    const dir = tmpDir('alert-rules-config');
    try {
      const file = join(dir.path, 'prometheus.yml');
      await writeFile(file, stringify({ ...config, rule_files: [RULES] }));
      const { ok, output } = await promtool(['check', 'config', file]);
      assert.ok(ok, output);
      assert.match(output, /SUCCESS: \d+ rules found/);
    } finally {
      await dir.remove();
    }
  });
});
