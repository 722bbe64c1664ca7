/**
 * The store map in force and how it changes: loads documents from a source, builds a new
 * version for each change (or keeps the last good one and says why), reports every store
 * whose current master changed, and writes failovers to the source of truth. Knows nothing
 * of sessions: whoever listens to the changes drains them.
 */
import { ConfigError, buildStoreMap } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { MailfrontError, asMailfrontError } from '../errors.js';
import { flushLog } from '../log.js';
import type { Logger } from '../log.js';
import { sourceRefusedWrite, sourceUnreadable } from './sources.js';
import type { RecordedWrite, SourceWrite, StoreMapSource } from './sources.js';
import type { ProtocolName } from '../protocol/types.js';
import { StoreMap, maintenanceProblem, protocolsWithMovedPorts } from './storemap.js';
import type { Store } from './storemap.js';

/** A store whose current master changed (`to` is null when the store left the map; `to` is `from` when the master slot was pointed at another server). */
export interface MasterChange {
  readonly store: string;
  readonly from: string;
  readonly to: string | null;
  /** The protocols whose sessions moved, when the master slot kept its name and host and only some of its ports changed; absent: all. */
  readonly protocols?: readonly ProtocolName[];
}

/** A store that went into maintenance (`reason`: what its clients are told) or came out of it (`reason` null). */
export interface MaintenanceChange {
  readonly store: string;
  readonly reason: string | null;
}

/**
 * The stores whose maintenance was turned on or off between two maps. A store new in the map
 * has no sessions to drain, and one that left it is drained as a master change; a reason
 * changed while on is no change (what logins are told changes, nothing is drained).
 */
export function maintenanceChanges(before: StoreMap, after: StoreMap): MaintenanceChange[] {
  const changes: MaintenanceChange[] = [];
  for (const [name, store] of after.stores) {
    const was = before.stores.get(name);
    if (was !== undefined && (was.maintenance === null) !== (store.maintenance === null)) changes.push({ store: name, reason: store.maintenance });
  }
  return changes;
}

/** What a reload did. */
export interface ReloadResult {
  readonly ok: boolean;
  /** The version in force afterwards. */
  readonly version: number;
  readonly changes: readonly MasterChange[];
  readonly error?: string;
}

/**
 * The source in force as read for a reload's check of a new config (StoreMapHolder.read()): its
 * document, or why it gave none. Handed to reload(), it is put in force as the reload's own read
 * would be, and the map built for the check with the config then in force is taken as built: a
 * SIGHUP read an LDAP store map whole twice (the check's read, then the reload's), and built the
 * map twice (at 5,000 stores each build blocked the event loop for a tenth of a second or so).
 */
export interface SourceRead {
  /** The document the source gave; throws what its load threw when it gave none. */
  document(): unknown;
  /** The map of the document with `config` (version 0; throws its ConfigError), kept for the reload while `config` is the one in force. */
  build(config: BuildConfig): StoreMap;
}

/** What building a store map takes of the config (buildStoreMap). */
type BuildConfig = Pick<Config, 'backend' | 'backendProfiles'> & { readonly file?: string };

/** A SourceRead as the holder made it. */
class CheckRead implements SourceRead {
  /** The map built for the check, and with which config object. */
  private built: { readonly config: BuildConfig; readonly map: StoreMap } | undefined;

  constructor(
    private readonly origin: string,
    private readonly outcome: { readonly document: unknown } | { readonly error: unknown },
  ) {}

  /** True when the source gave a document. */
  get ok(): boolean {
    return 'document' in this.outcome;
  }

  document(): unknown {
    if ('error' in this.outcome) throw this.outcome.error;
    return this.outcome.document;
  }

  build(config: BuildConfig): StoreMap {
    this.built = undefined;
    const map = buildStoreMap(this.document(), this.origin, 0, config);
    this.built = { config, map };
    return map;
  }

  /**
   * The map built for the check as version `version`, when it was built with `config` itself:
   * the same object, so the same backend settings, profiles and config file (which relative paths
   * resolve against). A reload refused keeps another config in force, and builds again with it.
   */
  builtWith(config: BuildConfig, version: number): StoreMap | undefined {
    return this.built?.config === config ? new StoreMap(version, this.built.map.stores) : undefined;
  }
}

