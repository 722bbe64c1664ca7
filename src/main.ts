/**
 * The composition root: config → logger, directory, store-map holder and source, session
 * registry, health monitor, admin API → listeners; failover drains and shutdown. Nothing else
 * creates long-lived objects. Used by the CLI's `serve` and by tests.
 */
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { DestinationStream } from 'pino';
import type { Directory } from './auth/directory.js';
import { LdapDirectory } from './auth/ldap.js';
import { SlotHealthMonitor } from './backend/health.js';
import { probeSlot } from './backend/connect.js';
import type { Config } from './config/schema.js';
import { MailfrontError } from './errors.js';
import { createLogger } from './log.js';
import type { Logger } from './log.js';
import { imapAdapter } from './protocol/imap/index.js';
import { managesieveAdapter } from './protocol/managesieve/index.js';
import { pop3Adapter } from './protocol/pop3/index.js';
import type { ProtocolAdapter } from './protocol/types.js';
import { SessionRegistry } from './proxy/registry.js';
import { StoreMapHolder } from './routing/holder.js';
import type { MasterChange, ReloadResult } from './routing/holder.js';
import { createStoreMapSource } from './routing/sources.js';
import type { Slot, StoreMap } from './routing/storemap.js';
import { createAdminHandler } from './server/admin.js';
import { Listener } from './server/listeners.js';

const ADAPTERS: Record<Config['listeners'][number]['protocol'], ProtocolAdapter> = { imap: imapAdapter, pop3: pop3Adapter, managesieve: managesieveAdapter };

export interface StartOptions {
  /** Where log lines go (stdout by default). */
  readonly logDestination?: DestinationStream;
  /** A directory to use instead of LDAP (tests that inject failures). */
  readonly directory?: Directory;
  /** An HTTP listener for the admin API (host and port; port 0 picks a free one). */
  readonly http?: { readonly host: string; readonly port: number };
}

/** A running mailfront process. */
export class Mailfront {
  readonly registry = new SessionRegistry();
  readonly listeners: Listener[] = [];
  readonly holder: StoreMapHolder;
  readonly health: SlotHealthMonitor;
  private readonly drainTimers = new Set<NodeJS.Timeout>();
  private stopWatching: () => void = () => undefined;
  private httpServer: Server | undefined;
  private stopping = false;

  private constructor(
    private config: Config,
    readonly log: Logger,
    readonly directory: Directory,
  ) {
    this.holder = new StoreMapHolder(createStoreMapSource(config.storeMap), () => this.config, log, (changes) => this.drain(changes));
    this.health = new SlotHealthMonitor(() => (this.holder.loaded ? this.holder.current : null), (slot, signal) => this.probe(slot, signal), config.health.intervalMs, config.health.timeoutMs, log);
  }

  /** Loads the store map, binds every listener and starts serving. */
  static async start(config: Config, options: StartOptions = {}): Promise<Mailfront> {
    const log = createLogger(config.logLevel, options.logDestination);
    const directory = options.directory ?? new LdapDirectory(config.directory, log.child({ component: 'directory' }));
    const mailfront = new Mailfront(config, log, directory);
    try {
      const first = await mailfront.holder.reload('start');
      if (!first.ok) throw new MailfrontError('STOREMAP_UNUSABLE', 'config', `cannot start without a store map: ${first.error ?? 'unknown error'}`);
      mailfront.stopWatching = mailfront.holder.source.watch(() => void mailfront.holder.reload('change'));
      for (const listenerConfig of config.listeners) {
        const adapter = ADAPTERS[listenerConfig.protocol];
        const listener = new Listener(listenerConfig, adapter, {
          config: () => mailfront.config,
          storeMap: () => mailfront.holder.current,
          directory,
          registry: mailfront.registry,
          log,
        }, log);
        mailfront.listeners.push(listener);
        await listener.listen();
      }
      const http = options.http ?? config.http;
      if (http) await mailfront.listenHttp(http.host, http.port);
      mailfront.health.start();
    } catch (error) {
      await mailfront.stop(0);
      throw error;
    }
    return mailfront;
  }

  /** The store map in force. */
  currentStoreMap(): StoreMap {
    return this.holder.current;
  }

