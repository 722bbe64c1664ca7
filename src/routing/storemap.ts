/**
 * The store map: stores, their slots, preferred and current master; an immutable, versioned
 * value. Resolving a store gives its current master slot and nothing else: mailfront never
 * routes to any other slot. Reading a store-map document lives here too; watching files and
 * other sources does not.
 */
import { isIP } from 'node:net';
import type { BackendConfig } from '../config/schema.js';
import { readBackend, sourceFamilyProblem } from '../config/schema.js';
import { IssueList, at, optPort, readMapping, readSection, str } from '../config/validate.js';
import { MailfrontError, TELLABLE_REASON, tellableReason } from '../errors.js';
import type { ProtocolName } from '../protocol/types.js';

export interface Slot {
  readonly name: string;
  readonly store: string;
  readonly host: string;
  readonly imapPort?: number;
  readonly imapsPort?: number;
  readonly pop3Port?: number;
  readonly pop3sPort?: number;
  /** ManageSieve (RFC 5804), STARTTLS only: there is no implicit-TLS port for it. */
  readonly sievePort?: number;
}

export interface Store {
  readonly name: string;
  readonly slots: ReadonlyMap<string, Slot>;
  readonly preferredMaster: string;
  readonly currentMaster: string;
  /** How to log in to this store's slots (the global backend section with this store's overrides). */
  readonly backend: BackendConfig;
  /**
   * The store is in maintenance (its slots stopped on purpose): what its clients are told, the
   * reason given or DEFAULT_MAINTENANCE_REASON; null when it is not. No login is routed to it.
   */
  readonly maintenance: string | null;
}

/**
 * What clients of a store in maintenance are told when no reason is given. Says "wait": fetchmail
 * takes a POP3 -ERR to a login as temporary only by its words, and reads any other as a wrong password.
 */
export const DEFAULT_MAINTENANCE_REASON = 'Your mailbox is down for maintenance, please wait and try again later.';

/** What a store's `maintenance` key must be, as its issue says. */
const MAINTENANCE_EXPECTED = `false, true, or the reason clients are told: ${TELLABLE_REASON} (write false or true)`;

/**
 * Reads a store's `maintenance` value: false (or absent) is off, true is on with the default
 * text, a string is on with that text when clients may be told it (tellableReason).
 */
function readMaintenance(value: unknown, path: string, issues: IssueList): string | null {
  if (value === undefined || value === false) return null;
  if (value === true) return DEFAULT_MAINTENANCE_REASON;
  if (maintenanceProblem(value) === undefined) return value as string;
  issues.add(path, MAINTENANCE_EXPECTED, value);
  return null;
}

/** What a store's `maintenance` value must be when `value` is not that, else undefined. */
export function maintenanceProblem(value: unknown): string | undefined {
  if (typeof value === 'boolean') return undefined;
  if (typeof value === 'string' && tellableReason(value)) return undefined;
  return MAINTENANCE_EXPECTED;
}

/** The ports a session of each protocol may have been dialled on. */
const PROTOCOL_PORTS: Readonly<Record<ProtocolName, readonly ('imapPort' | 'imapsPort' | 'pop3Port' | 'pop3sPort' | 'sievePort')[]>> = {
  imap: ['imapPort', 'imapsPort'],
  pop3: ['pop3Port', 'pop3sPort'],
  managesieve: ['sievePort'],
};

/**
 * True when a `protocol` session on slot `a` is on the server slot `b` names: the same name and
 * host, and the same ports for that protocol. A slot kept under its name but pointed elsewhere is
 * another server, and its sessions are on the old one.
 */
export function sameServer(a: Slot, b: Slot, protocol: ProtocolName): boolean {
  return a.name === b.name && a.host === b.host && PROTOCOL_PORTS[protocol].every((port) => a[port] === b[port]);
}

/**
 * For a slot kept under its name and host: the protocols whose sessions on `before` are on another
 * port in `after`, one that changed or went (a port added carried no session).
 */
export function protocolsWithMovedPorts(before: Slot, after: Slot): ProtocolName[] {
  return (Object.keys(PROTOCOL_PORTS) as ProtocolName[]).filter((protocol) => PROTOCOL_PORTS[protocol].some((port) => before[port] !== undefined && before[port] !== after[port]));
}

/** A store map version: what every login routed after it was built uses. */
export class StoreMap {
  constructor(
    readonly version: number,
    readonly stores: ReadonlyMap<string, Store>,
  ) {}

  /**
   * The current master slot of `storeName`; throws a `no-route` error when there is none, and a
   * `maintenance` error (its reason for the client) when the store is in maintenance.
   */
  currentMaster(storeName: string): { store: Store; slot: Slot } {
    const store = this.stores.get(storeName);
    if (store === undefined) throw new MailfrontError('UNKNOWN_STORE', 'no-route', `store "${storeName}" is not in the store map (version ${this.version})`);
    if (store.maintenance !== null) throw new MailfrontError('STORE_MAINTENANCE', 'maintenance', `store "${storeName}" is in maintenance (store map version ${this.version})`, { clientText: store.maintenance });
    const slot = store.slots.get(store.currentMaster);
    if (slot === undefined) throw new MailfrontError('NO_CURRENT_MASTER', 'no-route', `store "${storeName}" has no current master slot`);
    return { store, slot };
  }