/** The masters that differ between two store maps. */
export function masterChanges(before: StoreMap, after: StoreMap): MasterChange[] {
  const changes: MasterChange[] = [];
  for (const [name, store] of before.stores) {
    const next = after.stores.get(name);
    if (next === undefined) {
      changes.push({ store: name, from: store.currentMaster, to: null });
      continue;
    }
    const from = store.slots.get(store.currentMaster)!;
    const to = next.slots.get(next.currentMaster)!;
    if (from.name !== to.name || from.host !== to.host) {
      changes.push({ store: name, from: from.name, to: to.name });
      continue;
    }
    const moved = protocolsWithMovedPorts(from, to);
    if (moved.length > 0) changes.push({ store: name, from: from.name, to: to.name, protocols: moved });
  }
  return changes;
}

/** Who hears about store-map versions. */
export interface StoreMapObserver {
  /** Stores whose current master changed, with the new map (already in force). */
  changes(changes: readonly MasterChange[], map: StoreMap): void;
  /** Stores that went into maintenance or came out of it, with the new map (already in force; after changes()). */
  maintenance?(changes: readonly MaintenanceChange[], map: StoreMap): void;
  /** A new version is in force: one the source gave, or the map in force built again with a reloaded config. */
  installed?(map: StoreMap): void;
  /**
   * A load of the source succeeded; `map` is in force (a new version, or the one in force when
   * the source gave the same map). Not called for a rebuild: the source's last outcome stands.
   */
  loaded?(map: StoreMap): void;
  /** A load of the source failed (the source could not be read, or gave a document that makes no map); the map in force stays. */
  rejected?(error: string): void;
}

/**
 * How long after this instance wrote a change a reload that takes it back is looked at
 * (storemap.change_undone, storemap.change_superseded): a writer that read the map before the
 * change and saved after it (a hand edit; an instance without the store-map file's lock, in the
 * rv-crash review's repro within 100 ms) takes it back within seconds.
 */
const CHANGE_UNDONE_WINDOW_MS = 60_000;

/** A change this instance wrote to the source (see CHANGE_UNDONE_WINDOW_MS). */
interface WrittenChange {
  readonly store: string;
  readonly change: 'failover' | 'maintenance';
  /** The current master written, or whether maintenance was turned on. */
  readonly value: string | boolean;
  /** When (performance.now()), and by the wall clock (Date.now()), which the records of other writers bear. */
  readonly at: number;
  readonly wallAt: number;
  /** The id of its record beside a store-map file (see RecordedWrite), when the source keeps them. */
  readonly recordId: string | undefined;
}

/** Holds the store map in force. */
export class StoreMapHolder {
  private map: StoreMap | null = null;
  private versionCounter = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private lastResult: ReloadResult | null = null;
  /**
   * The document the map in force was built from, and whose it is. The backend settings of a
   * reloaded config reach logins through the map: when the source cannot give a usable document,
   * this one is built again with the config in force, so that they apply at once rather than
   * when the source can next be read and has changed.
   */
  private document: { readonly doc: unknown; readonly origin: string } | null = null;
  /** The changes this instance wrote lately, by `change:store`, until a reload takes one back or CHANGE_UNDONE_WINDOW_MS passes. */
  private readonly written = new Map<string, WrittenChange>();
  /**
   * The last read() while nothing has run in the queue after it: only the work right after it may
   * take it (see reload()). Anything between may have changed the map in force or the source (a
   * failover written, a reload of the watch's, the source replaced), and the read is then stale.
   */
  private lastRead: CheckRead | undefined;

  constructor(
    private sourceNow: StoreMapSource,
    private readonly config: () => Pick<Config, 'backend' | 'backendProfiles'>,
    private readonly log: Logger,
    private readonly observer: StoreMapObserver,
  ) {}

  /** Where store maps come from. */
  get source(): StoreMapSource {
    return this.sourceNow;
  }

  /**
   * Takes store maps from `next` from now on (a reload that changed `store_map`): reloads already
   * queued finish on the old source first. Returns the old source, for the caller to close. The
   * map in force stays until `next` gives a valid one.
   */
  replaceSource(next: StoreMapSource): Promise<StoreMapSource> {
    return this.inTurn(() => {
      const old = this.sourceNow;
      // What the old source knows of the map in force as it stands now, in turn: nothing of the
      // old one's is put in force after this.
      next.continueFrom?.(old);
      this.sourceNow = next;
      return old;
    });
  }