  /** Re-reads the store map (SIGHUP, admin API); a broken one leaves the last good map in force. */
  reloadStoreMap(trigger = 'signal'): Promise<ReloadResult> {
    return this.holder.reload(trigger);
  }

  /** The HTTP address of the admin API, when it listens. */
  httpAddress(): { host: string; port: number } | undefined {
    const a = this.httpServer?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : undefined;
  }

  private async listenHttp(host: string, port: number): Promise<void> {
    const admin = createAdminHandler({
      token: () => this.config.admin.token,
      holder: this.holder,
      registry: this.registry,
      health: this.health,
      directory: this.directory,
      usernames: () => this.config.usernames,
      log: this.log,
      reload: () => this.reloadStoreMap('api'),
    });
    const server = createServer((req, res) => {
      admin(req, res).then(
        (handled) => {
          if (!handled) {
            res.writeHead(404, { 'content-type': 'text/plain' });
            res.end('not found\n');
          }
        },
        (error: unknown) => {
          this.log.error({ event: 'http.error', err: error instanceof Error ? error.message : String(error) }, 'admin request failed');
          if (!res.headersSent) res.writeHead(500);
          res.end();
        },
      );
    });
    this.httpServer = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.log.info({ event: 'http.bound', address: `${host}:${this.httpAddress()?.port}` }, 'admin API listening');
  }

  /** Probes a slot with the protocol it serves (IMAP when it has an IMAP port). */
  private probe(slot: Slot, signal: AbortSignal): Promise<void> {
    const store = this.holder.current.stores.get(slot.store);
    if (store === undefined) return Promise.reject(new Error('store left the map'));
    const protocol = slot.imapPort !== undefined || slot.imapsPort !== undefined ? 'imap' : slot.pop3Port !== undefined || slot.pop3sPort !== undefined ? 'pop3' : 'managesieve';
    const adapter = ADAPTERS[protocol];
    const { probeUser, probePassword } = this.config.health;
    const login =
      adapter && probeUser !== undefined && probePassword !== undefined
        ? adapter.createBackendLogin({ mode: 'replay', user: probeUser, password: probePassword, starttls: store.backend.tls === 'starttls' })
        : undefined;
    return probeSlot(slot, protocol, store.backend, signal, login);
  }

  /**
   * Closes every session spliced to a demoted master, each at a random moment within the
   * spread window, so that thousands of clients do not reconnect in the same millisecond.
   */
  private drain(changes: readonly MasterChange[]): void {
    const spreadMs = this.config.failover.drainSpreadMs;
    for (const change of changes) {
      const sessions = this.registry.onSlot(change.from).filter((s) => s.store === change.store);
      this.log.warn({ event: 'failover.drain', store: change.store, from: change.from, to: change.to, sessions: sessions.length, spreadMs }, 'master changed; draining sessions on the old master');
      for (const session of sessions) {
        const timer = setTimeout(() => {
          this.drainTimers.delete(timer);
          session.close('drained');
        }, Math.floor(Math.random() * spreadMs));
        this.drainTimers.add(timer);
      }
    }
  }

  /**
   * Stops accepting, says BYE to sessions before login, and gives spliced sessions up to
   * `drainMs` to end on their own before closing them.
   */
  async stop(drainMs = 10_000): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info({ event: 'server.stopping', sessions: this.registry.size, drainMs }, 'stopping');
    this.stopWatching();
    this.health.stop();
    await Promise.all(this.listeners.map((l) => l.stopAccepting()));
    const sessions = () => this.listeners.flatMap((l) => [...l.sessions]);
    for (const session of sessions()) session.shutdownIfNotSpliced();
    const deadline = Date.now() + drainMs;
    while (this.registry.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    for (const session of sessions()) session.shutdown();
    while (sessions().length > 0 && Date.now() < deadline + 2_000) await new Promise((r) => setTimeout(r, 20));
    for (const timer of this.drainTimers) clearTimeout(timer);
    const closed = new Promise<void>((resolve) => (this.httpServer ? this.httpServer.close(() => resolve()) : resolve()));
    this.httpServer?.closeAllConnections();
    await closed;
    await this.holder.source.close();
    await this.directory.close();
    this.log.info({ event: 'server.stopped' }, 'stopped');
  }
}
