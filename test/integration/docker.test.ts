// docker/ cannot be run here (no container engine), so this checks that its pieces agree with each
// other and with mailfront: every mounted file exists, the mailfront config passes loadConfig, the
// LDAP data (run in a real slapd from the compose files) authenticates users and yields a valid
// store map whose slots are the compose's Dovecot services, HAProxy, Prometheus and Dovecot accept
// their configs, and the Grafana dashboard only names metrics that src/metrics.ts defines.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, posix, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, parseDocument, stringify } from 'yaml';
import { LdapDirectory } from '../../src/auth/ldap.js';
import { ConfigError, buildStoreMap, loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { readHttpConfig } from '../../src/server/http.js';
import { BACKEND_PROXY_PROTOCOLS, isCidr, readProxyConfig } from '../../src/server/proxy-protocol.js';
import type { ProxyListenerConfig } from '../../src/server/proxy-protocol.js';
import { freePort, run, spawnDaemon, tmpDir, waitForPort } from './servers/index.js';
import type { Daemon, TmpDir } from './servers/index.js';

/**
 * Config keys the compose's mailfront.yaml uses that src/config/schema.ts does not read yet (they
 * are validated here with their own readers meanwhile). Empty this list once the schema has them.
 */
const PENDING_SCHEMA_KEYS: readonly RegExp[] = [];

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'docker/compose.yaml'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find docker/compose.yaml above the test');
    dir = parent;
  }
  return dir;
}

const ROOT = repoRoot();
const DOCKER = join(ROOT, 'docker');
const MAILFRONT_YAML = join(DOCKER, 'mailfront/mailfront.yaml');

interface Service {
  readonly image?: string;
  readonly build?: string | { readonly context: string; readonly dockerfile?: string };
  readonly command?: string[] | string;
  readonly volumes?: string[];
  readonly networks?: Record<string, { ipv4_address?: string } | null>;
  readonly depends_on?: string[] | Record<string, unknown>;
  readonly ports?: Array<string | Record<string, unknown>>;
}

interface Compose {
  readonly services: Record<string, Service>;
  readonly volumes?: Record<string, unknown>;
  readonly networks?: Record<string, unknown>;
}

const compose = parse(readFileSync(join(DOCKER, 'compose.yaml'), 'utf8'), { merge: true }) as Compose;

/** A mount of a service: a host path (bind mount, absolute) or a named volume, at a container path. */
interface Mount {
  readonly source: string;
  readonly target: string;
  readonly kind: 'bind' | 'volume';
}

function mountsOf(name: string): Mount[] {
  return (compose.services[name]?.volumes ?? []).map((spec) => {
    const [source = '', target = ''] = spec.split(':');
    const bind = source.startsWith('.') || source.startsWith('/');
    return { source: bind ? resolve(DOCKER, source) : source, target, kind: bind ? 'bind' : 'volume' };
  });
}

/** Where a container path of `service` is on this machine (bind mounts), or which volume holds it. */
function hostPath(service: string, containerPath: string): { kind: 'bind'; path: string } | { kind: 'volume'; volume: string; rest: string } | undefined {
  const mounts = mountsOf(service).filter((m) => containerPath === m.target || containerPath.startsWith(`${m.target}/`));
  const mount = mounts.sort((a, b) => b.target.length - a.target.length)[0];
  if (mount === undefined) return undefined;
  const rest = posix.relative(mount.target, containerPath);
  return mount.kind === 'bind' ? { kind: 'bind', path: rest === '' ? mount.source : join(mount.source, rest) } : { kind: 'volume', volume: mount.source, rest };
}

function ipOf(service: string): string {
  const address = Object.values(compose.services[service]?.networks ?? {})[0]?.ipv4_address;
  assert.ok(address, `service ${service} has a fixed address`);
  return address;
}

function buildContext(service: Service): { context: string; dockerfile: string } | undefined {
  if (service.build === undefined) return undefined;
  const build = typeof service.build === 'string' ? { context: service.build } : service.build;
  const context = resolve(DOCKER, build.context);
  return { context, dockerfile: resolve(context, build.dockerfile ?? 'Dockerfile') };
}

