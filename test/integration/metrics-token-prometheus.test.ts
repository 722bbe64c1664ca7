/**
 * The example prometheus.yml mailfront ships (deploy/prometheus/prometheus.yml) scrapes a
 * mailfront whose /metrics needs http.metrics_token: promtool checks it, and a real Prometheus
 * run with it (its rules, targets and token file put where they are on this machine) scrapes
 * `mailfront serve` as up, while a job bearing another token is down with a 401.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { freePort, run, spawnDaemon, tmpDir, waitForPort } from './servers/index.js';
import type { Daemon, TmpDir } from './servers/index.js';
import { ONE_SLOT_STORE_MAP, serve, stop } from '../unit/serve-process.js';
import type { Serve } from '../unit/serve-process.js';

const PROMTOOL = '/usr/bin/promtool';
const PROMETHEUS = '/usr/bin/prometheus';
const TOKEN = 'prometheus-scrape-token-3c9d71e0';
const WRONG_TOKEN = 'not-the-scrape-token-a8f2b64c';

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
const EXAMPLE = join(ROOT, 'deploy/prometheus/prometheus.yml');
const RULES = join(ROOT, 'deploy/prometheus/mailfront-rules.yml');

interface ScrapeConfig {
  job_name: string;
  metrics_path?: string;
  authorization?: { type?: string; credentials_file?: string };
  static_configs: Array<{ targets: string[] }>;
}
interface PrometheusConfig {
  global?: Record<string, unknown>;
  rule_files?: string[];
  scrape_configs: ScrapeConfig[];
}

interface Target {
  readonly labels: Record<string, string>;
  readonly health: string;
  readonly lastError: string;
}

describe('the example prometheus.yml with http.metrics_token', () => {
  let dir: TmpDir;
  let mailfront: Serve | undefined;
  let prometheus: Daemon | undefined;
  let httpPort = 0;
  const example = parse(readFileSync(EXAMPLE, 'utf8')) as PrometheusConfig;
  const job = example.scrape_configs.find((j) => j.job_name === 'mailfront');

  before(async () => {
    dir = tmpDir('metrics-token-prometheus');
    await writeFile(join(dir.path, 'token'), `${TOKEN}\n`, { mode: 0o600 });
    await writeFile(join(dir.path, 'wrong-token'), `${WRONG_TOKEN}\n`, { mode: 0o600 });
    await writeFile(join(dir.path, 'stores.yaml'), ONE_SLOT_STORE_MAP);
    httpPort = await freePort();
    const imapPort = await freePort();
    await writeFile(
      join(dir.path, 'mailfront.yaml'),
      `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${imapPort}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\nhttp: { host: 127.0.0.1, port: ${httpPort}, metrics_token_file: token }\n`,
    );
    mailfront = serve(join(dir.path, 'mailfront.yaml'));
    await mailfront.logged('http.bound');
  });

  after(async () => {
    await prometheus?.stop();
    if (mailfront !== undefined) await stop(mailfront);
    await dir?.remove();
  });

  it('has the mailfront job bear a token from a credentials_file, and passes promtool check config', async () => {
    assert.ok(job, 'a job named mailfront, as the alerting rules expect');
    assert.equal(job.metrics_path ?? '/metrics', '/metrics');
    assert.equal(job.authorization?.type ?? 'Bearer', 'Bearer');
    assert.match(job.authorization?.credentials_file ?? '', /^\//);
    // As Prometheus will read it, with the rules and the token file where they are on this machine.
    const file = join(dir.path, 'example.yml');
    await writeFile(file, stringify({ ...example, rule_files: [RULES], scrape_configs: example.scrape_configs.map((j) => (j.job_name === 'mailfront' ? { ...j, authorization: { ...j.authorization, credentials_file: join(dir.path, 'token') } } : j)) }));
    const { stdout } = await run(PROMTOOL, ['check', 'config', file]);
    assert.match(stdout, /SUCCESS: \d+ rules found/);
  });

  it('has a real Prometheus scrape mailfront with it: up with the token, down with a 401 with another', async () => {
    assert.ok(job);
    const webPort = await freePort();
    const config = join(dir.path, 'prometheus.yml');
    const target = { static_configs: [{ targets: [`127.0.0.1:${httpPort}`] }] };
    await writeFile(
      config,
      stringify({
        global: { ...example.global, scrape_interval: '1s', evaluation_interval: '1s' },
        scrape_configs: [
          { ...job, ...target, authorization: { ...job.authorization, credentials_file: join(dir.path, 'token') } },
          { ...job, ...target, job_name: 'mailfront-wrong-token', authorization: { ...job.authorization, credentials_file: join(dir.path, 'wrong-token') } },
        ],
      }),
    );
    prometheus = spawnDaemon({
      name: 'prometheus',
      command: PROMETHEUS,
      args: [`--config.file=${config}`, `--storage.tsdb.path=${join(dir.path, 'data')}`, `--web.listen-address=127.0.0.1:${webPort}`, '--log.level=warn'],
      logFile: join(dir.path, 'prometheus.log'),
    });
    await waitForPort(webPort);
    // Bounded: scrapes every second; 30 s is far more than the first two need.
    let targets: Target[] = [];
    for (let i = 0; i < 60; i++) {
      const answer = (await (await fetch(`http://127.0.0.1:${webPort}/api/v1/targets`)).json()) as { data: { activeTargets: Target[] } };
      targets = answer.data.activeTargets;
      if (targets.length === 2 && targets.every((t) => t.health !== 'unknown')) break;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    const byJob = new Map(targets.map((t) => [t.labels['job'], t]));
    assert.equal(byJob.get('mailfront')?.health, 'up', JSON.stringify(targets));
    assert.equal(byJob.get('mailfront')?.lastError, '');
    assert.equal(byJob.get('mailfront-wrong-token')?.health, 'down', JSON.stringify(targets));
    assert.match(byJob.get('mailfront-wrong-token')?.lastError ?? '', /401/);
    // What it scraped is mailfront's.
    const query = (await (await fetch(`http://127.0.0.1:${webPort}/api/v1/query?query=${encodeURIComponent('mailfront_build_info{job="mailfront"}')}`)).json()) as { data: { result: unknown[] } };
    assert.equal(query.data.result.length, 1, JSON.stringify(query));
    // Neither token in mailfront's log.
    const log = JSON.stringify(mailfront?.lines());
    for (const token of [TOKEN, WRONG_TOKEN]) assert.ok(!log.includes(token), `${token} in the log`);
  });
});
