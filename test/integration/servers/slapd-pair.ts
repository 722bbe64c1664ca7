// Two private OpenLDAP slapd that replicate (syncrepl, with Debian's slapd syncprov overlay
// module), on free loopback ports: a provider and a read-only consumer (updateref to the
// provider), or two providers in mirror mode (multiprovider, a serverID each). Each replication
// link goes through a relay in the test process that the test can cut (every connection closed,
// new ones refused) and restore, at full speed or slowed down.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { freePort } from './ports.js';
import { restartable, run, spawnDaemon, waitForPort, type Restartable } from './process.js';
import { LDAP_BASE_DN, LDAP_PEOPLE_DN, LDAP_ROOT_DN, LDAP_SERVICE_DN, LDAP_STORES_DN, MAILFRONT_SCHEMA, sshaHash } from './slapd.js';
import { tmpDir, type TmpDir } from './tmp.js';

export interface PairMember {
  /** ldap://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  readonly bindDn: string;
  readonly bindPassword: string;
  /** Applies LDIF with ldapmodify bound as the rootdn (a consumer refers writes to its provider: ldapmodify reports the referral). */
  modify(ldif: string): Promise<void>;
  /** Stops slapd, keeping its port and data. */
  stopOnly(): Promise<void>;
  startAgain(): Promise<void>;
  readLog(): Promise<string>;
}

/** A replication link (the syncrepl connection of one server to the other), through a relay. */
export interface ReplicationLink {
  /** Closes every connection of the link and refuses new ones until restore(). */
  cut(): void;
  /** Lets connections through again, forwarding at most `bytesPerSecond` each way when given. */
  restore(options?: { readonly bytesPerSecond?: number }): void;
}

export interface SlapdPair {
  readonly mode: 'consumer' | 'mirror';
  /** [provider, consumer], or the two providers of a mirror. */
  readonly servers: readonly [PairMember, PairMember];
  /** consumer mode: the consumer's link to the provider; mirror mode: each server's link to the other ([0]: server 1 pulling from 2, [1]: server 2 pulling from 1). */
  readonly links: readonly ReplicationLink[];
  /** The last `lines` lines of each server's log (slapd's `sync` level: the replication sessions, what each change did), for a failure's message. */
  logTails(lines?: number): Promise<string>;
  /** Stops both servers and the relays and removes the directories. Idempotent. */
  stop(): Promise<void>;
}

export interface SlapdPairOptions {
  readonly mode: 'consumer' | 'mirror';
  /** LDIF of entries to add under the base (store and slot entries, say), given to both servers before they start (the same entryCSN on both). */
  readonly entries?: string;
  /** `access` directives placed before the default ones (see SlapdOptions.access). */
  readonly access?: readonly string[];
}

const SERVICE_PASSWORD = 'mailfront-service-secret';