const mailfrontServices = Object.entries(compose.services)
  .filter(([, s]) => buildContext(s)?.dockerfile === join(DOCKER, 'Dockerfile'))
  .map(([name]) => name);
const slotServices = Object.entries(compose.services)
  .filter(([, s]) => buildContext(s)?.context === join(DOCKER, 'dovecot'))
  .map(([name]) => name);

/** The raw mailfront.yaml document. */
const mailfrontDoc = parse(readFileSync(MAILFRONT_YAML, 'utf8')) as Record<string, unknown> & { listeners: Array<Record<string, unknown>>; backend: Record<string, unknown> };

/**
 * Loads mailfront.yaml with loadConfig. Issues at PENDING_SCHEMA_KEYS are set aside (and the
 * config is loaded again without those keys) so that everything else is still checked strictly.
 */
function loadMailfrontConfig(): { config: Config; pending: string[] } {
  try {
    return { config: loadConfig(MAILFRONT_YAML), pending: [] };
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    const pending = error.issues.filter((i) => PENDING_SCHEMA_KEYS.some((k) => k.test(i.path)) && i.found.includes('unknown key'));
    const other = error.issues.filter((i) => !pending.includes(i));
    assert.deepEqual(other.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`), [], 'mailfront.yaml passes loadConfig');
    const doc = parseDocument(readFileSync(MAILFRONT_YAML, 'utf8'));
    for (const issue of pending) {
      const keyPath = issue.path.split(/\.|\[(\d+)\]/).filter((p) => p !== undefined && p !== '').map((p) => (/^\d+$/.test(p) ? Number(p) : p));
      doc.deleteIn(keyPath);
    }
    // Next to the original, so that its relative file names resolve the same way.
    const stripped = join(dirname(MAILFRONT_YAML), `.pending-check-${process.pid}.yaml`);
    writeFileSync(stripped, doc.toString());
    try {
      return { config: loadConfig(stripped), pending: pending.map((i) => i.path) };
    } finally {
      rmSync(stripped, { force: true });
    }
  }
}

describe('docker/: the compose picture is consistent', () => {
  let config: Config;
  let pending: string[];
  let httpConfig: ReturnType<typeof readHttpConfig>;
  before(() => {
    ({ config, pending } = loadMailfrontConfig());
    httpConfig = readHttpConfig(mailfrontDoc['http'], 'http', new IssueList());
  });

  it('loads mailfront.yaml with loadConfig (listing keys the schema does not read yet)', (t) => {
    if (pending.length > 0) t.diagnostic(`keys the config schema does not read yet (PENDING_SCHEMA_KEYS): ${pending.join(', ')}`);
    assert.ok(config.listeners.length > 0);
    // The pending sections, checked with the readers that will read them.
    const issues = new IssueList();
    mailfrontDoc.listeners.forEach((l, i) => readProxyConfig(l['proxy_protocol'], `listeners[${i}].proxy_protocol`, issues));
    assert.deepEqual(issues.issues, []);
    assert.ok((BACKEND_PROXY_PROTOCOLS as readonly unknown[]).includes(mailfrontDoc.backend['proxy_protocol'] ?? 'none'));
    assert.ok(httpConfig, 'mailfront.yaml has an http section (Prometheus scrapes it)');
    assert.equal(httpConfig.host, '0.0.0.0', 'the http listener is reachable from the Prometheus container');
    // /metrics needs no credentials and tells an unknown user from a wrong password (by the
    // failure reasons it counts): it is for the compose network only, never published on the host.
    for (const name of mailfrontServices) assert.deepEqual(compose.services[name]?.ports ?? [], [], `${name} publishes no port`);
  });

  it('has every bind-mounted file and build context, and declares every named volume', () => {
    for (const [name, service] of Object.entries(compose.services)) {
      for (const mount of mountsOf(name)) {
        if (mount.kind === 'bind') assert.ok(existsSync(mount.source), `${name}: ${relative(ROOT, mount.source)} exists`);
        else assert.ok(compose.volumes && mount.source in compose.volumes, `${name}: volume ${mount.source} is declared`);
      }
      const build = buildContext(service);
      if (build) {
        assert.ok(existsSync(build.context), `${name}: build context ${relative(ROOT, build.context)} exists`);
        assert.ok(existsSync(build.dockerfile), `${name}: ${relative(ROOT, build.dockerfile)} exists`);
      }
      assert.ok(service.image !== undefined || build !== undefined, `${name} has an image or a build`);
      const deps = Array.isArray(service.depends_on) ? service.depends_on : Object.keys(service.depends_on ?? {});
      for (const dep of deps) assert.ok(dep in compose.services, `${name} depends on a service that exists (${dep})`);
    }
  });

  it('runs two mailfront instances, each with the config mounted where its command reads it', () => {
    assert.equal(mailfrontServices.length, 2);
    for (const name of mailfrontServices) {
      const command = compose.services[name]?.command;
      assert.ok(Array.isArray(command));
      const configPath = command[command.indexOf('-c') + 1] ?? '';
      const found = hostPath(name, configPath);
      assert.deepEqual(found, { kind: 'bind', path: MAILFRONT_YAML }, `${name}: ${configPath} is docker/mailfront/mailfront.yaml`);
    }
  });

  it('resolves every file the mailfront config names: in the mounted folder, or certificates the certs service writes', () => {
    const files: string[] = [];
    for (const l of config.listeners) if (l.certificate) files.push(l.certificate.cert, l.certificate.key);
    if (config.directory.caFile !== undefined) files.push(config.directory.caFile);
    if (config.backend.caFile !== undefined) files.push(config.backend.caFile);
    if (config.storeMap.kind === 'file') files.push(config.storeMap.file);
    const certsCommand = JSON.stringify(compose.services['certs']?.command ?? '');
    for (const name of mailfrontServices) {
      for (const file of files) {
        if (file.startsWith(`${dirname(MAILFRONT_YAML)}/`)) {
          assert.ok(existsSync(file), `${relative(ROOT, file)} exists`);
          continue;
        }
        // Absolute container paths: only TLS material in a volume the certs service fills may be missing here.
        const where = hostPath(name, file);
        assert.equal(where?.kind, 'volume', `${name}: ${file} is in a mounted volume`);
        if (where?.kind !== 'volume') continue;
        const certsMount = mountsOf('certs').find((m) => m.source === where.volume);
        assert.ok(certsMount, `the certs service writes volume ${where.volume}`);
        assert.ok(certsCommand.includes(posix.join(certsMount.target, where.rest)), `the certs service creates ${file}`);
      }
    }
  });

  it('trusts PROXY headers from HAProxy only, and the slots trust PROXY headers from the mailfront instances only', () => {
    const haproxyIp = ipOf('haproxy');
    const mailfrontIps = mailfrontServices.map(ipOf);
    for (const [i, l] of mailfrontDoc.listeners.entries()) {
      const proxy = readProxyConfig(l['proxy_protocol'], `listeners[${i}].proxy_protocol`, new IssueList()) as ProxyListenerConfig;
      assert.deepEqual(proxy.trustedNetworks, [`${haproxyIp}/32`], `listener ${String(l['name'])} trusts ${haproxyIp}`);
    }
    const dovecotConf = readFileSync(join(DOCKER, 'dovecot/dovecot.conf'), 'utf8');
    for (const key of ['haproxy_trusted_networks', 'login_trusted_networks']) {
      const value = new RegExp(`^${key} = (.*)$`, 'm').exec(dovecotConf)?.[1] ?? '';
      assert.deepEqual(value.split(/\s+/).sort(), mailfrontIps.map((ip) => `${ip}/32`).sort(), `dovecot ${key}`);
      assert.ok(value.split(/\s+/).every(isCidr));
    }
  });

  it('gives HAProxy every mailfront instance on every listener port, with PROXY v2 and readiness checks', async () => {
    const cfgFile = join(DOCKER, 'haproxy/haproxy.cfg');
    assert.deepEqual(hostPath('haproxy', '/usr/local/etc/haproxy/haproxy.cfg'), { kind: 'bind', path: cfgFile });
    const { stdout, stderr } = await run('/usr/sbin/haproxy', ['-c', '-f', cfgFile]);
    assert.match(stdout + stderr, /Configuration file is valid/);
    // On this machine the compose service names do not resolve; nothing else may be wrong.
    const warnings = (stdout + stderr).split('\n').filter((l) => /\[(WARNING|ALERT)\]/.test(l) && !/could not resolve address '(mailfront\d+)'/.test(l));
    assert.deepEqual(warnings, []);
    const cfg = readFileSync(cfgFile, 'utf8');
    assert.match(cfg, /^\s*default-server .*\bsend-proxy-v2\b/m);
    assert.match(cfg, new RegExp(`^\\s*default-server .*\\bcheck port ${httpConfig?.port}\\b`, 'm'));
    assert.match(cfg, /^\s*option httpchk GET \/readyz$/m);
    for (const l of config.listeners) {
      for (const name of mailfrontServices) assert.match(cfg, new RegExp(`^\\s*server ${name} ${name}:${l.port}$`, 'm'), `HAProxy sends ${l.name} to ${name}:${l.port}`);
    }
  });

  it('has Prometheus scrape every mailfront instance on its http port', async () => {
    const file = join(DOCKER, 'prometheus/prometheus.yml');
    assert.deepEqual(hostPath('prometheus', '/etc/prometheus/prometheus.yml'), { kind: 'bind', path: file });
    await run('promtool', ['check', 'config', file]);
    const prometheus = parse(readFileSync(file, 'utf8')) as { scrape_configs: Array<{ job_name: string; metrics_path?: string; static_configs: Array<{ targets: string[] }> }> };
    const job = prometheus.scrape_configs.find((j) => j.job_name === 'mailfront');
    assert.ok(job);
    assert.equal(job.metrics_path ?? '/metrics', '/metrics');
    assert.deepEqual(job.static_configs.flatMap((c) => c.targets).sort(), mailfrontServices.map((s) => `${s}:${httpConfig?.port}`).sort());
  });

  it('has a Grafana dashboard that names only metrics mailfront defines, in valid PromQL, on the provisioned data source', async (t) => {
    const dashboardFile = join(DOCKER, 'grafana/dashboards/mailfront.json');
    const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8')) as unknown;
    const exprs: string[] = [];
    const uids = new Set<string>();
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) return node.forEach(walk);
      if (node === null || typeof node !== 'object') return;
      for (const [key, value] of Object.entries(node)) {
        if (key === 'expr' && typeof value === 'string') exprs.push(value);
        else if (key === 'datasource' && value !== null && typeof value === 'object' && 'uid' in value) uids.add(String(value.uid));
        else walk(value);
      }
    };
    walk(dashboard);
    assert.ok(exprs.length >= 20, 'the dashboard has its panels');
    const datasources = parse(readFileSync(join(DOCKER, 'grafana/provisioning/datasources/prometheus.yaml'), 'utf8')) as { datasources: Array<{ uid: string; url: string }> };
    assert.deepEqual([...uids], datasources.datasources.map((d) => d.uid));
    assert.match(datasources.datasources[0]?.url ?? '', /^http:\/\/prometheus:9090$/);
    const provider = parse(readFileSync(join(DOCKER, 'grafana/provisioning/dashboards/mailfront.yaml'), 'utf8')) as { providers: Array<{ options: { path: string } }> };
    assert.deepEqual(hostPath('grafana', provider.providers[0]?.options.path ?? ''), { kind: 'bind', path: dirname(dashboardFile) });

    const known = new Set(new Metrics().metricNames());
    const used = new Set(exprs.flatMap((e) => e.match(/\b(mailfront|process|nodejs)_[a-z0-9_]+/g) ?? []));
    const unknown = [...used].filter((name) => !known.has(name) && !known.has(name.replace(/_(bucket|sum|count)$/, '')));
    assert.deepEqual(unknown, [], 'every metric in the dashboard exists in src/metrics.ts');
    const unusedMailfront = [...known].filter((n) => n.startsWith('mailfront_') && ![...used].some((u) => u === n || u.replace(/_(bucket|sum|count)$/, '') === n));
    if (unusedMailfront.length > 0) t.diagnostic(`mailfront metrics not on the dashboard: ${unusedMailfront.join(', ')}`);

    // promtool parses each expression as a recording rule (Grafana's variables given plain values).
    const dir = tmpDir('grafana-promql');
    try {
      const rules = exprs.map((e, i) => ({ record: `mailfront:dashboard_expr_${i}`, expr: e.replaceAll('$__rate_interval', '5m').replaceAll('$__range', '1h').replaceAll('$instance', '.*') }));
      const file = join(dir.path, 'rules.yml');
      await writeFile(file, stringify({ groups: [{ name: 'dashboard', rules }] }));
      await run('promtool', ['check', 'rules', file]);
    } finally {
      await dir.remove();
    }
  });

  it('builds a small non-root image that checks /healthz on the configured http port', () => {
    const dockerfile = readFileSync(join(DOCKER, 'Dockerfile'), 'utf8');
    const stages = dockerfile.split(/^FROM /m).slice(1);
    assert.ok(stages.length >= 2, 'a multi-stage build');
    for (const stage of stages) assert.match(stage, /^node:22-(alpine|slim)\b/);
    const runtime = stages[stages.length - 1] ?? '';
    assert.match(runtime, /^USER node$/m);
    assert.match(runtime, /--omit=dev/);
    assert.match(runtime, /^HEALTHCHECK /m);
    assert.match(runtime, new RegExp(`^ENV MAILFRONT_HEALTH_URL=http://127\\.0\\.0\\.1:${httpConfig?.port}/healthz$`, 'm'));
    const exposed = (/^EXPOSE (.*)$/m.exec(runtime)?.[1] ?? '').split(/\s+/).map(Number);
    for (const l of config.listeners) assert.ok(exposed.includes(l.port), `EXPOSE ${l.port}`);
    assert.ok(exposed.includes(httpConfig?.port ?? -1));
    assert.ok(existsSync(join(DOCKER, 'Dockerfile.dockerignore')));
  });

  it('runs mailfront under tini, not as PID 1: a stop signal before node handles it is not lost', () => {
    const runtime = readFileSync(join(DOCKER, 'Dockerfile'), 'utf8').split(/^FROM /m).at(-1) ?? '';
    // node:22-alpine: apk's tini is /sbin/tini.
    assert.match(runtime, /^RUN apk add --no-cache tini$/m);
    const entrypoint = JSON.parse(/^ENTRYPOINT (.*)$/m.exec(runtime)?.[1] ?? '[]') as string[];
    assert.deepEqual(entrypoint.slice(0, 3), ['/sbin/tini', '--', 'node']);
    // Not a second init above the image's (tini would warn it is not PID 1).
    for (const name of mailfrontServices) assert.equal((compose.services[name] as { init?: unknown }).init, undefined, `${name}: init`);
  });

  it('has a Dovecot config that doveconf accepts and a master user matching mailfront\'s backend account', async () => {
    const dir = tmpDir('docker-dovecot');
    try {
      // The container paths of the slot's mounts, pointed at this machine's copies.
      let conf = readFileSync(join(DOCKER, 'dovecot/dovecot.conf'), 'utf8');
      for (const target of ['/etc/dovecot/slot.conf', '/etc/dovecot/users', '/etc/dovecot/master-users']) {
        const where = hostPath(slotServices[0] ?? '', target);
        assert.equal(where?.kind, 'bind', `${target} is mounted`);
        if (where?.kind === 'bind') conf = conf.replaceAll(target, where.path);
      }
      const file = join(dir.path, 'dovecot.conf');
      await writeFile(file, conf);
      const { stdout } = await run('doveconf', ['-n', '-c', file]);
      assert.match(stdout, /haproxy = yes/);
      const [user, secret] = readFileSync(join(DOCKER, 'dovecot/master-users'), 'utf8').trim().split(':');
      assert.equal(user, config.backend.proxyUser);
      assert.equal(secret, `{PLAIN}${config.backend.proxyPassword}`);
      assert.equal(config.backend.loginMode, 'master-user');
      for (const slot of slotServices) {
        const where = hostPath(slot, '/etc/dovecot/slot.conf');
        assert.ok(where?.kind === 'bind' && readFileSync(where.path, 'utf8').includes(`instance_name = ${slot}\n`), `${slot} mounts its own slot.conf`);
      }
    } finally {
      await dir.remove();
    }
  });

  describe('the directory, run in a real slapd from the compose files', () => {
    let dir: TmpDir;
    let slapd: Daemon | undefined;
    let url = '';
    let storeMap: StoreMap;

    before(async () => {
      dir = tmpDir('docker-slapd');
      const dataDir = join(dir.path, 'data');
      await mkdir(dataDir, { mode: 0o700 });
      let conf = readFileSync(join(DOCKER, 'openldap/slapd.conf'), 'utf8');
      // Bind mounts point at this machine's files; the data volume and /run/slapd at a temp folder.
      conf = conf.replace(/^(include|directory|pidfile|argsfile) (\S+)$/gm, (line: string, key: string, path: string) => {
        const where = hostPath('openldap', path);
        if (where?.kind === 'bind') return `${key} ${where.path}`;
        if (where?.kind === 'volume') return `${key} ${dataDir}`;
        if (key === 'pidfile' || key === 'argsfile') return `${key} ${join(dir.path, posix.basename(path))}`;
        assert.ok(existsSync(path), `slapd.conf: ${path} exists in the image and here`);
        return line;
      });
      const confFile = join(dir.path, 'slapd.conf');
      await writeFile(confFile, conf);
      const ldif = hostPath('openldap', '/etc/mailfront-ldap/data.ldif');
      assert.equal(ldif?.kind, 'bind');
      if (ldif?.kind !== 'bind') return;
      await run('slapadd', ['-q', '-f', confFile, '-l', ldif.path]);
      const port = await freePort();
      url = `ldap://127.0.0.1:${port}`;
      slapd = spawnDaemon({ name: 'slapd (docker data)', command: 'slapd', args: ['-f', confFile, '-h', `${url}/`, '-d', '0'], logFile: join(dir.path, 'slapd.log') });
      await waitForPort(port, { daemon: slapd });
    });

    after(async () => {
      await slapd?.stop();
      await dir?.remove();
    });

    it('holds a store map that mailfront builds, with every slot a Dovecot service on a PROXY listener', async () => {
      assert.equal(config.storeMap.kind, 'ldap');
      if (config.storeMap.kind !== 'ldap') return;
      assert.deepEqual(config.storeMap.urls, config.directory.urls);
      const source = new LdapStoreMapSource({ ...config.storeMap, urls: [url] });
      try {
        storeMap = buildStoreMap(await source.load(), 'docker/openldap/data.ldif', 1, config);
      } finally {
        await source.close();
      }
      assert.ok(storeMap.stores.size >= 2, 'two stores');
      const dovecotConf = readFileSync(join(DOCKER, 'dovecot/dovecot.conf'), 'utf8');
      const haproxyPorts = [...dovecotConf.matchAll(/inet_listener \w+ \{\s*port = (\d+)\s*haproxy = yes/g)].map((m) => Number(m[1]));
      for (const store of storeMap.stores.values()) {
        assert.ok(store.slots.size >= 2, `${store.name} has a master and a replica`);
        for (const slot of store.slots.values()) {
          assert.ok(slotServices.includes(slot.host), `slot ${slot.name}: host ${slot.host} is a Dovecot service`);
          for (const port of [slot.imapPort, slot.pop3Port]) assert.ok(port !== undefined && haproxyPorts.includes(port), `slot ${slot.name}: port ${port} is a Dovecot haproxy listener`);
        }
      }
      assert.deepEqual([...storeMap.stores.values()].flatMap((s) => [...s.slots.keys()]).sort(), [...slotServices].sort(), 'every Dovecot service is a slot');
      assert.equal(mailfrontDoc.backend['proxy_protocol'], 'v2');
    });

    it('authenticates the demo users with mailfront\'s directory settings and routes them to a store of the map', async () => {
      const directory = new LdapDirectory({ ...config.directory, urls: [url] }, createLogger('silent'));
      try {
        for (const user of ['alice', 'carol']) {
          const found = await directory.authenticate(user, 'demo', new AbortController().signal);
          assert.ok(found.store !== null && storeMap.stores.has(found.store), `${user} is on a store of the map (${String(found.store)})`);
        }
        await assert.rejects(directory.authenticate('alice', 'wrong', new AbortController().signal), (e: Error & { code?: string }) => e.code === 'WRONG_PASSWORD');
      } finally {
        await directory.close();
      }
    });
  });
});
