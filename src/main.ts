/**
 * The composition root: config → logger, directory, store map, registry → listeners; signals.
 * Nothing else creates long-lived objects. Used by the CLI's `serve` and by tests.
 */
import type { Directory } from './auth/directory.js';
import { MailfrontError } from './errors.js';
import { LdapDirectory } from './auth/ldap.js';
import { loadStoreMap } from './config/load.js';
import type { Config } from './config/schema.js';
import { createLogger } from './log.js';
import type { Logger } from './log.js';
import { imapAdapter } from './protocol/imap/index.js';
import { pop3Adapter } from './protocol/pop3/index.js';
import type { ProtocolAdapter } from './protocol/types.js';
import { SessionRegistry } from './proxy/registry.js';
import type { StoreMap } from './routing/storemap.js';
import { Listener } from './server/listeners.js';
import type { DestinationStream } from 'pino';

const ADAPTERS: Partial<Record<Config['listeners'][number]['protocol'], ProtocolAdapter>> = { imap: imapAdapter, pop3: pop3Adapter };

export interface StartOptions {
  /** Where log lines go (stdout by default). */
  readonly logDestination?: DestinationStream;
  /** A directory to use instead of LDAP (tests that inject failures). */
  readonly directory?: Directory;
}

/** A running mailfront process. */
export class Mailfront {
  readonly registry = new SessionRegistry();
  readonly listeners: Listener[] = [];
  private storeMap: StoreMap;
  private stopping = false;

  private constructor(
    private config: Config,
    readonly log: Logger,
    private readonly directory: Directory,
  ) {
    this.storeMap = loadStoreMap(config.storeMapFile, 1, config.backend);
  }

  /** Loads the store map, binds every listener and starts serving. */
  static async start(config: Config, options: StartOptions = {}): Promise<Mailfront> {
    const log = createLogger(config.logLevel, options.logDestination);
    const directory = options.directory ?? new LdapDirectory(config.directory, log.child({ component: 'directory' }));
    const mailfront = new Mailfront(config, log, directory);
    log.info({ event: 'storemap.loaded', version: 1, stores: mailfront.storeMap.stores.size, file: config.storeMapFile }, 'store map loaded');
    try {
      for (const listenerConfig of config.listeners) {
        const adapter = ADAPTERS[listenerConfig.protocol];
        if (adapter === undefined) throw new MailfrontError('PROTOCOL_UNAVAILABLE', 'config', `listener "${listenerConfig.name}": protocol ${listenerConfig.protocol} is not built in`);
        const listener = new Listener(listenerConfig, adapter, {
          config: () => mailfront.config,
          storeMap: () => mailfront.storeMap,
          directory,
          registry: mailfront.registry,
          log,
        }, log);
        mailfront.listeners.push(listener);
        await listener.listen();
      }
    } catch (error) {
      await mailfront.stop(0);
      throw error;
    }
    return mailfront;
  }

  /** The store map in force. */
  currentStoreMap(): StoreMap {
    return this.storeMap;
  }

  /** Re-reads the store map file; on error the last good map stays in force. Returns the version in force. */
  reloadStoreMap(): number {
    const version = this.storeMap.version + 1;
    try {
      this.storeMap = loadStoreMap(this.config.storeMapFile, version, this.config.backend);
      this.log.info({ event: 'storemap.loaded', version, stores: this.storeMap.stores.size }, 'store map reloaded');
    } catch (error) {
      this.log.error({ event: 'storemap.rejected', err: error instanceof Error ? error.message : String(error), versionInForce: this.storeMap.version }, 'store map update rejected; the last good map stays in force');
    }
    return this.storeMap.version;
  }

  /**
   * Stops accepting, says BYE to sessions before login, and gives spliced sessions up to
   * `drainMs` to end on their own before closing them.
   */
  async stop(drainMs = 10_000): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info({ event: 'server.stopping', sessions: this.registry.size, drainMs }, 'stopping');
    await Promise.all(this.listeners.map((l) => l.stopAccepting()));
    const sessions = () => this.listeners.flatMap((l) => [...l.sessions]);
    for (const session of sessions()) session.shutdownIfNotSpliced();
    const deadline = Date.now() + drainMs;
    while (this.registry.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    for (const session of sessions()) session.shutdown();
    while (sessions().length > 0 && Date.now() < deadline + 2_000) await new Promise((r) => setTimeout(r, 20));
    await this.directory.close();
    this.log.info({ event: 'server.stopped' }, 'stopped');
  }
}