function relay(targetPort: number): { readonly server: Server; readonly link: ReplicationLink; close(): void } {
  let open = true;
  let rate: number | undefined;
  const sockets = new Set<Socket>();
  const pipe = (from: Socket, to: Socket): void => {
    // Throttled: chunks queued and let through at most rate/10 bytes every 100 ms.
    const queue: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    const drain = (): void => {
      let budget = Math.max(1, Math.floor((rate ?? Infinity) / 10));
      while (queue.length > 0 && budget > 0) {
        const chunk = queue[0]!;
        const part = chunk.subarray(0, budget);
        to.write(part);
        budget -= part.length;
        if (part.length === chunk.length) queue.shift();
        else queue[0] = chunk.subarray(part.length);
      }
      timer = queue.length > 0 ? setTimeout(drain, 100) : undefined;
    };
    from.on('data', (chunk: Buffer) => {
      if (rate === undefined) return void to.write(chunk);
      queue.push(chunk);
      timer ??= setTimeout(drain, 100);
    });
    from.on('close', () => {
      clearTimeout(timer);
      to.destroy();
    });
  };
  const server = createServer((client) => {
    if (!open) return void client.destroy();
    const upstream = connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    pipe(client, upstream);
    pipe(upstream, client);
  });
  const link: ReplicationLink = {
    cut: () => {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore: (options = {}) => {
      rate = options.bytesPerSecond;
      open = true;
    },
  };
  return { server, link, close: () => (link.cut(), server.close()) };
}

function pairConf(dir: string, rootPassword: string, mode: 'consumer' | 'mirror', n: 1 | 2, ports: readonly [number, number], relayPort: number, access: readonly string[]): string {
  const lines = [
    '# mailfront test slapd, one of a replicating pair',
    'include /etc/ldap/schema/core.schema',
    'include /etc/ldap/schema/cosine.schema',
    'include /etc/ldap/schema/inetorgperson.schema',
    `include ${join(dir, 'mailfront.schema')}`,
    `pidfile ${join(dir, 'slapd.pid')}`,
    `argsfile ${join(dir, 'slapd.args')}`,
    'modulepath /usr/lib/ldap',
    'moduleload back_mdb',
    'moduleload syncprov',
    'sizelimit 1000',
  ];
  if (mode === 'mirror') lines.push(`serverID 1 ldap://127.0.0.1:${ports[0]}/`, `serverID 2 ldap://127.0.0.1:${ports[1]}/`);
  lines.push(
    '',
    'database mdb',
    'maxsize 268435456',
    `suffix "${LDAP_BASE_DN}"`,
    `rootdn "${LDAP_ROOT_DN}"`,
    `rootpw ${rootPassword}`,
    `directory ${join(dir, 'data')}`,
    'index objectClass eq',
    'index cn eq',
    'index entryCSN,entryUUID eq',
    `limits dn.exact="${LDAP_ROOT_DN}" size=unlimited time=unlimited`,
    // The service account reads the whole store map, as the README has it.
    `limits dn.exact="${LDAP_SERVICE_DN}" size=unlimited`,
    ...access,
    'access to attrs=userPassword by anonymous auth by * none',
    `access to * by dn.exact="${LDAP_SERVICE_DN}" read by anonymous auth by * none`,
  );
  const syncrepl = `syncrepl rid=00${n} provider=ldap://127.0.0.1:${relayPort}/ bindmethod=simple binddn="${LDAP_ROOT_DN}" credentials=${rootPassword} searchbase="${LDAP_BASE_DN}" type=refreshAndPersist retry="1 +" timeout=1`;
  if (mode === 'mirror') lines.push(syncrepl, 'multiprovider on', 'overlay syncprov', 'syncprov-checkpoint 1 1');
  else if (n === 1) lines.push('overlay syncprov', 'syncprov-checkpoint 1 1');
  else lines.push(syncrepl, `updateref ldap://127.0.0.1:${ports[0]}/`);
  return `${lines.join('\n')}\n`;
}

function baseLdif(): string {
  return [
    `dn: ${LDAP_BASE_DN}`,
    'objectClass: top',
    'objectClass: dcObject',
    'objectClass: organization',
    'o: mailfront tests',
    'dc: example',
    '',
    `dn: ${LDAP_PEOPLE_DN}`,
    'objectClass: organizationalUnit',
    'ou: people',
    '',
    `dn: ${LDAP_STORES_DN}`,
    'objectClass: organizationalUnit',
    'ou: stores',
    '',
    `dn: ${LDAP_SERVICE_DN}`,
    'objectClass: organizationalRole',
    'objectClass: simpleSecurityObject',
    'cn: mailfront',
    `userPassword: ${sshaHash(SERVICE_PASSWORD)}`,
    '',
  ].join('\n');
}

/** Starts a replicating pair; both servers hold the same entries (loaded with slapadd -w on the first, copied to the second) when it resolves. */
export async function startSlapdPair(options: SlapdPairOptions): Promise<SlapdPair> {
  const tmp: TmpDir = tmpDir('slapd-pair');
  const rootPassword = `root-${randomBytes(6).toString('hex')}`;
  const lives: Restartable[] = [];
  const relays: Array<ReturnType<typeof relay>> = [];
  try {
    const ports = [await freePort(), await freePort()] as const;
    // consumer mode: one relay, to the provider; mirror mode: one to each.
    const targets = options.mode === 'consumer' ? [ports[0]] : [ports[1], ports[0]];
    for (const target of targets) {
      const r = relay(target);
      const port = await freePort();
      await new Promise<void>((resolve, reject) => r.server.once('error', reject).listen(port, '127.0.0.1', resolve));
      relays.push(r);
    }
    const relayPort = (i: number): number => (relays[i]!.server.address() as { port: number }).port;
    const confs: string[] = [];
    for (const n of [1, 2] as const) {
      const dir = join(tmp.path, `s${n}`);
      await mkdir(join(dir, 'data'), { recursive: true, mode: 0o700 });
      await writeFile(join(dir, 'mailfront.schema'), MAILFRONT_SCHEMA);
      // Server 1 (mirror: pulls from 2) uses relay 0 in mirror mode; the consumer uses relay 0.
      const via = options.mode === 'consumer' ? relayPort(0) : relayPort(n - 1);
      const conf = join(dir, 'slapd.conf');
      await writeFile(conf, pairConf(dir, rootPassword, options.mode, n, ports, via, options.access ?? []));
      confs.push(conf);
    }
    await writeFile(join(tmp.path, 'data.ldif'), `${baseLdif()}\n${options.entries ?? ''}`, { mode: 0o600 });
    // -w: the entries get entryCSN and contextCSN; the copy gives the second server the same.
    await run('slapadd', ['-q', '-w', '-f', confs[0]!, '-l', join(tmp.path, 'data.ldif')]);
    await run('slapcat', ['-f', confs[0]!, '-l', join(tmp.path, 'full.ldif')]);
    await run('slapadd', ['-q', '-f', confs[1]!, '-l', join(tmp.path, 'full.ldif')]);
    const members: PairMember[] = [];
    for (const n of [1, 2] as const) {
      const dir = join(tmp.path, `s${n}`);
      const port = ports[n - 1]!;
      const url = `ldap://127.0.0.1:${port}`;
      // slapd's `sync` level says what the replication sessions do, for a failure's message (logTails()).
      const logFile = join(dir, 'slapd.log');
      const life = await restartable(`slapd${n}`, () => spawnDaemon({ name: `slapd${n}`, command: '/usr/sbin/slapd', args: ['-f', confs[n - 1]!, '-h', `${url}/`, '-d', 'sync'], logFile, cwd: dir }), (daemon) => waitForPort(port, { daemon }), async () => undefined);
      lives.push(life);
      members.push({
        url,
        port,
        bindDn: LDAP_SERVICE_DN,
        bindPassword: SERVICE_PASSWORD,
        modify: async (ldif) => {
          await run('ldapmodify', ['-x', '-H', url, '-D', LDAP_ROOT_DN, '-w', rootPassword], { input: ldif, env: { ...process.env, LDAPNOINIT: '1' } });
        },
        stopOnly: () => life.stopOnly(),
        startAgain: () => life.startAgain(),
        readLog: () => readFile(logFile, 'utf8').catch(() => ''),
      });
    }
    let stopping: Promise<void> | undefined;
    return {
      mode: options.mode,
      servers: [members[0]!, members[1]!],
      links: relays.map((r) => r.link),
      logTails: async (lines = 100) => {
        const tails = await Promise.all(members.map(async (m, i) => `server ${i + 1}'s log, last ${lines} lines:\n${(await m.readLog()).split('\n').slice(-lines).join('\n')}`));
        return tails.join('\n');
      },
      stop: () =>
        (stopping ??= (async () => {
          for (const r of relays) r.close();
          await Promise.all(lives.map((l) => l.stop()));
          await tmp.remove();
        })()),
    };
  } catch (error) {
    for (const r of relays) r.close();
    await Promise.all(lives.map((l) => l.stop().catch(() => undefined)));
    await tmp.remove().catch(() => undefined);
    throw error;
  }
}