  /**
   * Runs `work` after everything queued before it; a failure reaches the caller and holds up
   * nothing after it. `work` is given the read() that ran just before it, if one did.
   */
  private inTurn<T>(work: (lastRead: CheckRead | undefined) => T | Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      const lastRead = this.lastRead;
      this.lastRead = undefined;
      return work(lastRead);
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** The store map in force; throws before the first successful load. */
  get current(): StoreMap {
    if (this.map === null) throw new MailfrontError('STOREMAP_NOT_LOADED', 'no-route', 'no store map has been loaded');
    return this.map;
  }

  /** True once a store map is in force. */
  get loaded(): boolean {
    return this.map !== null;
  }

  /** The outcome of the last reload, for status and metrics. */
  get last(): ReloadResult | null {
    return this.lastResult;
  }

  /**
   * Re-reads the source; one reload at a time, in order. A broken document, or a source that cannot
   * be read (which reads itself again: an LDAP source at its next poll, a file on a timer), leaves
   * the map in force.
   */
  reload(trigger: string, read?: SourceRead): Promise<ReloadResult> {
    return this.inTurn((lastRead) => this.reloadNow(trigger, read !== undefined && read === lastRead && lastRead.ok ? lastRead : undefined));
  }

  /**
   * Reads the source in force, in the queue, for a reload to check a new config against what it
   * gives now (SIGHUP). Given to reload() right after, with nothing queued between, the reload
   * puts that document in force rather than reading the source again (an LDAP store map read whole
   * once per SIGHUP), and the map built with the config in force by then (SourceRead.build()).
   * Otherwise the reload reads the source again: whatever came between (a failover written, a
   * change the watch saw) is in force after it. A document that was read is always put in force
   * by the reload (or by the work that came between, which reads the source again): the source
   * takes every load for one its map follows (an LDAP source's polls report only a map that
   * differs from the one last loaded). A check's read is not one of them until the reload takes
   * it (StoreMapSource.took()): the reload puts it in force after its other work, seconds later
   * with a directory server down, and a failover it read is reported by the watch meanwhile.
   */
  read(): Promise<SourceRead> {
    return this.inTurn(async () => {
      const source = this.sourceNow;
      let read: CheckRead;
      try {
        // No deliberate load: a server behind the map in force is refused here, and read again by the reload.
        read = new CheckRead(source.description, { document: await source.load('check') });
      } catch (error) {
        read = new CheckRead(source.description, { error });
      }
      this.lastRead = read;
      return read;
    });
  }

  /** Reloads from the source, or from `read`, the document read() just gave. */
  private async reloadNow(trigger: string, read?: CheckRead): Promise<ReloadResult> {
    let doc: unknown;
    try {
      doc = read !== undefined ? read.document() : await this.source.load(trigger);
      // The check's read, taken as this reload's: the source counts it as loaded from now on.
      if (read !== undefined) this.source.took?.(doc);
    } catch (caught) {
      return this.loadFailed(caught, trigger);
    }
    // After the load: a writer records its change before its rename, so the map read is in them.
    return this.put(doc, trigger, await this.recordedWrites(), read);
  }

  /** The changes the source's mailfront writers recorded, while a change this instance wrote may be taken back (see reportUndone). */
  private async recordedWrites(): Promise<readonly RecordedWrite[]> {
    if (this.written.size === 0 || this.source.recordedWrites === undefined) return [];
    return this.source.recordedWrites().catch(() => []);
  }

  /**
   * Puts the map of `doc`, a document the source gave, in force, unless it is the one in force (no
   * new version) or makes no map. `read`: the read() `doc` came from, whose map is taken as built
   * for the check when it was built with the config in force.
   */
  private put(doc: unknown, trigger: string, recorded: readonly RecordedWrite[], read?: CheckRead): ReloadResult {
    const version = this.versionCounter + 1;
    let next: StoreMap;
    try {
      const config = this.config();
      next = read?.builtWith(config, version) ?? buildStoreMap(doc, this.source.description, version, config);
    } catch (caught) {
      return this.loadFailed(caught, trigger);
    }
    this.document = { doc, origin: this.source.description };
    const before = this.map;
    if (before !== null && sameTopology(before, next)) {
      // No new version and no log line, but the load succeeded: a source fixed back to the map
      // in force (or read again after an outage) ends the rejection its last load reported.
      this.observer.loaded?.(before);
      this.lastResult = { ok: true, version: before.version, changes: [] };
      return this.lastResult;
    }
    this.lastResult = { ok: true, version, changes: this.install(next, trigger, this.source.description, 'loaded', recorded) };
    return this.lastResult;
  }

  /** A load of the source that gave no map (it could not be read, or its document makes none): said, and the map in force stays. */
  private loadFailed(caught: unknown, trigger: string): ReloadResult {
    const version = this.versionCounter + 1;
    const error = asMailfrontError(caught);
    // A source that could not be read gave no document to reject: it is down (its health says
    // so), and reads itself again until it can be read; what it holds then is put in force.
    const unreadable = sourceUnreadable(caught);
    const fields = { source: this.source.description, trigger, versionInForce: this.map?.version ?? 0, err: unreadable ?? error.message };
    if (unreadable !== undefined) this.log.warn({ event: 'storemap.read_failed', ...fields }, 'the store-map source could not be read; the map in force stays until it can be');
    else this.log.error({ event: 'storemap.rejected', ...fields }, 'store map update rejected; the last good map stays in force');
    this.observer.rejected?.(error.message);
    // The map in force stays, built anew with the config in force (a reload's backend settings).
    const rebuilt = this.rebuildInForce(version, trigger);
    this.lastResult = { ok: false, version: this.map?.version ?? 0, changes: rebuilt, error: error.message };
    return this.lastResult;
  }

  /**
   * Puts `next` in force and tells the observer; returns the master changes it brings. `how`:
   * loaded from the source, or the map in force rebuilt with the config in force. A rebuild is
   * no load of the source: that load was just rejected, and stays the source's last outcome.
   */
  private install(next: StoreMap, trigger: string, source: string, how: 'loaded' | 'rebuilt', recorded: readonly RecordedWrite[] = []): MasterChange[] {
    const before = this.map;
    this.versionCounter = next.version;
    this.map = next;
    const changes = before === null ? [] : masterChanges(before, next);
    const maintenance = before === null ? [] : maintenanceChanges(before, next);
    const fields = { source, trigger, version: next.version, stores: next.stores.size, failovers: changes, ...(maintenance.length > 0 ? { maintenance } : {}) };
    if (how === 'loaded') this.log.info({ event: 'storemap.loaded', ...fields }, 'store map loaded');
    else this.log.info({ event: 'storemap.rebuilt', ...fields }, 'store map in force built again with the config in force (its source gave no usable map)');
    if (before !== null && how === 'loaded') this.reportUndone(before, next, trigger, source, recorded);
    this.observer.installed?.(next);
    if (how === 'loaded') this.observer.loaded?.(next);
    if (changes.length > 0) this.observer.changes(changes, next);
    if (maintenance.length > 0) this.observer.maintenance?.(maintenance, next);
    return changes;
  }

  /**
   * Says which change this instance wrote lately the source's map `next` takes back from `before`.
   * At error (storemap.change_undone) when no mailfront writer recorded a change of the store to
   * what it is now since (`recorded`, the source's records): another writer saved a map read
   * before the change (a hand edit from an old copy, an instance writing without the file's lock:
   * an older mailfront during an upgrade), and the change the operator was told was written is
   * gone, the sessions it drained sent back; nothing else would say so, the reload is logged at
   * info as any other. At info (storemap.change_superseded) when the change was a later one,
   * deliberate: recorded by another writer (another instance, told to), or any, of a source
   * written one entry at a time (LDAP), where nothing saves a stale copy.
   */
  private reportUndone(before: StoreMap, next: StoreMap, trigger: string, source: string, recorded: readonly RecordedWrite[]): void {
    const now = performance.now();
    for (const [key, written] of this.written) {
      if (now - written.at > CHANGE_UNDONE_WINDOW_MS) {
        this.written.delete(key);
        continue;
      }
      const was = before.stores.get(written.store);
      const is = next.stores.get(written.store);
      if (was === undefined || is === undefined) continue;
      const valueOf = (store: Store): string | boolean => (written.change === 'failover' ? store.currentMaster : store.maintenance !== null);
      if (valueOf(was) !== written.value || valueOf(is) === written.value) continue;
      this.written.delete(key);
      const agoMs = Math.round(now - written.at);
      const what = written.change === 'failover' ? `the failover to "${String(written.value)}"` : `maintenance ${written.value === true ? 'on' : 'off'}`;
      const says = written.change === 'failover' ? `its current master is "${is.currentMaster}"` : `maintenance is ${is.maintenance !== null ? 'on' : 'off'}`;
      const fields = { store: written.store, change: written.change, written: written.value, now: valueOf(is), writtenMsAgo: agoMs, source, trigger, version: next.version };
      const ago = `${(agoMs / 1000).toFixed(1)} s ago`;
      if (this.source.saves === 'entry') {
        this.log.info({ event: 'storemap.change_superseded', ...fields, by: 'a later write' }, `store "${written.store}": ${what} this instance wrote ${ago} was changed since in ${source} (${says} now): a later write of its entry, another instance's or an operator's`);
        continue;
      }
      const by = laterWrite(recorded, written, valueOf(is));
      if (by !== undefined) {
        this.log.info(
          { event: 'storemap.change_superseded', ...fields, by: { pid: by.writer.pid, host: by.writer.host, at: by.at } },
          `store "${written.store}": ${what} this instance wrote ${ago} was changed since in ${source} (${says} now) by another mailfront writer, pid ${by.writer.pid} on ${by.writer.host}, at ${by.at}`,
        );
        continue;
      }
      this.log.error(
        { event: 'storemap.change_undone', ...fields },
        `store "${written.store}": ${what} this instance wrote ${ago} was undone by ${source} (${says} again): another writer saved the store map as it was before it, and no mailfront writer recorded a change of the store since: a hand edit from an old copy, or an instance writing without the store-map lock (an older mailfront during an upgrade); check the store map and whether that is what is meant`,
      );
    }
  }

  /**
   * Builds the document of the map in force again with the config in force, and puts the result
   * in force when it differs (the config's backend settings changed). A config that cannot build
   * it is refused before it is committed (check()); should one get here, the map stays as it is.
   */
  private rebuildInForce(version: number, trigger: string): MasterChange[] {
    const inForce = this.map;
    if (this.document === null || inForce === null) return [];
    let rebuilt: StoreMap;
    try {
      rebuilt = buildStoreMap(this.document.doc, this.document.origin, version, this.config());
    } catch {
      return [];
    }
    if (sameTopology(inForce, rebuilt)) return [];
    return this.install(rebuilt, trigger, this.document.origin, 'rebuilt');
  }

  /**
   * Throws the ConfigError the store map in force would give if built with `config` (a config
   * about to be reloaded). A config that fails it must not be committed: every later version
   * would be rejected under it, while the map in force still described the config before it.
   */
  check(config: Pick<Config, 'backend' | 'backendProfiles'> & { readonly file?: string }): void {
    if (this.document !== null) buildStoreMap(this.document.doc, this.document.origin, 0, config);
  }

  /**
   * Makes `slot` the current master of `store` in the source of truth, then puts it in force: the
   * document the source wrote (a file: read and parsed once, not read back), or, when the source
   * cannot hand it out (LDAP), a reload. In the reloads' queue: failovers of several stores at
   * once are written one after the other (each read-modify-write of the file sees the one
   * before; another process's, through the file's lock), and each reports its own reload. The
   * log lines saying so are written out before it resolves (flushLog).
   */
  failover(store: string, slot: string): Promise<ReloadResult> {
    return this.inTurn(async () => {
      const known = this.known(store);
      if (!known.slots.has(slot)) throw new MailfrontError('UNKNOWN_SLOT', 'no-route', `slot "${slot}" is not a slot of store "${store}" (slots: ${[...known.slots.keys()].join(', ')})`);
      const change: StoreChange = {
        what: `failover of store "${store}" to "${slot}"`,
        code: 'STOREMAP_FAILOVER_REFUSED',
        entry: (entry) => ({ ...entry, current_master: slot }),
        failed: { event: 'storemap.failover_failed', fields: { store, from: known.currentMaster, to: slot }, text: 'failover could not be written to the store map source' },
      };
      const written = await this.writeChecked(store, change, (check) => this.source.setCurrentMaster(store, slot, check));
      this.log.warn({ event: 'storemap.failover_written', store, from: known.currentMaster, to: slot, source: this.source.description }, 'failover written to the store map source');
      this.written.set(`failover:${store}`, { store, change: 'failover', value: slot, at: performance.now(), wallAt: Date.now(), recordId: written?.recorded?.id });
      const result = written === undefined ? await this.reloadNow('failover') : this.put(written.document, 'failover', written.recorded?.writes ?? (await this.recordedWrites()));
      // The lines saying so on their way out before the answer: a kill right after it lost them.
      await flushLog();
      return result;
    });
  }

  /**
   * Puts `store` in maintenance (true: the default text; a string: that reason) or takes it out
   * of it (false) in the source of truth, then puts that in force, as failover() does: checked
   * and written the same way, in the same queue. A reason the store map would refuse is refused
   * before anything is read (kind client-protocol), naming what a reason must be.
   */
  setMaintenance(store: string, maintenance: boolean | string): Promise<ReloadResult> {
    return this.inTurn(async () => {
      const known = this.known(store);
      const problem = maintenanceProblem(maintenance);
      if (problem !== undefined) throw new MailfrontError('STOREMAP_BAD_MAINTENANCE', 'client-protocol', `maintenance of store "${store}" not written: expected ${problem}`);
      const change: StoreChange = {
        what: `maintenance of store "${store}"`,
        code: 'STOREMAP_MAINTENANCE_REFUSED',
        entry: (entry) => (maintenance === false ? Object.fromEntries(Object.entries(entry).filter(([key]) => key !== 'maintenance')) : { ...entry, maintenance }),
        failed: { event: 'storemap.maintenance_failed', fields: { store, maintenance: maintenance !== false }, text: 'maintenance could not be written to the store map source' },
      };
      const written = await this.writeChecked(store, change, (check) => this.source.setMaintenance(store, maintenance, check));
      const fields = { event: 'storemap.maintenance_written', store, maintenance: maintenance !== false, ...(typeof maintenance === 'string' ? { reason: maintenance } : {}), before: known.maintenance !== null, source: this.source.description };
      this.log.warn(fields, `maintenance ${maintenance === false ? 'off' : 'on'} written to the store map source`);
      this.written.set(`maintenance:${store}`, { store, change: 'maintenance', value: maintenance !== false, at: performance.now(), wallAt: Date.now(), recordId: written?.recorded?.id });
      const result = written === undefined ? await this.reloadNow('maintenance') : this.put(written.document, 'maintenance', written.recorded?.writes ?? (await this.recordedWrites()));
      await flushLog();
      return result;
    });
  }

  /** The store `store` of the map in force; throws `no-route` when there is none. */
  private known(store: string): Store {
    const known = this.current.stores.get(store);
    if (known === undefined) throw new MailfrontError('UNKNOWN_STORE', 'no-route', `store "${store}" is not in the store map`);
    return known;
  }

  /**
   * Writes `change` of `store` with `write` (a source's setCurrentMaster or setMaintenance),
   * handing it the check of the document it reads (checkChange). A document that could not be
   * read or is no store map is refused as its load would be, nothing written.
   */
  private async writeChecked(store: string, change: StoreChange, write: (check: (document: unknown) => void) => Promise<SourceWrite | undefined>): Promise<SourceWrite | undefined> {
    /** The source's document was read, and handed to the check. */
    let read = false;
    try {
      return await write((doc) => {
        read = true;
        this.checkChange(doc, store, change);
      });
    } catch (caught) {
      // The document could not be read or is no store map: refused as its load would be. A
      // ConfigError is always that (a file that changed while the change was written, read again).
      // The source's write refused (a file system that would not take the file, another writer's
      // lock) is the write's failure, also before the document was read (a file's lock is taken first).
      if (!sourceRefusedWrite(caught) && (!read || caught instanceof ConfigError)) throw this.changeRefused(change, caught, sourceUnreadable(caught) !== undefined || unreadableFileError(caught) ? 'cannot be read' : 'is not valid', undefined);
      // The write itself failed (a read-only replica, a bind account that may not write): said here, where the operator looks, as well as to the caller.
      const error = asMailfrontError(caught);
      this.log.warn({ event: change.failed.event, ...change.failed.fields, source: this.source.description, code: error.code, err: error.message }, change.failed.text);
      throw caught;
    }
  }

  /**
   * Throws, naming the stores at fault, when the source's document `doc` with `change` made to
   * the entry of `store` would not validate (another store edited wrong since the map in force
   * was read, say). Written all the same, the change would be put in force by no reload until
   * that store is fixed, and then unannounced, its sessions drained long after the operator was
   * told it failed.
   */
  private checkChange(doc: unknown, store: string, change: StoreChange): void {
    const stores = isRecord(doc) && isRecord(doc['stores']) ? doc['stores'] : undefined;
    const entry = stores?.[store];
    const after = stores !== undefined && isRecord(entry) ? { ...(doc as Record<string, unknown>), stores: { ...stores, [store]: change.entry(entry) } } : doc;
    try {
      buildStoreMap(after, this.source.description, 0, this.config());
    } catch (caught) {
      throw this.changeRefused(change, caught, 'does not validate with it', stores);
    }
  }

  /**
   * The error of a change refused before anything was written: the source's document `how`
   * (cannot be read, is not valid, does not validate with it). A document at fault (ConfigError) names the
   * stores its problems are in; any other failure (an LDAP server down) keeps its code and kind.
   */
  private changeRefused(change: StoreChange, caught: unknown, how: string, stores: Record<string, unknown> | undefined): MailfrontError {
    const error = asMailfrontError(caught);
    const refused = `${change.what} refused, nothing was written: the store map in ${this.source.description} ${how}`;
    if (!(caught instanceof ConfigError)) return new MailfrontError(error.code, error.kind, `${refused}: ${error.message}`, { cause: caught });
    const names = Object.keys(stores ?? {});
    const invalid = (names.length > 0 ? names : [...this.current.stores.keys()]).filter((name) => caught.issues.some((i) => i.path === `stores.${name}` || i.path.startsWith(`stores.${name}.`)));
    const which = invalid.length === 0 ? '' : ` (${invalid.map((name) => `store "${name}"`).join(', ')}; fix ${invalid.length > 1 ? 'them' : 'it'} first)`;
    return new MailfrontError(change.code, 'config', `${refused}${which}: ${caught.message}`, { cause: caught });
  }
}

/** A change of one store's entry that the holder writes to the source (a failover, maintenance). */
interface StoreChange {
  /** `failover of store "alpha" to "a2"`: the start of the refusal's message. */
  readonly what: string;
  /** The code of its refusal for a document at fault. */
  readonly code: string;
  /** The store's entry of a store-map document with the change made. */
  readonly entry: (entry: Record<string, unknown>) => Record<string, unknown>;
  /** The warning logged when the source would not take the write (the document was read and the change checked). */
  readonly failed: { readonly event: string; readonly fields: Record<string, unknown>; readonly text: string };
}

/**
 * The latest change of `written`'s store to `now` that a mailfront writer recorded after
 * `written` (after its own record; without one, later by the clock), or undefined.
 */
function laterWrite(recorded: readonly RecordedWrite[], written: WrittenChange, now: string | boolean): RecordedWrite | undefined {
  const own = written.recordId === undefined ? -1 : recorded.findIndex((r) => r.id === written.recordId);
  const after = own >= 0 ? recorded.slice(own + 1) : recorded.filter((r) => Date.parse(r.at) > written.wallAt);
  return after.filter((r) => r.store === written.store && r.change === written.change && r.value === now).at(-1);
}

/** True for the ConfigError of a file that is not there or may not be read (ENOENT, EACCES, EISDIR): a document it could not give, not an invalid one. */
function unreadableFileError(error: unknown): boolean {
  return error instanceof ConfigError && error.issues.length > 0 && error.issues.every((i) => i.expected === 'a readable file' || i.expected.startsWith('a readable file ('));
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** True when two maps route and describe every store identically (backend settings included). */
function sameTopology(a: StoreMap, b: StoreMap): boolean {
  return JSON.stringify(describe(a)) === JSON.stringify(describe(b));
}

function describe(map: StoreMap): unknown {
  return [...map.stores.values()].map((s) => [s.name, s.currentMaster, s.preferredMaster, [...s.slots.values()], s.backend, s.maintenance]);
}

export { StoreMap };