  /** True when the store's current master is not its preferred master. */
  static isBackwards(store: Store): boolean {
    return store.currentMaster !== store.preferredMaster;
  }
}

/** A master's slot name as read: a number (an unquoted 101) as its text. */
function slotName(value: unknown): unknown {
  return typeof value === 'number' ? String(value) : value;
}

/** Reads a store-map document; `globalBackend` is the config's backend section that stores override. */
export function readStoreMap(doc: unknown, version: number, globalBackend: BackendConfig, profiles: ReadonlyMap<string, BackendConfig>, resolvePath: (p: string) => string, issues: IssueList): StoreMap {
  const root = readSection(doc, '', ['stores'], issues) ?? {};
  const storesDoc = readMapping(root['stores'], 'stores', issues) ?? {};
  const stores = new Map<string, Store>();
  const slotOwners = new Map<string, string>();
  if (Object.keys(storesDoc).length === 0) issues.add('stores', 'at least one store', storesDoc);
  for (const [storeName, storeDoc] of Object.entries(storesDoc)) {
    const path = at('stores', storeName);
    const o = readSection(storeDoc, path, ['slots', 'current_master', 'preferred_master', 'maintenance', 'backend', 'backend_profile'], issues);
    if (!o) continue;
    const slotsDoc = readMapping(o['slots'], at(path, 'slots'), issues) ?? {};
    const slots = new Map<string, Slot>();
    for (const [slotName, slotDoc] of Object.entries(slotsDoc)) {
      const slotPath = at(at(path, 'slots'), slotName);
      const owner = slotOwners.get(slotName);
      if (owner !== undefined) issues.add(slotPath, `a slot name used by one store only (store "${owner}" has it too)`, slotName);
      slotOwners.set(slotName, storeName);
      const s = readSection(slotDoc, slotPath, ['host', 'imap_port', 'imaps_port', 'pop3_port', 'pop3s_port', 'sieve_port'], issues) ?? {};
      const host = str(s, 'host', slotPath, issues);
      if (host !== '' && isIP(host) === 0 && !/^[A-Za-z0-9.-]+$/.test(host)) issues.addUrl(at(slotPath, 'host'), 'an IP address or host name', host);
      const ports = {
        imapPort: optPort(s, 'imap_port', slotPath, issues),
        imapsPort: optPort(s, 'imaps_port', slotPath, issues),
        pop3Port: optPort(s, 'pop3_port', slotPath, issues),
        pop3sPort: optPort(s, 'pop3s_port', slotPath, issues),
        sievePort: optPort(s, 'sieve_port', slotPath, issues),
      };
      if (Object.values(ports).every((p) => p === undefined)) issues.add(slotPath, 'at least one of imap_port, imaps_port, pop3_port, pop3s_port, sieve_port', s);
      const slot: Slot = { name: slotName, store: storeName, host };
      for (const [k, p] of Object.entries(ports)) if (p !== undefined) Object.assign(slot, { [k]: p });
      slots.set(slotName, slot);
    }
    if (slots.size === 0) issues.add(at(path, 'slots'), 'at least one slot', o['slots']);
    // A slot named by a number (`current_master: 101`, a slot `101:`) is that slot: the file
    // source has refused any number that does not read back as the text written (0101, 1e3).
    const masters = { current_master: slotName(o['current_master']), preferred_master: slotName(o['preferred_master']) };
    const currentMaster = str(masters, 'current_master', path, issues);
    const preferredMaster = str(masters, 'preferred_master', path, issues, currentMaster);
    for (const [key, value] of [['current_master', currentMaster], ['preferred_master', preferredMaster]] as const) {
      if (value !== '' && slots.size > 0 && !slots.has(value)) issues.add(at(path, key), `one of this store's slots (${[...slots.keys()].join(', ')})`, value);
    }
    let base = globalBackend;
    if (o['backend_profile'] !== undefined) {
      const name = str(o, 'backend_profile', path, issues);
      const profile = profiles.get(name);
      if (profile === undefined) issues.add(at(path, 'backend_profile'), `one of the config's backend_profiles (${[...profiles.keys()].join(', ') || 'none defined'})`, name);
      else base = profile;
    }
    const backend = o['backend'] === undefined ? base : readBackend(o['backend'], at(path, 'backend'), resolvePath, issues, base);
    for (const slot of slots.values()) {
      const problem = sourceFamilyProblem(slot.host, backend);
      if (problem !== null) issues.add(at(at(at(path, 'slots'), slot.name), 'host'), problem, slot.host);
    }
    const maintenance = readMaintenance(o['maintenance'], at(path, 'maintenance'), issues);
    stores.set(storeName, { name: storeName, slots, preferredMaster, currentMaster, backend, maintenance });
  }
  return new StoreMap(version, stores);
}
