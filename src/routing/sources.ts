/**
 * Where store-map documents come from and where a failover is written: a YAML file (watched)
 * or store entries in LDAP (polled). A source only produces plain documents in the store-map
 * file's shape; validation and versioning happen in the holder. Owns its file watcher, timers
 * and LDAP connection.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync, realpathSync, statSync, watch } from 'node:fs';
import type { BigIntStats, FSWatcher } from 'node:fs';
import { link, open, readFile, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { readCaCertificates } from '../ca-file.js';
import { basename, dirname, join, resolve } from 'node:path';
import type { ConnectionOptions } from 'node:tls';
import { AdminLimitExceededError, Attribute, Change, Client, ResultCodeError, SizeLimitExceededError } from 'ldapts';
import { isMap, isScalar } from 'yaml';
import type { Document, YAMLMap } from 'yaml';
import { escapeFilterValue, LdapAnswerRefusedError, ldapBytesReceived, openLdapClient } from '../auth/ldap.js';
import { ConfigError, parseStoreMap, readStoreMapFile, unreadableFile } from '../config/load.js';
import type { StoreMapSourceConfig } from '../config/schema.js';
import { asMailfrontError, MailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import { MAX_STOREMAP_LDAP_ANSWER_BYTES } from '../limits.js';

/** A store-map source. */
export interface StoreMapSource {
  /** Names the source in logs ("file /etc/mailfront/stores.yaml", "ldap ou=stores,..."). */
  readonly description: string;
  /**
   * Reads the current document. `trigger` says why (the holder's: start, change, signal,
   * failover, check, accept-older): an LDAP source puts a map from a server behind the one in
   * force in force only when the reload asked for it (ACCEPT_OLDER_TRIGGER: `mailfront reload
   * --accept-older-store-map`), see LdapStoreMapSource. `check` is a reload's read for
   * its check of a new config (StoreMapHolder.read()), which is put in force only if the reload
   * is taken: a source whose watch reports a document that differs from the last one loaded does
   * not count it as loaded until took() says so.
   */
  load(trigger?: string): Promise<unknown>;
  /**
   * Takes over what `previous`, the source this one replaces at a reload (a changed store_map
   * section), knows of the map in force and its servers, where it applies (see
   * LdapStoreMapSource.continueFrom()). Called before the new source's first load, and again as
   * the holder puts it in place.
   */
  continueFrom?(previous: StoreMapSource): void;
  /** The holder put in force `document`, which load('check') gave: from now on it is the last one loaded. */
  took?(document: unknown): void;
  /**
   * Calls `onChange` whenever the source may have changed (debounced); returns a stop function.
   * `onHealth` hears whether the source can be watched and read: null after each good look (an
   * LDAP poll, the start of a file watch and each periodic look at the file, each read of a file
   * that is not watched, a read that ends a file's passing failure), the error when it cannot be
   * (an unreachable LDAP server, a file that cannot be watched, or read for a passing reason). The
   * map in force stays either way; the caller makes it visible.
   */
  watch(onChange: () => void, onHealth?: (error: Error | null) => void): () => void;
  /**
   * Writes a new current master for `store` into the source of truth; a store without an explicit
   * preferred master gets the master failed over from as its preferred master. `check` is given
   * the source's document as read for the write (before the failover is made in it, and again at
   * each try of a file that changed meanwhile) and refuses the failover, nothing written, by
   * throwing. Resolves to the document as written when the source holds it now (a file: what was
   * renamed into place, so it need not be read back), or undefined (read it again).
   */
  setCurrentMaster(store: string, slot: string, check?: (document: unknown) => void): Promise<SourceWrite | undefined>;
  /**
   * Puts `store` in maintenance (true: the default text; a string: that reason) or takes it out
   * (false) in the source of truth, as setCurrentMaster writes a failover: `check` and the result
   * alike.
   */
  setMaintenance(store: string, maintenance: boolean | string, check?: (document: unknown) => void): Promise<SourceWrite | undefined>;
  /**
   * How another writer can take back a change written here. `whole`: the source is saved whole (a
   * file), so a copy read before the change and saved after it takes it back unseen; its mailfront
   * writers record their changes (recordedWrites) to tell a later deliberate change from that.
   * `entry`: each write modifies one store's entry (LDAP), so a later value is a later write,
   * mailfront's or an operator's, never a stale copy. See StoreMapHolder.reportUndone.
   */
  readonly saves: 'whole' | 'entry';
  /** The changes mailfront writers recorded lately, oldest first (see RecordedWrite); none when none could be read. */
  recordedWrites?(): Promise<readonly RecordedWrite[]>;
  close(): Promise<void>;
}

/** A change written to a source: the document as written, when the source holds it now, and the change's record, when the source keeps them. */
export interface SourceWrite {
  readonly document: unknown;
  /** The change as recorded beside a store-map file, and the records as they were written with it (oldest first). */
  readonly recorded?: { readonly id: string; readonly writes: readonly RecordedWrite[] };
}

/**
 * A change a mailfront writer made to a store-map file, recorded with the file's lock held in
 * `.<name>.written` beside it before the rename (so that whoever reads the renamed file finds it):
 * a later deliberate change of a store, by another instance, is told from a copy read before it
 * and saved after it, which takes a change back with no record.
 */
export interface RecordedWrite {
  readonly id: string;
  readonly store: string;
  readonly change: 'failover' | 'maintenance';
  /** The current master written, or whether maintenance was turned on. */
  readonly value: string | boolean;
  /** When, by the writer's clock (ISO 8601). */
  readonly at: string;
  readonly writer: { readonly id: string; readonly pid: number; readonly host: string };
}

/** One change of a store's entry in a store-map file: the words of its messages, and the edit of the YAML store node and of the plain document alike. */
interface StoreFileEdit {
  /** `the failover of store "alpha" to "a2"`, `maintenance of store "alpha"` (no failover written, ...). */
  readonly what: string;
  readonly noun: string;
  /** The change as recorded (see RecordedWrite). */
  readonly record: Pick<RecordedWrite, 'change' | 'value'>;
  readonly edit: (storeNode: YAMLMap, plain: Record<string, unknown>, doc: Document) => void;
}

/**
 * LDAP result codes of a failover's modify that its add of mailfrontPreferredMaster may have
 * caused: insufficientAccessRights (50), the bind account allowed to write mailfrontCurrentMaster
 * only; attributeOrValueExists (20) and constraintViolation (19), one added meanwhile.
 */
const PREFERRED_MASTER_ADD_FAILURES: ReadonlyMap<number, string> = new Map([
  [50, 'the bind account may not write mailfrontPreferredMaster (insufficientAccessRights); until it may, or one is set by hand, the store does not show as backwards'],
  [20, 'one was added meanwhile (attributeOrValueExists), and is kept'],
  [19, 'one was added meanwhile (constraintViolation), and is kept'],
]);

/**
 * What an LDAP result code of a store-map write's modify (a failover, a maintenance switch) means,
 * for the operator: the code of the error (see failoverWriteError), its kind, and the words. A
 * read-only replica answers a write with a referral to its provider (10, OpenLDAP's updateref)
 * or, without one, unwillingToPerform (53).
 */
const STOREMAP_WRITE_FAILURES: ReadonlyMap<number, { readonly code: string; readonly kind: 'config' | 'auth-tempfail'; readonly why: (change: StoreMapWrite) => string }> = new Map([
  [10, { code: 'STOREMAP_READ_ONLY_REPLICA', kind: 'config', why: (change: StoreMapWrite) => `is a read-only replica (it answered with a referral to its provider, LDAP result 10); write the ${change} on the provider: through an instance whose store_map.ldap.urls lists the provider first, or with ldapmodify on the provider` }],
  [53, { code: 'STOREMAP_READ_ONLY_REPLICA', kind: 'config', why: (change: StoreMapWrite) => `is unwilling to write it (unwillingToPerform, LDAP result 53: a read-only replica without an update referral, or a database set read-only); write the ${change} on the provider` }],
  [50, { code: 'STOREMAP_WRITE_NOT_ALLOWED', kind: 'config', why: (change: StoreMapWrite) => `does not let the bind account write ${change === 'failover' ? 'mailfrontCurrentMaster' : 'mailfrontMaintenance'} (insufficientAccessRights, LDAP result 50); grant it write access to ${change === 'failover' ? 'mailfrontCurrentMaster and mailfrontPreferredMaster' : 'mailfrontMaintenance'} of the store entries` }],
  [51, { code: 'STOREMAP_LDAP_BUSY', kind: 'auth-tempfail', why: () => 'is too busy to write it (busy, LDAP result 51); try again' }],
  [52, { code: 'STOREMAP_LDAP_BUSY', kind: 'auth-tempfail', why: (change: StoreMapWrite) => `is unavailable for writes (unavailable, LDAP result 52); try again, or write the ${change} on another server of the fleet` }],
]);

/** What a store-map write changes. */
type StoreMapWrite = 'failover' | 'maintenance';

/** What the server said with an LDAP result, as ` (the server said: …)`, or nothing. */
function serverSaid(error: ResultCodeError): string {
  // ldapts's message is the server's diagnostic text, if any, then " Code: 0x.."; the referral's URL is not handed out.
  const said = error.message.replace(/\s*Code: 0x[0-9a-f]+$/i, '').trim();
  return said === '' ? '' : ` (the server said: ${said})`;
}

/**
 * The error of a store-map write's modify of `dn` on `url`: refused by the server, one that says
 * why in the words of STOREMAP_WRITE_FAILURES, or of its result code (nothing was written: a
 * modify is all or nothing); not answered (a timeout, a connection closed or cut), one that says
 * the write may or may not have been made (STOREMAP_WRITE_UNCONFIRMED, passing: 503 to the admin
 * API). A MailfrontError as it came.
 */
export function failoverWriteError(error: unknown, store: string, dn: string, url: string | undefined, change: StoreMapWrite = 'failover'): unknown {
  if (error instanceof MailfrontError) return error;
  if (!(error instanceof ResultCodeError)) {
    const why = error instanceof Error ? error.message : String(error);
    return new MailfrontError('STOREMAP_WRITE_UNCONFIRMED', 'auth-tempfail', `${change} of store "${store}" unconfirmed: the store-map server ${url ?? '(unknown)'} did not answer the modify of ${dn} (${why}); it may or may not have been written: see \`mailfront stores\` after the next poll, or the entry in the directory, before trying again`, { cause: error });
  }
  const known = STOREMAP_WRITE_FAILURES.get(error.code);
  const server = `the store-map server ${url ?? '(unknown)'}`;
  const detail = serverSaid(error);
  if (known !== undefined) return new MailfrontError(known.code, known.kind, `${change} of store "${store}" not written: ${server} ${known.why(change)}${detail}`, { cause: error });
  return new MailfrontError('STOREMAP_WRITE_FAILED', 'config', `${change} of store "${store}" not written: ${server} refused the modify of ${dn} with LDAP result ${error.code}${detail}`, { cause: error });
}

/**
 * The error of the search for `store`'s entry before a store-map write's modify (on `url`):
 * nothing was written either way. Not answered (a timeout, a connection closed, no server to
 * connect to), STOREMAP_LDAP_BUSY (passing: 503 to the admin API); refused with an LDAP result,
 * that of STOREMAP_WRITE_FAILURES for busy or unavailable, else STOREMAP_WRITE_FAILED (409).
 */
export function entrySearchError(error: unknown, store: string, url: string | undefined, change: StoreMapWrite): unknown {
  if (error instanceof MailfrontError && error.code !== 'STOREMAP_LDAP_UNREACHABLE') return error;
  const server = `the store-map server ${url ?? '(unknown)'}`;
  if (!(error instanceof ResultCodeError)) {
    const why = error instanceof Error ? error.message : String(error);
    return new MailfrontError('STOREMAP_LDAP_BUSY', 'auth-tempfail', `${change} of store "${store}" not written: ${server} did not answer the search for its entry (${why}); nothing was written, try again`, { cause: error });
  }
  const detail = serverSaid(error);
  const known = STOREMAP_WRITE_FAILURES.get(error.code);
  if (known !== undefined && known.code === 'STOREMAP_LDAP_BUSY') return new MailfrontError(known.code, known.kind, `${change} of store "${store}" not written: ${server} ${known.why(change)}${detail}`, { cause: error });
  return new MailfrontError('STOREMAP_WRITE_FAILED', 'config', `${change} of store "${store}" not written: ${server} refused the search for its entry with LDAP result ${error.code}${detail}`, { cause: error });
}

/** How many times a failover is made again on a file that changed while it was written. */
const FAILOVER_WRITE_ATTEMPTS = 5;

/**
 * Codes of a read that fails for a passing reason: too many open files (mailfront's own limit,
 * EMFILE, or the system's, ENFILE), an interrupted or busy read, the disk, memory, a stale or
 * silent network file system. The file is read again until it can be. A file that is not there,
 * may not be read or is no file (ENOENT, EACCES, EISDIR, ...) is the operator's to fix, and the
 * fix (a create, a chmod, a rename) is an event the watch hears: its read is a rejected document.
 */
const PASSING_READ_ERRORS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'EAGAIN', 'EBUSY', 'EINTR', 'EIO', 'ENOMEM', 'ESTALE', 'ETIMEDOUT']);

/** What a passing read error means, where its code alone would not say. */
const PASSING_READ_MEANING: ReadonlyMap<string, string> = new Map([
  ['EMFILE', "too many open files: mailfront's own limit, RLIMIT_NOFILE, set by LimitNOFILE or ulimit -n"],
  ['ENFILE', "too many open files: the system's table, fs.file-max"],
]);

/**
 * Why a store-map source could not be read at all, when `error` (thrown by its load()) says so:
 * an LDAP server that does not answer or refuses the search, a store-map file (or a secret file it
 * names) that a passing reason kept from being read (PASSING_READ_ERRORS). Undefined for a
 * document that makes no map, and for a file not there or not readable (see PASSING_READ_ERRORS).
 */
export function sourceUnreadable(error: unknown): string | undefined {
  if (error instanceof ConfigError) {
    const codes = error.issues.map((i) => (i.expected === 'a readable file' || i.expected.startsWith('a readable file (') ? i.found : ''));
    if (codes.length === 0 || !codes.every((code) => PASSING_READ_ERRORS.has(code))) return undefined;
    return `${error.file}: ${[...new Set(codes)].map((code) => `${code}${PASSING_READ_MEANING.has(code) ? ` (${PASSING_READ_MEANING.get(code)!})` : ''}`).join(', ')}`;
  }
  if (error instanceof MailfrontError && LDAP_UNREADABLE.has(error.code)) return error.message;
  return undefined;
}

/** Codes of an LDAP store-map source that could not be read (the others: it gave no valid map). */
const LDAP_UNREADABLE: ReadonlySet<string> = new Set(['STOREMAP_LDAP_UNREACHABLE', 'STOREMAP_LDAP_SEARCH_FAILED', 'STOREMAP_SOURCE_CLOSED', 'STOREMAP_LDAP_BEHIND']);

/** When a store-map file is looked at besides the events of its watch, and how long a write waits for another's. */
export interface FileSourceTiming {
  /** The first read again after a read that failed for a passing reason; each next one waits twice as long, up to retryMaxMs. */
  readonly retryFirstMs: number;
  readonly retryMaxMs: number;
  /** How often a watched file's identity (device, inode, size, times) is compared with the one last read: 0, never. */
  readonly checkIntervalMs: number;
  /** How long a change written here waits for the file's lock, held by another writer, before it gives up (STOREMAP_LOCKED). */
  readonly lockWaitMs: number;
}

/**
 * Reads again 1 s after a passing failure, then 2, 4, ... up to every 30 s: soon enough that a
 * failover saved at the limit follows within seconds of descriptors coming free, and no more than
 * a read a second while they do not. The look every 5 s costs one stat(2); it finds a change the
 * watch missed (an inotify queue that overflowed: libuv drops IN_Q_OVERFLOW without a word; a
 * watch that ended; a link among the file's folders swapped) within 5 s. A change waits up to
 * 10 s for another writer's lock: a write of 50,000 stores (read, parsed, checked, written) takes
 * a few seconds.
 */
const FILE_SOURCE_TIMING: FileSourceTiming = { retryFirstMs: 1_000, retryMaxMs: 30_000, checkIntervalMs: 5_000, lockWaitMs: 10_000 };

/**
 * A store-map file's lock older than this is a writer's that died or hangs, and is broken: no
 * write holds it so long, and a writer on another host (a shared file system) cannot be asked
 * whether it runs.
 */
const STOREMAP_LOCK_STALE_MS = 30_000;

/** A temporary file of a write older than this is one cut short (its writer killed), whoever wrote it. */
const STOREMAP_TEMP_STALE_MS = 60_000;

/**
 * The records of changes written to a store-map file that are kept (see RecordedWrite): those of
 * the last 2 minutes (the holder asks about the last one, StoreMapHolder's CHANGE_UNDONE_WINDOW_MS;
 * the rest is for clocks of other hosts that differ), at most 256, the oldest dropped first.
 */
const RECORDED_WRITES_KEEP_MS = 120_000;
const RECORDED_WRITES_KEEP = 256;

/** Names this process as a writer in the records of its changes. */
const WRITER_ID = randomUUID();

/** `.<name>.written` beside the store-map file `file` (its real path). */
function recordPath(file: string): string {
  return join(dirname(file), `.${basename(file)}.written`);
}

/** The records in the text of a `.<name>.written` (see RecordedWrite); those that are not, skipped. */
function parseRecordedWrites(text: string | undefined): RecordedWrite[] {
  if (text === undefined) return [];
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return [];
  }
  const writes = (value as { writes?: unknown } | null)?.writes;
  if (!Array.isArray(writes)) return [];
  return writes.filter((w): w is RecordedWrite => {
    const r = w as Partial<RecordedWrite> | null;
    return typeof r?.id === 'string' && typeof r.store === 'string' && (r.change === 'failover' || r.change === 'maintenance') && (typeof r.value === 'string' || typeof r.value === 'boolean') && typeof r.at === 'string' && typeof r.writer?.pid === 'number' && typeof r.writer.host === 'string' && typeof r.writer.id === 'string';
  });
}

/** Writes `text` to a new file `path`. */
async function writeFileAt(path: string, text: string): Promise<void> {
  const handle = await open(path, 'wx', 0o644);
  try {
    await handle.writeFile(text);
  } finally {
    await handle.close();
  }
}

/** The pauses between looks at another writer's lock: doubling from the first up to the last, each with jitter. */
const LOCK_FIRST_PAUSE_MS = 10;
const LOCK_MAX_PAUSE_MS = 200;

/**
 * What an errno of a store-map file's write means, and whether it passes (a full disk, the quota,
 * an I/O error: 503, try again once it is fixed) or is the setup's to fix (409). Another errno is
 * the setup's too, named by its code alone.
 */
const FILE_WRITE_FAILURES: ReadonlyMap<string, { readonly passing: boolean; readonly meaning: string }> = new Map([
  ['ENOSPC', { passing: true, meaning: 'no space left on its file system' }],
  ['EDQUOT', { passing: true, meaning: "the disk quota of mailfront's user is used up" }],
  ['EIO', { passing: true, meaning: 'an I/O error of its disk or network file system' }],
  ['EROFS', { passing: false, meaning: "its file system is mounted read-only (under the shipped systemd unit, ProtectSystem=strict, every folder is but mailfront's own, StateDirectory=mailfront: /var/lib/mailfront)" }],
  [
    'EACCES',
    {
      passing: false,
      meaning: "mailfront's user may not write to its folder, where a change writes a lock and a temporary file and renames it onto the file: give the folder to that user, or keep the store map in mailfront's own folder (systemd: StateDirectory=mailfront, /var/lib/mailfront)",
    },
  ],
  ['EPERM', { passing: false, meaning: 'not permitted: the file or its folder is immutable or append-only (chattr +i, +a), or a system call filter refuses the call' }],
]);

/**
 * The error of a change that a store-map file's file system would not take (`error`, an errno
 * error of the lock, the temporary file or the rename): STOREMAP_WRITE_FAILED, naming the file,
 * the errno and what it means, and that nothing changed. Passing (ENOSPC, EDQUOT, EIO, and the
 * passing read errors: too many open files, say) its kind is local-resources (503); otherwise
 * config (409). Anything else as it came: no errno, a bug.
 */
export function fileWriteError(error: unknown, file: string, what: string): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (error instanceof MailfrontError || typeof code !== 'string') return error;
  const known = FILE_WRITE_FAILURES.get(code);
  const passing = known?.passing ?? PASSING_READ_ERRORS.has(code);
  const meaning = known?.meaning ?? PASSING_READ_MEANING.get(code) ?? (error instanceof Error ? error.message : code);
  return new MailfrontError('STOREMAP_WRITE_FAILED', passing ? 'local-resources' : 'config', `${what} not written: ${file} could not be written (${code}: ${meaning}); nothing was changed, the file is as it was${passing ? '; try again once that is fixed' : ''}`, { cause: error });
}

/**
 * True when `error` is a change's write refused by the source itself (a file its file system
 * would not take, a lock another writer holds), whether or not the document was read before it:
 * no refusal of the document (see StoreMapHolder.writeChecked).
 */
export function sourceRefusedWrite(error: unknown): boolean {
  return error instanceof MailfrontError && (error.code === 'STOREMAP_WRITE_FAILED' || error.code === 'STOREMAP_LOCKED' || error.code === 'STOREMAP_WRITE_UNCONFIRMED');
}

/** Whether process `pid` runs on this host (one of another user's included). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * When process `pid` of this host started, as `<boot id>:<start time in clock ticks since boot>`
 * (/proc/<pid>/stat's 22nd field): a pid that names another process since (its writer died and
 * the pid was given again) starts at another time. Undefined where /proc cannot tell (not Linux,
 * no such process, a /proc mounted for another pid namespace, or with only its process
 * folders: systemd's ProcSubset=pid hides /proc/sys). Exported for the systemd unit's test.
 */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command's name, which is in parentheses and may hold spaces and parentheses itself.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Field 22 of the line; fields[0] here is field 3 (the state).
    const start = fields[22 - 3];
    if (start === undefined || !/^\d+$/.test(start)) return undefined;
    bootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    return `${bootId}:${start}`;
  } catch {
    return undefined;
  }
}
let bootId: string | undefined;

/** This process's start (see processStart), written into its locks; read once. */
let ownStart: string | null | undefined;
function ownProcessStart(): string | undefined {
  if (ownStart === undefined) ownStart = processStart(process.pid) ?? null;
  return ownStart ?? undefined;
}

/**
 * The ids of the store-map file locks this process holds now. A lock that names this process's
 * pid and host but an id not here was left by a process before it that had the same pid (a
 * container's fixed pid after a restart): stale, as no writer here holds it. A set, not one id: the
 * removal of temporary files at a watch's start may hold one lock while a write waits for it.
 */
const HELD_LOCKS = new Set<string>();

/** A lock as found: its text (who holds it, when written whole), its inode and age. */
interface FoundLock {
  readonly text: string;
  readonly ino: number;
  readonly ageMs: number;
  /** `id` and `start` absent from the locks of an older mailfront. */
  readonly holder: { readonly pid: number; readonly host: string; readonly since: string; readonly id?: string; readonly start?: string } | undefined;
}

/** Why the lock `found` is stale (its writer is gone, or it is older than STOREMAP_LOCK_STALE_MS), or undefined while its writer may still hold it. */
function staleLock(found: FoundLock): string | undefined {
  const holder = found.holder;
  if (holder !== undefined && holder.host === hostname()) {
    if (holder.pid === process.pid) {
      if (holder.id === undefined || !HELD_LOCKS.has(holder.id)) return `it names this process (pid ${holder.pid}), which holds no such lock: a process before it with the same pid left it`;
    } else if (!running(holder.pid)) {
      return `its writer (pid ${holder.pid}) no longer runs`;
    } else if (holder.start !== undefined) {
      const start = processStart(holder.pid);
      if (start !== undefined && start !== holder.start) return `its writer (pid ${holder.pid}) no longer runs: pid ${holder.pid} is another process now`;
    }
  }
  return found.ageMs > STOREMAP_LOCK_STALE_MS ? `it is ${Math.round(found.ageMs / 1000)} s old` : undefined;
}

/** The lock at `path`, or undefined when there is none. */
async function findLock(path: string): Promise<FoundLock | undefined> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const [text, s] = await Promise.all([handle.readFile('utf8'), handle.stat()]);
    let holder: FoundLock['holder'];
    try {
      const value = JSON.parse(text) as Record<string, unknown>;
      if (typeof value['pid'] === 'number' && typeof value['host'] === 'string' && typeof value['since'] === 'string') {
        const [id, start] = [value['id'], value['start']];
        holder = { pid: value['pid'], host: value['host'], since: value['since'], ...(typeof id === 'string' ? { id } : {}), ...(typeof start === 'string' ? { start } : {}) };
      }
    } catch {
      // Being written (it is made, then written), or not mailfront's: judged by its age alone.
    }
    return { text, ino: s.ino, ageMs: Date.now() - s.mtimeMs, holder };
  } finally {
    await handle.close();
  }
}

/**
 * The lock of one change written to a store-map file: `.<name>.lock` beside it, made with O_EXCL
 * and holding the writer's pid, host and time, from before the file is read to after the rename.
 * Writers in other processes (two instances sharing the file) take turns: each reads what the
 * one before wrote. A lock whose writer no longer runs on this host (its pid gone, given to
 * another process since, or this process's own held by none of its writes), or older than
 * STOREMAP_LOCK_STALE_MS, is broken. A writer checks it still holds its lock just before its
 * rename, so that one broken meanwhile loses no one's change.
 */
class StoreMapFileLock {
  private constructor(
    readonly path: string,
    private readonly text: string,
    private readonly id: string,
  ) {}

  /** Takes the lock of `file` (its real path), waiting up to `waitMs` for another writer's; `what` names the change for the error. */
  static async take(file: string, what: string, waitMs: number, log: Logger | undefined): Promise<StoreMapFileLock> {
    const path = join(dirname(file), `.${basename(file)}.lock`);
    const id = randomUUID();
    const start = ownProcessStart();
    const text = `${JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString(), id, ...(start !== undefined ? { start } : {}) })}\n`;
    const deadline = performance.now() + waitMs;
    let pause = LOCK_FIRST_PAUSE_MS;
    let breaks = 0;
    for (;;) {
      let handle;
      // Known as this process's own before its text is on disk: another taker in this process
      // that read it in between took it for a predecessor's with this pid, and broke it live.
      HELD_LOCKS.add(id);
      try {
        handle = await open(path, 'wx', 0o644);
      } catch (error) {
        HELD_LOCKS.delete(id);
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw fileWriteError(error, file, what);
      }
      if (handle !== undefined) {
        try {
          await handle.writeFile(text);
          await handle.close();
        } catch (error) {
          HELD_LOCKS.delete(id);
          await handle.close().catch(() => undefined);
          await rm(path, { force: true }).catch(() => undefined);
          throw fileWriteError(error, file, what);
        }
        return new StoreMapFileLock(path, text, id);
      }
      const found = await findLock(path).catch((error: unknown) => {
        throw fileWriteError(error, file, what);
      });
      if (found !== undefined) {
        const stale = staleLock(found);
        // Tried again at once once broken (a few times: a lock that is stale again at once is no writer's turn).
        if (stale !== undefined && breaks++ < 3) {
          await StoreMapFileLock.break(path, found, stale, log).catch((error: unknown) => {
            throw fileWriteError(error, file, what);
          });
          continue;
        }
      }
      if (performance.now() >= deadline) {
        const who = found?.holder === undefined ? 'another writer' : `another writer (pid ${found.holder.pid} on ${found.holder.host}, since ${found.holder.since})`;
        throw new MailfrontError('STOREMAP_LOCKED', 'in-use', `${what} not written: ${who} kept the lock of ${file} (${path}) for the ${waitMs / 1000} s a change waits; nothing was changed, try again (a lock whose writer no longer runs on this host, or older than ${STOREMAP_LOCK_STALE_MS / 1000} s, is broken)`);
      }
      if (found !== undefined) {
        await new Promise((resolve) => setTimeout(resolve, pause * (0.5 + Math.random() / 2)));
        pause = Math.min(pause * 2, LOCK_MAX_PAUSE_MS);
      }
    }
  }

  /**
   * Breaks the stale lock `found` at `path`: renamed aside (of two writers breaking it, one does),
   * and put back should what was renamed be a lock taken since it was looked at.
   */
  private static async break(path: string, found: FoundLock, why: string, log: Logger | undefined): Promise<void> {
    const aside = `${path}.${process.pid}.${randomUUID()}.broken`;
    try {
      await rename(path, aside);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    try {
      const moved = await findLock(aside);
      if (moved !== undefined && (moved.ino !== found.ino || moved.text !== found.text)) {
        // Another writer's, taken since: back in place, unless yet another was taken meanwhile.
        await link(aside, path).catch(() => undefined);
        return;
      }
      log?.warn({ event: 'storemap.lock_broken', lock: path, pid: found.holder?.pid, host: found.holder?.host, since: found.holder?.since, reason: why }, `the store map's lock ${path} was broken: ${why}`);
    } finally {
      await rm(aside, { force: true });
    }
  }

  /** True while the lock is this writer's still (none broke it). */
  async held(): Promise<boolean> {
    return (await readFile(this.path, 'utf8').catch(() => undefined)) === this.text;
  }

  /** Removes the lock, if it is this writer's still. */
  async release(): Promise<void> {
    // A lock that cannot be removed (a file system gone read-only since) is broken once it is stale.
    if (await this.held()) await rm(this.path, { force: true }).catch(() => undefined);
    HELD_LOCKS.delete(this.id);
  }
}

/**
 * Removes the temporary files of writes to `file` (its real path) cut short by a kill, named
 * `.<name>.<pid>.<n>.tmp` (and `.<name>.lock.<pid>.<id>.broken`, a stale lock being broken;
 * `.<name>.written.<pid>.<n>.new`, the records of changes being written): those
 * whose writer no longer runs on this host, of this process (no write of its own runs while it
 * holds the lock), or older than STOREMAP_TEMP_STALE_MS. Called with the file's lock held, so that
 * no writer that takes it has a temporary file there; a writer that does not (an older mailfront)
 * keeps its own while it runs, for a minute.
 */
async function removeStaleTemps(file: string, log: Logger | undefined): Promise<void> {
  const folder = dirname(file);
  const prefix = `.${basename(file)}.`;
  const names = await readdir(folder).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    const parts = name.startsWith(prefix) ? /^(?:(\d+)\.\d+\.tmp|lock\.(\d+)\.[0-9a-f-]+\.broken|written\.(\d+)\.\d+\.new)$/.exec(name.slice(prefix.length)) : null;
    const pid = parts?.[1] ?? parts?.[2] ?? parts?.[3];
    if (pid === undefined) continue;
    const path = join(folder, name);
    if (Number(pid) !== process.pid && running(Number(pid))) {
      const modified = await stat(path).then((s) => s.mtimeMs, () => undefined);
      if (modified === undefined || Date.now() - modified < STOREMAP_TEMP_STALE_MS) continue;
    }
    await rm(path, { force: true }).then(
      () => removed.push(name),
      () => undefined,
    );
  }
  if (removed.length > 0) log?.warn({ event: 'storemap.temp_files_removed', folder, files: removed }, `removed ${removed.length} temporary file(s) of store-map writes cut short from ${folder}`);
}

/**
 * Makes a rename in `folder` durable (fsync of the folder). A file system that cannot sync a
 * folder (EINVAL, ENOTSUP) has nothing more to give: taken as done.
 */
async function syncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'ENOTSUP') throw error;
  } finally {
    await handle.close();
  }
}

/** Who hears a file source's watch (see StoreMapSource.watch). */
interface FileSourceListener {
  readonly onChange: () => void;
  readonly onHealth: ((error: Error | null) => void) | undefined;
}

/** The identity of the file at `file` (links followed) as stat(2) gives it, or undefined when there is none. */
function fileIdentity(file: string): string | undefined {
  try {
    return identityOf(statSync(file, { bigint: true }));
  } catch {
    return undefined;
  }
}

function identityOf(s: BigIntStats): string {
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

/** What a store-map file's content is compared by: a digest, not the text (megabytes at 50,000 stores). */
function digest(text: string): string {
  return createHash('sha256').update(text).digest('base64');
}

/**
 * A YAML store-map file, watched for changes (editors replace files, so the folder is watched),
 * looked at every few seconds for a change the watch missed, and read again on a timer after a
 * read that failed for a passing reason (too many open files, say) until it can be read.
 */
export class FileStoreMapSource implements StoreMapSource {
  readonly description: string;
  private readonly timing: FileSourceTiming;
  constructor(
    private readonly file: string,
    private readonly watchEnabled: boolean,
    /** The config file's folder: the store map's relative secret files resolve against it (default: the store map's folder). */
    private readonly baseDir?: string,
    private readonly log?: Logger,
    timing: Partial<FileSourceTiming> = {},
  ) {
    this.description = `file ${file}`;
    this.timing = { ...FILE_SOURCE_TIMING, ...timing };
  }

  /** The digest of the text load() last parsed into a document, to see whether the file changed before the watch began. */
  private lastLoaded: string | undefined;
  /**
   * The document of the last text parsed, by the text's digest, when it names no secret file:
   * an unchanged file is not parsed again at the next load (each SIGHUP's; at 5,000 stores a
   * parse blocked the event loop for about 0.5 s). The document is only read (buildStoreMap).
   */
  private lastParsed: { readonly digest: string; readonly document: unknown } | undefined;
  /**
   * The digest of the text a failover wrote since the last load(): its document went to the
   * holder with it, so the watch's event for the write need not read and parse the file again.
   */
  private lastWritten: string | undefined;
  /** The file's identity when it was last read, whatever the document (a read that failed for a passing reason aside). */
  private identityRead: string | undefined;
  /** Failovers written so far (names their temporary files). */
  private writes = 0;
  /** Who hears the watch in force (watch() with `watch: false` too: each read is a look). */
  private listener: FileSourceListener | undefined;
  /** Why the watch in force does not watch (it could not start, or ended), if so. */
  private watchError: Error | null = null;
  /** Why the last read failed, when a passing reason did (the file is read again on a timer until it can be). */
  private readError: Error | null = null;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs = 0;
  /** Stops the watch in force (close() does too). */
  private stopWatch: (() => void) | undefined;
  /** The removal of temporary files at the last watch's start (it never fails), for close() to wait for. */
  private removingTemps: Promise<void> = Promise.resolve();
  readonly saves = 'whole';

  load(): Promise<unknown> {
    return Promise.resolve().then(() => {
      // Before the read: a change while it reads shows at the next look.
      const identity = fileIdentity(this.file);
      let loaded: string;
      let document: unknown;
      try {
        const text = this.readText();
        loaded = digest(text);
        if (this.lastParsed?.digest === loaded) document = this.lastParsed.document;
        else {
          const parsed = parseStoreMap(text, this.file, this.baseDir);
          document = parsed.document;
          // A map holding secret files' content is parsed at each load: a file may change alone.
          this.lastParsed = parsed.secretFiles === 0 ? { digest: loaded, document } : undefined;
        }
      } catch (error) {
        if (!this.readFailed(error)) this.readDone(identity, false);
        throw error;
      }
      this.lastLoaded = loaded;
      this.lastWritten = undefined;
      this.readDone(identity, true);
      return document;
    });
  }

  /** The file's text; throws the ConfigError of a file that cannot be read. */
  private readText(): string {
    try {
      return readFileSync(this.file, 'utf8');
    } catch (error) {
      throw unreadableFile(resolve(this.file), error);
    }
  }

  /** The source's health as its listener hears it: a passing read failure, else the watch's trouble, else good. */
  private report(): void {
    this.listener?.onHealth?.(this.readError ?? this.watchError);
  }

  /**
   * A read that did not fail for a passing reason: the file could be read (`good`: into a document;
   * else one the holder rejects, or no file). Ends a passing failure's outage. Otherwise a good
   * read is a good look when the file is not watched; a watched file's looks are its watch's and
   * the periodic ones.
   */
  private readDone(identity: string | undefined, good: boolean): void {
    this.identityRead = identity;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.retryMs = 0;
    const failing = this.readError !== null;
    this.readError = null;
    if (failing || (good && !this.watchEnabled)) this.report();
  }

  /**
   * When `error` is a read that failed for a passing reason: says so (the source is down) and reads
   * again on a timer until it can (the map in force meanwhile stays); true. Else false.
   */
  private readFailed(error: unknown): boolean {
    const why = sourceUnreadable(error);
    if (why === undefined) return false;
    this.readError = new Error(`${why}; read again after ${this.timing.retryFirstMs / 1000} s, then less often (at most ${this.timing.retryMaxMs / 1000} s apart), until it can be`, { cause: error });
    this.report();
    if (this.retryTimer === undefined) this.scheduleRetry();
    return true;
  }

  private scheduleRetry(): void {
    if (this.listener === undefined) return;
    this.retryMs = this.retryMs === 0 ? this.timing.retryFirstMs : Math.min(this.retryMs * 2, this.timing.retryMaxMs);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.retry();
    }, this.retryMs);
    this.retryTimer.unref();
  }

  /**
   * Reads the file again after a passing failure. Still failing so: later, and nothing said (the
   * outage was reported). Readable (or failing for a reason an edit cures): the listener is told of
   * a change, and its reload reads the file and puts the map in force, or rejects it.
   */
  private retry(): void {
    if (this.listener === undefined) return;
    try {
      readStoreMapFile(this.file, this.baseDir);
    } catch (error) {
      if (sourceUnreadable(error) !== undefined) {
        this.scheduleRetry();
        return;
      }
    }
    this.listener.onChange();
  }

  watch(onChange: () => void, onHealth?: (error: Error | null) => void): () => void {
    const listener: FileSourceListener = { onChange, onHealth };
    this.listener = listener;
    this.watchError = null;
    const closers: Array<() => void> = [];
    const stop = (): void => {
      for (const close of closers) close();
      if (this.listener !== listener) return;
      this.listener = undefined;
      this.stopWatch = undefined;
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    };
    this.stopWatch?.();
    this.stopWatch = stop;
    this.removingTemps = this.removeStaleTempsNow();
    // A read before the watch (a reload's) that failed for a passing reason is read again from now.
    if (this.readError !== null && this.retryTimer === undefined) this.scheduleRetry();
    if (!this.watchEnabled) {
      // Not watched, the file is looked at only when it is read (start-up, SIGHUP, a failover, and
      // again after a read that failed for a passing reason): each read is a look. Told nothing,
      // the source's health would read as down for ever, its last good look never.
      if (this.lastLoaded !== undefined || this.readError !== null) this.report();
      return stop;
    }
    let timer: NodeJS.Timeout | undefined;
    closers.push(() => clearTimeout(timer));
    // The events of a failover mailfront wrote itself: the file holds what the holder has from
    // the write. Told as a change, the reload would read and parse it all again (0.5 s of a
    // blocked event loop at 500 stores), to find the same map.
    const notify = (): void => {
      if (this.lastWritten !== undefined && this.listener === listener) {
        const identity = fileIdentity(this.file);
        let text: string | undefined;
        try {
          text = readFileSync(this.file, 'utf8');
        } catch {
          // Told as a change: the reload's read says what is wrong.
        }
        if (text !== undefined && digest(text) === this.lastWritten) {
          this.identityRead = identity;
          return;
        }
      }
      onChange();
    };
    // Editors write in several steps; read once they are done.
    const changed = (): void => {
      clearTimeout(timer);
      timer = setTimeout(notify, 100);
    };
    const unwatched = (error: unknown): void => {
      if (this.listener !== listener) return;
      this.watchError = new Error(`${this.file} is no longer watched: ${error instanceof Error ? error.message : String(error)}`);
      this.report();
    };
    // A symbolic link (/etc/mailfront/stores.yaml -> /var/lib/mailfront/stores.yaml) is watched
    // twice: its own folder for the link being replaced, and its target's folder for edits of
    // the file (they raise no event in the link's folder). A link on the way may be replaced
    // rather than the file's own: a Kubernetes ConfigMap is stores.yaml -> ..data/stores.yaml,
    // ..data -> ..<timestamp>, and an update points ..data at a new timestamped folder (an event
    // named "..data", not "stores.yaml") and removes the old one with the target's watch on it.
    // So every event of either watch resolves the link again, and once it names another file
    // that file's folder is watched instead, and the file read again.
    let linkWatcher: FSWatcher | undefined;
    let target: { readonly file: string; readonly watcher: FSWatcher } | undefined;
    closers.push(() => {
      linkWatcher?.close();
      target?.watcher.close();
    });
    /** Watches the folder of the file the link names now; true when that is another file than before. */
    const watchTarget = (): boolean => {
      const file = symlinkTarget(this.file);
      if (file === target?.file) return false;
      target?.watcher.close();
      target = undefined;
      if (file !== undefined) {
        const watcher = watchFolder(file);
        // No error is raised for a removed folder on Linux (its watch hears its removal, as an
        // event, and then nothing); one that is (an inotify queue overflow, say): resolve again.
        watcher.on('error', (error) => {
          if (target?.watcher !== watcher) return;
          watcher.close();
          target = undefined;
          try {
            watchTarget();
          } catch {
            // Reported below.
          }
          changed();
          if (target === undefined) unwatched(error);
        });
        target = { file, watcher };
      }
      return true;
    };
    const repoint = (): void => {
      try {
        if (watchTarget()) changed();
      } catch (error) {
        unwatched(error);
      }
    };
    /** A watch of `file`'s folder: an event naming `file` is a change; every event resolves the link again. */
    const watchFolder = (file: string): FSWatcher =>
      watch(dirname(file), { persistent: false }, (_event, name) => {
        if (name === null || name === basename(file)) changed();
        repoint();
      });
    // Besides the watch, whose events may be lost or end: a look at the file's identity now and
    // then. A change no event told of is read as one; each look that finds the file is a good one
    // (while the watch works). Not while a read failed for a passing reason: the retries read it.
    if (this.timing.checkIntervalMs > 0) {
      const look = setInterval(() => {
        if (this.listener !== listener || this.readError !== null || this.lastLoaded === undefined) return;
        void stat(this.file, { bigint: true }).then(
          (found) => {
            if (this.listener !== listener || this.readError !== null) return;
            if (identityOf(found) !== this.identityRead) changed();
            else this.report();
          },
          () => {
            // Gone (a rename on its way, a removal the watch heard): changed unless it was gone at the last read too.
            if (this.listener === listener && this.identityRead !== undefined) changed();
          },
        );
      }, this.timing.checkIntervalMs);
      look.unref();
      closers.push(() => clearInterval(look));
    }
    try {
      linkWatcher = watchFolder(this.file);
      // The watch has ended (its folder removed, say): edits are seen by the looks only.
      linkWatcher.on('error', unwatched);
      watchTarget();
    } catch (error) {
      linkWatcher?.close();
      target?.watcher.close();
      // No inotify watch left, say: the file is seen to change by the looks only.
      this.watchError = new Error(`${this.file} cannot be watched: ${error instanceof Error ? error.message : String(error)}`);
      this.report();
      return stop;
    }
    this.report();
    // An edit between the last load and the watcher's start raised no event: look once now, by
    // content (the text, not parsed again: that is the load's).
    try {
      if (this.lastLoaded !== undefined && digest(this.readText()) !== this.lastLoaded) onChange();
    } catch (error) {
      // Gone now: the watcher reports its next change. Unreadable for now: read again on a timer.
      this.readFailed(error);
    }
    return stop;
  }

  /**
   * At the start of a watch (serve's start, a new store_map.file): the temporary files of writes
   * a kill cut short, which nothing else removes, under the file's lock when no writer holds it
   * (one that does removes them before its write). Whatever fails is left for the next write.
   */
  private async removeStaleTempsNow(): Promise<void> {
    try {
      const file = await realpath(this.file);
      const lock = await StoreMapFileLock.take(file, 'the removal of temporary files', 0, this.log);
      try {
        await removeStaleTemps(file, this.log);
      } finally {
        await lock.release();
      }
    } catch {
      // No file yet, another writer at work, a folder mailfront may not write to: nothing to do now.
    }
  }

  setCurrentMaster(store: string, slot: string, check?: (document: unknown) => void): Promise<SourceWrite> {
    return this.writeStore(store, check, {
      what: `the failover of store "${store}" to "${slot}"`,
      noun: 'failover',
      record: { change: 'failover', value: slot },
      edit: (storeNode, plain, doc) => {
        const before = storeNode.get('current_master');
        if (!storeNode.has('preferred_master') && before !== undefined && before !== null && String(before) !== slot) {
          // Without one, the preferred master is the current one, and would move with the failover:
          // the store would never show as backwards. The master failed over from is written as the
          // preferred one, next to current_master.
          const index = storeNode.items.findIndex((pair) => isScalar(pair.key) && pair.key.value === 'current_master');
          storeNode.items.splice(index + 1, 0, doc.createPair('preferred_master', String(before)));
          plain['preferred_master'] = String(before);
        }
        storeNode.set('current_master', slot);
        plain['current_master'] = slot;
      },
    });
  }

  setMaintenance(store: string, maintenance: boolean | string, check?: (document: unknown) => void): Promise<SourceWrite> {
    return this.writeStore(store, check, {
      what: `maintenance of store "${store}"`,
      noun: 'maintenance',
      record: { change: 'maintenance', value: maintenance !== false },
      // Off is no key at all, as in a store map that never had one.
      edit: (storeNode, plain) => {
        if (maintenance === false) {
          storeNode.delete('maintenance');
          delete plain['maintenance'];
        } else {
          storeNode.set('maintenance', maintenance);
          plain['maintenance'] = maintenance;
        }
      },
    });
  }

  /** Writes `change` of `store` to the file (a failover, maintenance): read, checked, edited and renamed into place. */
  private async writeStore(store: string, check: ((document: unknown) => void) | undefined, change: StoreFileEdit): Promise<SourceWrite> {
    // A hand edit saved while the change is written (by rename or in place) would be lost to
    // the rename of a document read before it: the file is read again just before the rename,
    // and if it changed the change is made again on what it holds now. A few times only: a
    // file rewritten without pause is no file to write to.
    for (let attempt = 1; attempt <= FAILOVER_WRITE_ATTEMPTS; attempt++) {
      const written = await this.writeStoreOnce(store, check, change);
      if (written !== undefined) return written;
    }
    throw new MailfrontError('STOREMAP_FILE_CHANGING', 'config', `${this.file} changed while ${change.what} was written, ${FAILOVER_WRITE_ATTEMPTS} times in a row; no ${change.noun} written (edit the file by hand or ${change.noun === 'failover' ? 'fail over' : 'switch maintenance'} through mailfront, not both at once)`);
  }

  /**
   * One read-edit-write of a change, with the file's lock held from before the read to after the
   * rename: the file is read and parsed once, its document checked (`check`), edited and written,
   * and handed out as written. Undefined (nothing written) when the file changed meanwhile.
   */
  private async writeStoreOnce(store: string, check: ((document: unknown) => void) | undefined, change: StoreFileEdit): Promise<SourceWrite | undefined> {
    // The file itself, not a symbolic link to it: the temporary file is written next to the
    // file and renamed onto it. Renamed onto the link, it would replace the link with a file of
    // its own, and the file the link named would no longer be the map in force.
    let file: string;
    try {
      file = await realpath(this.file);
    } catch (error) {
      throw unreadableFile(resolve(this.file), error);
    }
    // Another process writing the file (an instance sharing it) reads, changes and renames in
    // turn with this one: without the lock, the later rename dropped the earlier's change, both
    // answered as written.
    const lock = await StoreMapFileLock.take(file, change.what, this.timing.lockWaitMs, this.log);
    try {
      await removeStaleTemps(file, this.log);
      return await this.writeLocked(file, store, check, change, lock);
    } finally {
      await lock.release();
    }
  }

  /** The read-edit-write of writeStoreOnce, `lock` held. */
  private async writeLocked(file: string, store: string, check: ((document: unknown) => void) | undefined, change: StoreFileEdit, lock: StoreMapFileLock): Promise<SourceWrite | undefined> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      throw unreadableFile(resolve(this.file), error);
    }
    // As a load parses it (a file that is no store map is refused before anything is written).
    // Each step a turn of the event loop of its own (at 5,000 stores the parse takes some 0.7 s,
    // the check 0.1 s, the text to write 0.2 s): other sessions are served between them.
    const { yaml: doc, document } = parseStoreMap(text, this.file, this.baseDir);
    await nextTurn();
    check?.(document);
    await nextTurn();
    // By the name the map was read with: an unquoted `101:` is the number 101 to the document.
    const storeNode = valueNamed(doc.get('stores'), store, this.file);
    // The plain document, edited alike: what the file holds once written, without reading it back.
    const plain = (document as { stores?: Record<string, Record<string, unknown> | undefined> }).stores?.[store];
    if (!isMap(storeNode) || plain === undefined) throw new MailfrontError('UNKNOWN_STORE', 'no-route', `store "${store}" is not in ${this.file}`);
    // Editing the parsed document keeps the operator's comments and layout.
    change.edit(storeNode, plain, doc);
    const written = doc.toString();
    // Named per write as well as per process: two writes never share a temporary file.
    const temp = join(dirname(file), `.${basename(file)}.${process.pid}.${++this.writes}.tmp`);
    let groupLost: { readonly gid: number; readonly err: unknown; readonly now: number | undefined } | undefined;
    let recorded: { readonly id: string; readonly writes: readonly RecordedWrite[]; readonly undo: () => Promise<void> } | undefined;
    try {
      // Created with the old file's permissions, not the umask's: a store map holding a password
      // inline must not become readable by all with a failover (or any change written here). And
      // owned as the old file was, as far as this process may: a map the operator's tooling owns
      // must not become mailfront's.
      const { mode, uid, gid } = await stat(file);
      const handle = await open(temp, 'w', mode & 0o7777);
      try {
        await handle.writeFile(written);
        // Without the right to give a file away (not root), the group at least, which a member may
        // set, so that the mode means the same people as before. Owner first: a change of owner
        // clears set-ID bits. Not even the group (a group mailfront is no member of, a system call
        // filter refusing chown): the file is written all the same, a failover must not wait on
        // its group, but the people the mode lets read it are no longer the same. Told once the
        // file is in place.
        await handle
          .chown(uid, gid)
          .catch(() => handle.chown(-1, gid))
          .catch(async (err: unknown) => {
            const now = await handle.stat().then((s) => s.gid, () => undefined);
            if (now !== gid) groupLost = { gid, err, now };
          });
        await handle.chmod(mode & 0o7777);
        // On disk before the rename: after a power loss the rename may be kept and data not yet
        // written dropped, an empty or truncated store map in place of the old one.
        await handle.sync();
      } catch (error) {
        await handle.close().catch(() => undefined);
        throw error;
      }
      await handle.close();
      // Read last, as close to the rename as may be: by content, which a save within the same
      // timestamp tick changes too. (A hand edit between this read and the rename is still lost;
      // the window is two system calls wide, not a read, a parse and a write.) A lock broken
      // meanwhile (held past STOREMAP_LOCK_STALE_MS) is another writer's now: written again.
      // Recorded before the rename, so that an instance reading the renamed file finds the record.
      recorded = await this.record(file, store, change.record);
      const unchanged = (await lock.held()) && (await realpath(this.file).catch(() => undefined)) === file && (await readFile(file, 'utf8').catch(() => undefined)) === text;
      if (!unchanged) {
        await rm(temp, { force: true });
        await recorded?.undo();
        return undefined;
      }
      await rename(temp, file);
    } catch (error) {
      // A write that failed (a full disk, an immutable or read-only file) leaves no temporary
      // file behind: each failover tried would add one to the folder.
      await rm(temp, { force: true }).catch(() => undefined);
      await recorded?.undo();
      throw fileWriteError(error, file, change.what);
    }
    try {
      // The rename on disk before the change is answered as written.
      await syncFolder(dirname(file));
    } catch (error) {
      // In the file, not known to be on disk: its watch's read puts it in force (no lastWritten).
      const code = (error as NodeJS.ErrnoException).code ?? String(error);
      throw new MailfrontError('STOREMAP_WRITE_UNCONFIRMED', 'local-resources', `${change.what} unconfirmed: ${file} holds it, but its folder could not be synced to disk (${code}: ${FILE_WRITE_FAILURES.get(code)?.meaning ?? (error instanceof Error ? error.message : code)}); a power loss may undo it. It is put in force when the file is next read (at once when watched); see \`mailfront stores\` and the file before trying again`, { cause: error });
    }
    this.lastWritten = digest(written);
    this.lastLoaded = this.lastWritten;
    if (groupLost !== undefined) {
      const err = groupLost.err instanceof Error ? groupLost.err.message : String(groupLost.err);
      // One event for every change written here (its name from when failovers were the only one).
      const { gid } = groupLost;
      this.log?.warn({ event: 'storemap.failover_group_not_kept', file, gid, group: groupLost.now, err, change: change.noun }, `${change.noun} written to ${file} without its group ${gid} (the file's group is now ${groupLost.now ?? 'unknown'}): ${err}; give the file its group back (chgrp) if others read it`);
    }
    return { document, ...(recorded !== undefined ? { recorded: { id: recorded.id, writes: recorded.writes } } : {}) };
  }

  /**
   * Records `change` of `store` in `.<name>.written` beside `file` (see RecordedWrite), the file's
   * lock held: the records kept, this one added, written to a temporary file renamed into place.
   * Returns its id, the records as written and how to put the ones before back (the change was not
   * renamed into place after all). A record that cannot be written is none: a change taken back
   * later is then told as undone, never the write refused for it. Not synced: a record lost to a
   * power loss is the same.
   */
  private async record(file: string, store: string, change: StoreFileEdit['record']): Promise<{ readonly id: string; readonly writes: readonly RecordedWrite[]; readonly undo: () => Promise<void> } | undefined> {
    const path = recordPath(file);
    const before = await readFile(path, 'utf8').catch(() => undefined);
    const entry: RecordedWrite = { id: randomUUID(), store, ...change, at: new Date().toISOString(), writer: { id: WRITER_ID, pid: process.pid, host: hostname() } };
    const now = Date.now();
    const writes = [...parseRecordedWrites(before).filter((w) => now - Date.parse(w.at) < RECORDED_WRITES_KEEP_MS), entry].slice(-RECORDED_WRITES_KEEP);
    const replace = async (text: string): Promise<void> => {
      const temp = join(dirname(file), `.${basename(file)}.written.${process.pid}.${++this.writes}.new`);
      try {
        await writeFileAt(temp, text);
        await rename(temp, path);
      } catch (error) {
        await rm(temp, { force: true }).catch(() => undefined);
        throw error;
      }
    };
    try {
      await replace(`${JSON.stringify({ writes })}\n`);
    } catch {
      return undefined;
    }
    const undo = (): Promise<void> => (before === undefined ? rm(path, { force: true }) : replace(before)).catch(() => undefined);
    return { id: entry.id, writes, undo };
  }

  /** The changes recorded beside the file (see RecordedWrite), oldest first; none when there is no record or it cannot be read. */
  async recordedWrites(): Promise<readonly RecordedWrite[]> {
    const file = await realpath(this.file).catch(() => undefined);
    if (file === undefined) return [];
    return parseRecordedWrites(await readFile(recordPath(file), 'utf8').catch(() => undefined));
  }

  async close(): Promise<void> {
    this.stopWatch?.();
    // A stop right after the start must not leave the lock the removal of temporary files holds.
    await this.removingTemps;
  }
}

/** Resolves at the event loop's next turn, once what waits for I/O has run. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The value of the entry of a YAML mapping whose key reads as `name` (an unquoted `101` as "101").
 * Two such keys (`101:` and `"101":`, added since the map in force was read) name no entry: the
 * map would be read from the last one, and the one edited would be a guess.
 */
function valueNamed(map: unknown, name: string, file: string): unknown {
  if (!isMap(map)) return undefined;
  const named = map.items.filter((pair) => String(isScalar(pair.key) ? pair.key.value : pair.key) === name);
  if (named.length > 1) throw new MailfrontError('STOREMAP_DUPLICATE_STORE', 'config', `store "${name}" has ${named.length} keys in ${file} (an unquoted number and the same name quoted, say); no failover written`);
  return named[0]?.value;
}

/**
 * The file a symbolic link at `file` names (all links resolved), or undefined when `file` is no
 * link (a folder on the way may be one: that folder is the one watched already) or names nothing.
 */
function symlinkTarget(file: string): string | undefined {
  let target: string;
  try {
    target = realpathSync(file);
  } catch {
    // A dangling link or no file yet: the link's folder hears it being made.
    return undefined;
  }
  return target === join(realpathSync(dirname(resolve(file))), basename(file)) ? undefined : target;
}

function first(value: unknown): string | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  return undefined;
}

/**
 * A mailfrontMaintenance value as the store map's `maintenance`: TRUE alone is on with the default
 * text and FALSE is off (as LDAP's Boolean syntax spells them), any other text the reason.
 */
function maintenanceFromLdap(value: string): boolean | string {
  // LDAP's Boolean syntax is TRUE and FALSE; true, False, ... are meant the same by whoever wrote them.
  const word = value.toUpperCase();
  return word === 'TRUE' ? true : word === 'FALSE' ? false : value;
}

function lowerDn(dn: string): string {
  return dn.replace(/\s*,\s*/g, ',').toLowerCase();
}

/** Whether the DN `dn` is `base` or below it, both lowerDn()'s. */
function withinDn(dn: string, base: string): boolean {
  return dn === base || dn.endsWith(`,${base}`);
}

const SLOT_PORTS = [
  ['mailfrontImapPort', 'imap_port'],
  ['mailfrontImapsPort', 'imaps_port'],
  ['mailfrontPop3Port', 'pop3_port'],
  ['mailfrontPop3sPort', 'pop3s_port'],
  ['mailfrontSievePort', 'sieve_port'],
] as const;

/**
 * Turns mailfrontStore / mailfrontSlot entries into a store-map document. Two store entries
 * with one name (cn, which LDAP matches regardless of case) make none: which of them counts
 * would depend on the order of the search's answer, and a failover could be written to either.
 */
export function storeEntriesToDocument(entries: ReadonlyArray<Record<string, unknown> & { dn: string }>): unknown {
  const stores: Record<string, Record<string, unknown>> = {};
  const storeByDn = new Map<string, Record<string, unknown>>();
  /** Store entries' DNs by lower-cased name. */
  const dnsByName = new Map<string, string[]>();
  const isClass = (e: Record<string, unknown>, name: string): boolean => {
    const classes = e['objectClass'];
    const list = Array.isArray(classes) ? classes : [classes];
    return list.some((c) => String(c).toLowerCase() === name.toLowerCase());
  };
  for (const entry of entries) {
    if (!isClass(entry, 'mailfrontStore')) continue;
    const name = first(entry['cn']) ?? '';
    const store: Record<string, unknown> = { current_master: first(entry['mailfrontCurrentMaster']), slots: {} };
    const preferred = first(entry['mailfrontPreferredMaster']);
    if (preferred !== undefined) store['preferred_master'] = preferred;
    const profile = first(entry['mailfrontBackendProfile']);
    if (profile !== undefined) store['backend_profile'] = profile;
    const maintenance = first(entry['mailfrontMaintenance']);
    if (maintenance !== undefined) store['maintenance'] = maintenanceFromLdap(maintenance);
    stores[name] = store;
    storeByDn.set(lowerDn(entry.dn), store);
    const dns = dnsByName.get(name.toLowerCase()) ?? [];
    dnsByName.set(name.toLowerCase(), [...dns, entry.dn]);
  }
  // Sorted, so that the same entries give the same message whatever the order of the answer.
  const duplicates = [...dnsByName.entries()]
    .filter(([, dns]) => dns.length > 1)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([name, dns]) => `store "${name}" has ${dns.length} entries: ${dns.sort((a, b) => (lowerDn(a) < lowerDn(b) ? -1 : 1)).join(' and ')}`);
  if (duplicates.length > 0) throw new MailfrontError('STOREMAP_DUPLICATE_STORE', 'config', `${duplicates.join('; ')} (a store name, which LDAP matches regardless of case, must be on one mailfrontStore entry)`);
  for (const entry of entries) {
    if (!isClass(entry, 'mailfrontSlot')) continue;
    const parentDn = lowerDn(entry.dn).replace(/^(?:[^,\\]|\\.)*,/, '');
    const store = storeByDn.get(parentDn);
    if (store === undefined) continue;
    const slot: Record<string, unknown> = { host: first(entry['mailfrontHost']) };
    for (const [attribute, key] of SLOT_PORTS) {
      const value = first(entry[attribute]);
      if (value !== undefined) slot[key] = Number(value);
    }
    (store['slots'] as Record<string, unknown>)[first(entry['cn']) ?? ''] = slot;
  }
  return { stores };
}

/** When an LDAP store-map source reads the whole map, and what its polls between look at. */
export interface LdapSourceTiming {
  /**
   * How often a poll reads every entry, whatever the polls between found: a store or slot entry
   * deleted changes no other entry's modifyTimestamp, and is seen within this (a change to an
   * entry at once, see RecentEntries).
   */
  readonly fullReadIntervalMs: number;
  /** How far before the newest modifyTimestamp of a whole read the polls between look (see LDAP_SOURCE_TIMING). */
  readonly recentMarginMs: number;
}

/**
 * A whole read every 30 s: at 5,000 stores one took 250-330 ms of mailfront's CPU, so at every
 * poll (every second by default) a quarter of a core, every 30 s about 1 %.
 *
 * The polls between look from 10 s before the newest modifyTimestamp of the last whole read: the
 * timestamps have a granularity of a second, servers of a fleet (the providers of a
 * multi-provider setup, each stamping what is written to it) differ by a few, and a change
 * replicated late may be stamped before one that came first. A change stamped earlier still is
 * seen at the next whole read. Once the newest timestamp has stayed the newest for a whole-read
 * interval, they look from the second after it (a change from then on is stamped later) where
 * the server has shown that it searches by modifyTimestamp, else from its second: a store map
 * imported in a few seconds would otherwise be read again (its timestamps) at each poll until
 * the next change.
 */
const LDAP_SOURCE_TIMING: LdapSourceTiming = { fullReadIntervalMs: 30_000, recentMarginMs: 10_000 };

/**
 * What the polls between two whole reads compare with: the entries whose modifyTimestamp is at
 * or after `since` (the newest of the read, less recentMarginMs), by DN, with their version. A
 * search for those entries that finds the same DNs in the same versions finds no change: a change
 * to any entry (a failover, by mailfront or another tool) or an entry added stamps it anew, and a
 * deletion of one of them leaves one fewer. It holds one entry at least (the newest) until the
 * server has answered such a search with the entries expected, so a server that cannot search by
 * modifyTimestamp (an answer without the newest) is read whole at each poll.
 */
interface RecentEntries {
  /** The connection of the whole read: after a reconnect (maybe to another server of the fleet) the next poll reads the whole map. */
  readonly client: Client;
  /** The fingerprint of the read's document: the polls compare with the whole read the holder has (see lastFingerprint). */
  readonly fingerprint: string;
  /** When (performance.now()) the whole read began. */
  readonly readAt: number;
  /** The filter value: a GeneralizedTime in UTC, whole seconds. */
  readonly since: string;
  /** The version of each entry at or after `since`, by lower-cased DN (see entryVersion). */
  readonly versions: ReadonlyMap<string, string>;
  /** The newest modifyTimestamp (ms since the epoch), and since when (performance.now()) whole reads of this connection have found it the newest. */
  readonly newestMs: number;
  readonly newestSince: number;
}

/** Milliseconds since the epoch of a GeneralizedTime (RFC 4517 §3.3.13: `YYYYMMDDHH[MM[SS]][(.|,)fraction](Z|±HHMM)`), or undefined. */
export function generalizedTimeMs(value: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:[.,](\d+))?(Z|[+-]\d{4})$/.exec(value);
  if (m === null) return undefined;
  const [, year, month, day, hour, minute = '00', second = '00', fraction = '', zone] = m;
  const offsetMinutes = zone === 'Z' ? 0 : (zone!.startsWith('-') ? -1 : 1) * (Number(zone!.slice(1, 3)) * 60 + Number(zone!.slice(3, 5)));
  const ms = Date.UTC(Number(year), Number(month) - 1, Number(day), Number(hour), Number(minute), Number(second), Math.floor(Number(`0.${fraction || '0'}`) * 1000));
  return Number.isNaN(ms) ? undefined : ms - offsetMinutes * 60_000;
}

/** A time as a GeneralizedTime in UTC, whole seconds (`20261205224600Z`). */
function generalizedTime(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19).replace(/[-T:]/g, '')}Z`;
}

/** The one value of the operational attribute `name` of `entry` (a server may spell it with other capitals). */
function operational(entry: Record<string, unknown>, name: string): string | undefined {
  if (name in entry) return first(entry[name]);
  const lower = name.toLowerCase();
  for (const key of Object.keys(entry)) if (key.toLowerCase() === lower) return first(entry[key]);
  return undefined;
}

/**
 * Which change of an entry a read saw: its entryCSN (OpenLDAP's change sequence number, to the
 * microsecond), else its modifyTimestamp (to the second: two changes within one second look alike).
 */
function entryVersion(entry: Record<string, unknown>): string | undefined {
  return operational(entry, 'entryCSN') ?? operational(entry, 'modifyTimestamp');
}

/** The operational attributes the reads ask for (never sent unless named). */
const VERSION_ATTRIBUTES = ['modifyTimestamp', 'entryCSN'];

/**
 * The recent entries of a whole read, begun at `readAt` (performance.now()) and `readAtMs` (the
 * wall clock's): those stamped at or after the newest modifyTimestamp less
 * `timing.recentMarginMs`; once it has been the newest for fullReadIntervalMs (`previous` being
 * the recent entries of the whole read before), from the second after it where `searchesByTime`,
 * else from its own second. Undefined, so that the next poll reads the whole map, when an entry
 * has no modifyTimestamp the source may read (a server that keeps none, an ACL that hides it) or
 * there is no entry; and, on a server that keeps no entryCSN, while the newest modifyTimestamp is
 * within a second and the margin of the read's time by mailfront's clock (a change within its
 * second would look like none).
 */
function recentEntries(entries: ReadonlyArray<Record<string, unknown> & { dn: string }>, at: { readonly client: Client; readonly fingerprint: string; readonly readAt: number; readonly readAtMs: number }, previous: RecentEntries | undefined, searchesByTime: boolean, timing: LdapSourceTiming): RecentEntries | undefined {
  const times: number[] = [];
  /** Times by their text: entries written together share a second. */
  const parsed = new Map<string, number | undefined>();
  let newest = -Infinity;
  let precise = true;
  for (const entry of entries) {
    const stamp = operational(entry, 'modifyTimestamp');
    if (stamp === undefined) return undefined;
    let ms = parsed.get(stamp);
    if (ms === undefined && !parsed.has(stamp)) parsed.set(stamp, (ms = generalizedTimeMs(stamp)));
    if (ms === undefined) return undefined;
    times.push(ms);
    if (ms > newest) newest = ms;
    if (precise && operational(entry, 'entryCSN') === undefined) precise = false;
  }
  if (times.length === 0) return undefined;
  if (!precise && at.readAtMs < Math.floor(newest / 1000) * 1000 + 1000 + timing.recentMarginMs) return undefined;
  const newestSince = previous !== undefined && previous.client === at.client && previous.newestMs === newest ? previous.newestSince : at.readAt;
  const settled = at.readAt - newestSince >= timing.fullReadIntervalMs;
  const sinceMs = Math.floor((settled ? newest : newest - timing.recentMarginMs) / 1000) * 1000 + (settled && searchesByTime ? 1000 : 0);
  const versions = new Map<string, string>();
  for (const [i, entry] of entries.entries()) if (times[i]! >= sinceMs) versions.set(lowerDn(entry.dn), entryVersion(entry)!);
  return { client: at.client, fingerprint: at.fingerprint, readAt: at.readAt, since: generalizedTime(sinceMs), versions, newestMs: newest, newestSince };
}

/**
 * The parts of an OpenLDAP change sequence number (`20261206004219.500954Z#000000#001#000000`:
 * the time to the microsecond, a count within it, the server id, a count within the operation),
 * or undefined. Each server id's CSNs come from that server's clock and only grow.
 */
export function parseCsn(value: string): { readonly time: string; readonly count: number; readonly sid: number; readonly mod: number } | undefined {
  const m = /^(\d{14})(?:\.(\d{1,6}))?Z#([0-9a-f]{1,8})#([0-9a-f]{1,8})#([0-9a-f]{1,8})$/i.exec(value.trim());
  if (m === null) return undefined;
  return { time: `${m[1]}.${(m[2] ?? '').padEnd(6, '0')}`, count: parseInt(m[3]!, 16), sid: parseInt(m[4]!, 16), mod: parseInt(m[5]!, 16) };
}

/** Orders two CSNs as slapd's csnOrderingMatch does (time, count, server id, mod); an unparseable one sorts first. */
export function compareCsn(a: string, b: string): number {
  const x = parseCsn(a);
  const y = parseCsn(b);
  if (x === undefined || y === undefined) return x === undefined ? (y === undefined ? 0 : -1) : 1;
  if (x.time !== y.time) return x.time < y.time ? -1 : 1;
  return x.count - y.count || x.sid - y.sid || x.mod - y.mod;
}

/** A contextCSN's values by server id (the newest where one is given twice), or undefined when there is none or one is no CSN. */
export function contextCsnsBySid(values: readonly string[]): ReadonlyMap<number, string> | undefined {
  const bySid = new Map<number, string>();
  for (const value of values) {
    const csn = parseCsn(value);
    if (csn === undefined) return undefined;
    const known = bySid.get(csn.sid);
    if (known === undefined || compareCsn(value, known) > 0) bySid.set(csn.sid, value);
  }
  return bySid.size === 0 ? undefined : bySid;
}

/**
 * Why a read whose store entries have the entryCSNs `read` (by lower-cased DN) and whose server's
 * contextCSN is `context` is behind the map in force, whose entries had the entryCSNs `inForce`:
 * an entry in force that is older on the server, or missing there, while the server has not got
 * the change that made it what it is in force (its server id's contextCSN is older than that
 * change's entryCSN: a replica that has not caught up). An entry older on a server that has got
 * that change was written again there since, by a server whose clock is behind: not behind.
 * Without contextCSN, an entry older on the server is behind, one missing is taken as deleted.
 * Undefined when the read is not behind, or it cannot be told (a read without entryCSN). A store
 * entry deleted, and still there on a lagging server, cannot be told from one added there.
 */
export function behindMapInForce(inForce: ReadonlyMap<string, string>, read: ReadonlyMap<string, string> | undefined, context: ReadonlyMap<number, string> | undefined): { readonly dn: string; readonly inForce: string; readonly server: string } | undefined {
  if (read === undefined) return undefined;
  for (const [dn, csn] of inForce) {
    const now = read.get(dn);
    // Most are the same: no parse.
    if (now === csn || (now !== undefined && compareCsn(now, csn) >= 0)) continue;
    if (context === undefined) {
      if (now !== undefined) return { dn, inForce: csn, server: now };
      continue;
    }
    const sid = parseCsn(csn)?.sid;
    if (sid === undefined) continue;
    const seen = context.get(sid);
    if (seen === undefined || compareCsn(seen, csn) < 0) return { dn, inForce: csn, server: `${now ?? 'no entry'} (contextCSN ${seen ?? `without server id ${sid.toString(16).padStart(3, '0')}`})` };
  }
  return undefined;
}

/**
 * A store entry whose entryCSN is newer than the contextCSN `context` read after it (its server
 * id's value; without one, the newest): that contextCSN is not the one of the database that holds
 * the entry (a database glued below, whose own the bind account may not read, or below base_dn),
 * and does not move when the entry changes. Undefined when every entry is covered.
 */
export function entryAfterContext(csns: ReadonlyMap<string, string>, context: ReadonlyMap<number, string>): { readonly dn: string; readonly csn: string; readonly context: string } | undefined {
  const newest = [...context.values()].reduce((a, b) => (compareCsn(a, b) >= 0 ? a : b));
  for (const [dn, csn] of csns) {
    const sid = parseCsn(csn)?.sid;
    const seen = (sid === undefined ? undefined : context.get(sid)) ?? newest;
    if (compareCsn(csn, seen) > 0) return { dn, csn, context: seen };
  }
  return undefined;
}

/**
 * What the polls between two whole reads compare with on a server that keeps contextCSN (OpenLDAP
 * with syncprov, or a syncrepl consumer) where the bind account may read it on the naming
 * context's entry: its values at the whole read (or the last poll), by server id, and every store
 * entry's entryCSN. A poll reads the contextCSN (one base search); when a server id's value moved,
 * it asks for the store entries whose entryCSN is at or after that server id's value before:
 * whatever that server wrote since, in whatever order it reached this one (a syncrepl refresh
 * after a cut sends entries in database order, a healed mirror sends what the other wrote while
 * apart, a provider's clock may be ahead or behind), has an entryCSN at or after it, as each
 * server id's CSNs come from one clock. slapd moves contextCSN only once the change is in place (a
 * consumer at the end of a refresh, or after each change it is sent after it). A new server id is
 * read whole.
 */
interface ContextPolls {
  readonly client: Client;
  readonly fingerprint: string;
  readonly readAt: number;
  /** The naming context's DN, whose entry holds contextCSN. */
  readonly contextDn: string;
  /** contextCSN by server id, as of the whole read or the last poll that found no change. */
  baseline: ReadonlyMap<number, string>;
  /** Every store entry's entryCSN, by lower-cased DN. */
  readonly versions: ReadonlyMap<string, string>;
}

/**
 * A whole read that found a store entry newer than the contextCSN read after it (see
 * entryAfterContext): either that contextCSN is another database's (a glued one's parent), which
 * does not move when a store entry changes, or the server is a syncrepl consumer that has written
 * the entry and not yet its contextCSN (a refresh, after a cut or at a mirror's start, moves it at
 * its end; a change sent on its own, right after). It cannot be told at once, so until the next
 * whole read the polls go by modifyTimestamp (RecentEntries), and each reads the contextCSN too:
 * once it covers every store entry of the read, the map is read whole, and the polls go by it.
 */
interface ContextLagging {
  readonly client: Client;
  /** The naming context's DN, whose entry holds contextCSN. */
  readonly contextDn: string;
  /** Every store entry's entryCSN at the whole read, by lower-cased DN. */
  readonly csns: ReadonlyMap<string, string>;
}

/** The entryCSN of every entry, by lower-cased DN; undefined when one has none (or none a CSN). */
function entryCsns(entries: ReadonlyArray<Record<string, unknown> & { dn: string }>): Map<string, string> | undefined {
  const csns = new Map<string, string>();
  for (const entry of entries) {
    const csn = operational(entry, 'entryCSN');
    if (csn === undefined || parseCsn(csn) === undefined) return undefined;
    csns.set(lowerDn(entry.dn), csn);
  }
  return csns;
}

/**
 * The values of `lastusn` in a root DSE entry (389 Directory Server's USN plugin: the last update
 * sequence number each backend gave, `lastusn;<backend>`, or one `lastusn` with
 * nsslapd-entryusn-global), by lower-cased attribute name; undefined when there is none or one is
 * no integer (-1: nothing written yet).
 */
export function lastUsns(entry: Record<string, unknown>): ReadonlyMap<string, bigint> | undefined {
  const values = new Map<string, bigint>();
  for (const [key, raw] of Object.entries(entry)) {
    // ldapts gives an attribute asked for and absent (the plain lastusn, per backend) as [].
    if (!/^lastusn(?:;|$)/i.test(key) || (Array.isArray(raw) && raw.length === 0)) continue;
    const value = first(raw);
    if (value === undefined || !/^-?\d{1,20}$/.test(value)) return undefined;
    values.set(key.toLowerCase(), BigInt(value));
  }
  return values.size === 0 ? undefined : values;
}

/** The lastusn values a poll or whole read found, and when (performance.now(), once answered). */
export interface UsnSample {
  readonly at: number;
  readonly values: ReadonlyMap<string, bigint>;
}

/**
 * The samples of one connection to keep once `now` is read after `samples` (oldest first), and
 * the entryusn from which a poll asks for the store entries: that after the values of the newest
 * sample at least `marginMs` old, where one moved since (null: none moved, nothing to ask).
 * Undefined, all but `now` dropped, when it cannot be told: no sample is that old yet, or a value
 * went back, appeared or went away (another server behind the URL, a restore).
 *
 * Why a sample that old and not the last: 389 DS moves lastusn inside the write's transaction,
 * before the commit (the USN plugin is a betxn plugin), so the write with the last USN a poll sees
 * may not yet be visible to its search; and with one counter for all backends (global) two
 * writes may take the same USN. A write that commits within the margin of taking its USN is
 * searched for by a poll after its commit.
 */
export function usnSearchFrom(samples: readonly UsnSample[], now: UsnSample, marginMs: number): { readonly samples: UsnSample[]; readonly from: bigint | null | undefined } {
  const last = samples[samples.length - 1];
  const comparable = last !== undefined && last.values.size === now.values.size && [...now.values].every(([name, value]) => {
    const before = last.values.get(name);
    return before !== undefined && value >= before;
  });
  if (!comparable) return { samples: [now], from: undefined };
  const kept = [...samples, now];
  let reference = -1;
  for (const [i, sample] of kept.entries()) if (sample.at <= now.at - marginMs) reference = i;
  if (reference < 0) return { samples: kept, from: undefined };
  const old = kept[reference]!.values;
  let from: bigint | null = null;
  for (const [name, value] of now.values) {
    const before = old.get(name)!;
    if (value > before && (from === null || before + 1n < from)) from = before + 1n;
  }
  // Older samples are no longer needed: the reference only moves on.
  return { samples: kept.slice(reference), from };
}

/**
 * What the polls between two whole reads compare with on a 389 Directory Server with the USN
 * plugin (`lastusn` in the root DSE, an `entryusn` on every store entry the bind account may
 * read): every store entry's entryusn and routing values (see usnVersion). A poll reads lastusn
 * (one base search of the root DSE); when a value moved since the sample a margin old (see
 * usnSearchFrom), it asks for the store entries whose entryusn is at or after the next number,
 * with their routing values. USNs are the server's own, counted by
 * each server (not replicated): the polls hold to one connection (its socket: ldapts reconnects
 * on its own, maybe to another server behind the same name), and a value that goes back is read
 * whole. A deletion leaves a tombstone only the Directory Manager may search: seen at the next
 * whole read.
 */
interface UsnPolls {
  readonly client: Client;
  /** The socket of the whole read: one reconnect since, and the polls read the whole map. */
  readonly socket: unknown;
  readonly fingerprint: string;
  readonly readAt: number;
  /** Every store entry's entryusn and routing digest (see usnVersion), by lower-cased DN. */
  readonly versions: ReadonlyMap<string, string>;
}

/** The attributes of the store entries the map is made of (see storeEntriesToDocument). */
const ROUTING_ATTRIBUTES = ['objectClass', 'cn', 'mailfrontCurrentMaster', 'mailfrontPreferredMaster', 'mailfrontBackendProfile', 'mailfrontMaintenance', 'mailfrontHost', ...SLOT_PORTS.map(([a]) => a)];
const ROUTING_ATTRIBUTES_LOWER: ReadonlySet<string> = new Set(ROUTING_ATTRIBUTES.map((a) => a.toLowerCase()));

/**
 * Which change of a store entry a USN poll saw: its entryusn and a digest of its ROUTING_ATTRIBUTES'
 * values (names lower-cased, values in the order given); undefined without an entryusn. Not the
 * entryusn alone: in 389 DS multi-master replication, a change replicated after a later local
 * write to the same entry (another attribute) wins its attribute by CSN and leaves the entry the
 * local write's entryusn; the entry, written within the margin, is in every poll's answer until
 * then, and its values tell.
 */
export function usnVersion(entry: Record<string, unknown>): string | undefined {
  const usn = operational(entry, 'entryUSN');
  if (usn === undefined || !/^\d{1,20}$/.test(usn)) return undefined;
  const values: Array<[string, string[]]> = [];
  for (const [key, raw] of Object.entries(entry)) {
    const name = key.toLowerCase();
    // ldapts may give an attribute asked for and absent as []: the same as not there.
    if (!ROUTING_ATTRIBUTES_LOWER.has(name) || (Array.isArray(raw) && raw.length === 0)) continue;
    values.push([name, (Array.isArray(raw) ? raw : [raw]).map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : String(v)))]);
  }
  values.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `${usn} ${createHash('sha256').update(JSON.stringify(values)).digest('base64')}`;
}

/** The USN version (see usnVersion) of every entry, by lower-cased DN; else the DN of one without entryusn (written before the plugin was on, or one the account may not read). */
export function entryUsns(entries: ReadonlyArray<Record<string, unknown> & { dn: string }>): Map<string, string> | { readonly without: string } {
  const usns = new Map<string, string>();
  for (const entry of entries) {
    const version = usnVersion(entry);
    if (version === undefined) return { without: entry.dn };
    usns.set(lowerDn(entry.dn), version);
  }
  return usns;
}

/** The socket under an ldapts client (ldapts 8.2's own field), which a reconnect replaces. */
function socketOf(client: Client): unknown {
  return (client as unknown as { readonly socket?: unknown }).socket;
}

/**
 * The trigger of a load that puts in force what the server says, even behind the map in force:
 * `mailfront reload --accept-older-store-map`, after the directory was restored from a backup.
 * Not a SIGHUP: one comes from a certificate's renewal or a log rotation as well, and would undo
 * every failover a lagging replica has not got, draining the new masters' sessions onto the
 * demoted ones.
 */
export const ACCEPT_OLDER_TRIGGER = 'accept-older';

/** A whole read of the store map, with what says whether its server is behind the map in force. */
type LdapReading = ({ readonly document: unknown } | { readonly rejected: MailfrontError }) & {
  readonly fingerprint: string;
  readonly url: string | undefined;
  /** The store entries' entryCSNs by lower-cased DN (undefined: not every entry has one the account may read). */
  readonly csns: ReadonlyMap<string, string> | undefined;
  readonly context: ReadonlyMap<number, string> | undefined;
};

/** The filter of the store map's entries. */
const STORE_ENTRIES_FILTER = '(|(objectClass=mailfrontStore)(objectClass=mailfrontSlot))';

/** Store entries in LDAP, polled; a failover is an LDAP modify of mailfrontCurrentMaster. */
export class LdapStoreMapSource implements StoreMapSource {
  readonly description: string;
  readonly saves = 'entry';
  private client: Client | null = null;
  private readonly tls: ConnectionOptions;
  /** Bytes one read of the map may take, all pages together (store_map.ldap.max_answer_bytes). */
  private readonly maxAnswerBytes: number;
  private lastFingerprint = '';
  /** What the last load('check') would have made the last one loaded, until took() or the next check (see load()). */
  private checked: { readonly document: unknown; readonly fingerprint: string; readonly inForce: ReadonlyMap<string, string> | undefined; readonly lastFingerprint: string } | undefined;
  /** The recent entries of the last whole read, for the polls until the next (see RecentEntries), on a server without contextCSN. */
  private recent: RecentEntries | undefined;
  /** What the polls until the next whole read compare with, on a server with contextCSN (see ContextPolls). */
  private contextPolls: ContextPolls | undefined;
  /** What the polls until the next whole read compare with, on a 389 DS with the USN plugin (see UsnPolls). */
  private usnPolls: UsnPolls | undefined;
  /** Connections whose server has lastusn but a store entry without entryusn: said once each (storemap.usn_not_used). */
  private readonly usnNotUsed = new WeakSet<Client>();
  /** The lastusn samples of one connection, oldest first (see usnSearchFrom). */
  private usnSeen: { readonly client: Client; readonly socket: unknown; readonly samples: readonly UsnSample[] } | undefined;
  /** The naming context (the entry with contextCSN) of each connection's server, null where none holds the base DN. */
  private readonly contexts = new WeakMap<Client, string | null>();
  /** The last whole read found a store entry newer than the contextCSN (see ContextLagging). */
  private contextLagging: ContextLagging | undefined;
  /**
   * Connections on which the contextCSN, found behind a store entry at a whole read, then caught
   * up with it (contextCaughtUp). The next whole read that finds it behind a store entry takes it
   * for another database's for good: the polls go by modifyTimestamp
   * (storemap.context_csn_not_used). A glued stores database's parent would otherwise send the
   * polls back to its contextCSN at each of its writes, and a store change meanwhile would wait
   * for the whole read each time. Findings with no catching up between them are one refresh.
   */
  private readonly contextRecovered = new WeakSet<Client>();
  /** When a whole read on each connection first found the contextCSN behind a store entry: found so a full-read interval later too, it is taken for another database's as well (a refresh does not last that long). */
  private readonly contextFirstBehind = new WeakMap<Client, number>();
  /** The store entries' entryCSNs of the map last handed out by load(): a read behind them is refused (see behindMapInForce). */
  private inForce: ReadonlyMap<string, string> | undefined;
  /** The last server found behind the map in force: tried after the others, and while its contextCSN stays the same, not read again (see stillBehind). */
  private behind: { readonly url: string; readonly at: number; readonly context: ReadonlyMap<number, string> | undefined; readonly error: MailfrontError; readonly said: string } | undefined;
  /** The connection whose server answered a search by modifyTimestamp with the entries expected (some). */
  private searchesByTime: Client | undefined;
  /** Set by close(): a connection opened after it (by a poll in flight) is let go at once. */
  private closed = false;
  /** The URL of the server that last took our bind: the one tried first on the next connection. */
  private answered: string | undefined;
  /**
   * The load() under way, if one is: a poll waits for it. A whole read drops what the polls compare
   * with until it has read the map (see read()), and a poll meanwhile found nothing to compare
   * with and read the whole map too (at 5,000 stores a whole read takes 550 to 740 ms of CPU,
   * against the default poll interval of 1 s: a SIGHUP's read often met a poll).
   */
  private loading: Promise<unknown> | undefined;

  private readonly timing: LdapSourceTiming;

  /**
   * `ca`: store_map.ldap.ca_file's content as the caller read it; read here when not given. `log`
   * hears what a failover wrote less of than asked (no preferred master, not allowed to).
   */
  constructor(
    private readonly config: Extract<StoreMapSourceConfig, { kind: 'ldap' }>,
    ca: Buffer | undefined = config.caFile ? readCaCertificates(config.caFile, 'store_map.ldap.ca_file') : undefined,
    private readonly log?: Logger,
    timing: Partial<LdapSourceTiming> = {},
  ) {
    this.description = `ldap ${config.baseDn}`;
    this.timing = { ...LDAP_SOURCE_TIMING, ...timing };
    this.maxAnswerBytes = config.maxAnswerBytes ?? MAX_STOREMAP_LDAP_ANSWER_BYTES;
    this.tls = { minVersion: 'TLSv1.2', ...(ca ? { ca } : {}) };
  }

  /**
   * Takes over from the LDAP source this one replaces at a reload, when both read the same base
   * DN (other settings changed: urls, poll_interval_ms, ca_file or its content renewed): the
   * entryCSNs of the map in force, so that a server behind it is refused as before (compared only
   * with its own first read, a lagging replica's map was put in force by the reload, undoing the
   * failovers it has not got); the server that answered last, tried first (a new source would go
   * back to urls[0], a replica listed first); and the server found behind, tried after the
   * others. Each only when the new urls list it, and the last two only while this source knows
   * nothing of its own servers: called again as the holder puts it in place, after its check
   * read connected somewhere, it keeps what that read found (its readings are named by the
   * server it answered from). A base DN above the old one (widened to its parent) reads the
   * same entries and more: all are compared; one below it (narrowed to a subtree), those of the
   * map in force within it (the others are left out on purpose, not missing on a lagging
   * server). Any other base DN is another tree: nothing to compare its entries with.
   */
  continueFrom(previous: StoreMapSource): void {
    if (!(previous instanceof LdapStoreMapSource)) return;
    const [was, now] = [lowerDn(previous.config.baseDn), lowerDn(this.config.baseDn)];
    if (!withinDn(was, now) && !withinDn(now, was)) return;
    const inForce = previous.inForce;
    this.inForce = inForce === undefined || withinDn(was, now) ? inForce : new Map([...inForce].filter(([dn]) => withinDn(dn, now)));
    if (this.answered !== undefined || this.behind !== undefined) return;
    if (previous.answered !== undefined && this.config.urls.includes(previous.answered)) this.answered = previous.answered;
    if (previous.behind !== undefined && this.config.urls.includes(previous.behind.url)) this.behind = previous.behind;
  }

  /** Connections replaced by one to another server (see tryOthers), let go once what was asked of them is answered. */
  private readonly retiring = new Set<Client>();

  /** The connection being opened: every caller meanwhile (a poll and a load at once) waits for it. */
  private opening: Promise<Client> | null = null;

  private connection(): Promise<Client> {
    if (this.client?.isConnected) return Promise.resolve(this.client);
    // Each caller opening its own would leave all but the last one kept bound for ever.
    this.opening ??= this.open().finally(() => {
      this.opening = null;
    });
    return this.opening;
  }

  /**
   * Opens a connection to the first server of `urls` that takes the bind. `besides`: to one of
   * the others than that one (found behind), keeping the connection there until one answers.
   */
  private async open(besides?: string): Promise<Client> {
    if (besides === undefined) {
      await this.client?.unbind().catch(() => undefined);
      this.client = null;
    }
    const failures: string[] = [];
    // The server that answered last first, then the others in order. Going back to urls[0] after
    // a dropped connection could read a replica that lags behind the server read so far and still
    // names a master failed over from: its sessions would be drained onto the demoted slot, and
    // back again once replication caught up.
    // A server found behind the map in force comes last (it is read again when no other answers).
    const preferred = this.answered === undefined ? this.config.urls : [this.answered, ...this.config.urls.filter((u) => u !== this.answered)];
    const urls = besides !== undefined ? this.config.urls.filter((u) => u !== besides) : [...preferred.filter((u) => u !== this.behind?.url), ...preferred.filter((u) => u === this.behind?.url)];
    for (const url of urls) {
      if (this.closed) break;
      let client: Client | undefined;
      try {
        client = await openLdapClient(url, { tls: this.tls, starttls: this.config.starttls, operationTimeoutMs: this.config.operationTimeoutMs, connectTimeoutMs: this.config.operationTimeoutMs, autoRebind: true, maxAnswerBytes: this.maxAnswerBytes });
        await client.bind(this.config.bindDn, this.config.bindPassword);
      } catch (error) {
        failures.push(`${url}: ${error instanceof Error ? error.message : String(error)}`);
        await client?.unbind().catch(() => undefined);
        continue;
      }
      if (this.closed) {
        void client.unbind().catch(() => undefined);
        break;
      }
      if (besides !== undefined && this.client !== null) {
        // A load in flight on it (a reload asked for) finishes first.
        const old = this.client;
        this.retiring.add(old);
        setTimeout(() => {
          this.retiring.delete(old);
          void old.unbind().catch(() => undefined);
        }, this.config.operationTimeoutMs).unref();
      }
      this.client = client;
      this.answered = url;
      return client;
    }
    if (this.closed) throw new MailfrontError('STOREMAP_SOURCE_CLOSED', 'config', 'the store-map source was closed');
    throw new MailfrontError('STOREMAP_LDAP_UNREACHABLE', 'config', `no store-map LDAP server answered: ${failures.join('; ')}`);
  }

  /**
   * The store entries as a store-map document. The document handed out last is remembered, so
   * that the poll reports any difference from what the holder has, including a change made
   * between the start-up load and the first poll.
   */
  async load(trigger?: string): Promise<unknown> {
    // A reload's check read is not the last one loaded: a SIGHUP's reload puts it in force only
    // after its other work (a directory's settings tried on each of its servers, listeners bound
    // again: seconds, with a server down), and a failover it read would meanwhile be hidden from
    // the polls, which report only a map that differs from the last one loaded. The reload that
    // puts it in force says so (took()); a poll that finds it first puts it in force at once.
    if (trigger === 'check') {
      const read = await this.readForCheck(() => this.loadTracked(trigger));
      // lastFingerprint as readForCheck() left it: the one before the read.
      this.checked = { ...read, lastFingerprint: this.lastFingerprint };
      return read.document;
    }
    return this.loadTracked(trigger);
  }

  took(document: unknown): void {
    const checked = this.checked;
    this.checked = undefined;
    // Nothing loaded since the check read: otherwise what came after it is the last one loaded.
    if (checked === undefined || checked.document !== document || this.lastFingerprint !== checked.lastFingerprint) return;
    this.lastFingerprint = checked.fingerprint;
    this.inForce = checked.inForce;
  }

  /** A load (see load()), which the polls wait for. */
  private async loadTracked(trigger: string | undefined): Promise<unknown> {
    const loading = this.loadNow(trigger);
    this.loading = loading;
    try {
      return await loading;
    } finally {
      if (this.loading === loading) this.loading = undefined;
    }
  }

  private async loadNow(trigger: string | undefined): Promise<unknown> {
    let reading: LdapReading;
    try {
      reading = await this.read();
      // A server behind the map in force (a lagging replica read after the provider stopped)
      // would undo failovers and drain the sessions on the new masters: refused, the map in force
      // stays, unless the reload asked for it (a restore from a backup, say).
      const behind = this.inForce === undefined ? undefined : behindMapInForce(this.inForce, reading.csns, reading.context);
      if (behind !== undefined && trigger !== ACCEPT_OLDER_TRIGGER) throw this.refuseBehind(reading, behind);
      if (behind !== undefined) this.log?.error({ event: 'storemap.source_behind_accepted', source: this.description, url: reading.url, dn: behind.dn, csnInForce: behind.inForce, csnServer: behind.server, trigger }, `the store-map server ${reading.url ?? ''} is behind the map in force (${behind.dn}: ${behind.server}, in force ${behind.inForce}); its map is put in force, as the reload asked`);
    } catch (error) {
      // A load that failed (LDAP down) is not the last one loaded: the next poll that reads the
      // same map reports it, and its reload tells that the source is good again (that poll reads
      // the whole map: its recent entries are no longer those of the last load, see unchanged()).
      this.lastFingerprint = '';
      throw error;
    }
    this.lastFingerprint = reading.fingerprint;
    if ('rejected' in reading) throw reading.rejected;
    this.inForce = reading.csns;
    // In force now: a server found behind before may have caught up by the time it is read again.
    this.behind = undefined;
    return reading.document;
  }

  /**
   * The error of a read from a server behind the map in force: said once per server and state
   * (storemap.source_behind); the polls from now on try the other servers first (tryOthers), and
   * report the source down while the one behind is the one that answers and still is.
   */
  private refuseBehind(reading: LdapReading, behind: { readonly dn: string; readonly inForce: string; readonly server: string }): MailfrontError {
    const url = reading.url ?? '(unknown)';
    const error = new MailfrontError('STOREMAP_LDAP_BEHIND', 'config', `the store-map server ${url} is behind the map in force (${behind.dn}: ${behind.server} on the server, ${behind.inForce} in force; a replica that has not caught up): the map in force stays, the other servers are tried, and this one is read again until it has caught up (after a restore from a backup, \`mailfront reload --accept-older-store-map\` puts its map in force)`);
    const said = `${url} ${behind.dn} ${behind.server} ${behind.inForce}`;
    if (this.behind?.said !== said) this.log?.warn({ event: 'storemap.source_behind', source: this.description, url, dn: behind.dn, csnInForce: behind.inForce, csnServer: behind.server }, error.message);
    this.behind = { url, at: performance.now(), context: reading.context, error, said };
    this.recent = undefined;
    this.contextPolls = undefined;
    this.contextLagging = undefined;
    this.usnPolls = undefined;
    return error;
  }

  /**
   * While the server that answers is the one found behind: a connection to another of `urls`,
   * when one answers now, takes its place (the one behind is let go once what was asked of it is
   * answered: a reload asked for meanwhile reads it to the end).
   */
  private async tryOthers(): Promise<void> {
    const url = this.behind?.url;
    if (url === undefined || this.answered !== url || !this.client?.isConnected || this.opening !== null || !this.config.urls.some((u) => u !== url)) return;
    this.opening = this.open(url).finally(() => {
      this.opening = null;
    });
    await this.opening.catch(() => undefined);
  }

  /**
   * The error of the server found behind, while it is the one that answers and its contextCSN has
   * not moved (for up to a whole-read interval): the poll need not read the whole map again to
   * find it still behind. Undefined when it is to be read.
   */
  private async stillBehind(): Promise<MailfrontError | undefined> {
    const behind = this.behind;
    if (behind === undefined) return undefined;
    await this.tryOthers();
    if (behind.context === undefined || performance.now() - behind.at >= this.timing.fullReadIntervalMs) return undefined;
    const client = await this.connection();
    if (this.answered !== behind.url) return undefined;
    const context = await this.contextCsn(client).catch(() => undefined);
    if (context === undefined || context.values.size !== behind.context.size || [...context.values].some(([sid, csn]) => behind.context!.get(sid) !== csn)) return undefined;
    return behind.error;
  }

  /**
   * The contextCSN by server id of the database that holds the base DN, and the DN of that
   * database's suffix, or undefined where there is none the bind account may read. That entry is
   * the deepest of the base DN and its ancestors up to the root DSE's namingContexts entry above
   * it that has a contextCSN (found once per connection): a database glued under the advertised
   * one (slapd's `subordinate`) is not advertised, and the advertised database's contextCSN does
   * not move when the store entries change. Throws when the server does not answer.
   */
  private async contextCsn(client: Client): Promise<{ readonly dn: string; readonly values: ReadonlyMap<number, string> } | undefined> {
    let dn = this.contexts.get(client);
    /** The walk's own read of the entry it found, which needs no second search. */
    let found: ReadonlyMap<number, string> | undefined;
    if (dn === undefined) {
      let contexts: unknown;
      try {
        contexts = (await client.search('', { scope: 'base', filter: '(objectClass=*)', attributes: ['namingContexts'] })).searchEntries[0]?.['namingContexts'];
      } catch (error) {
        // A root DSE the account may not read: no contextCSN to go by.
        if (!(error instanceof ResultCodeError)) throw error;
      }
      const base = lowerDn(this.config.baseDn);
      const holding = (Array.isArray(contexts) ? contexts : contexts === undefined ? [] : [contexts]).map(String).filter((c) => base === lowerDn(c) || base.endsWith(`,${lowerDn(c)}`));
      const advertised = holding.sort((a, b) => b.length - a.length)[0];
      dn = null;
      if (advertised !== undefined) {
        // The base DN, then each parent up to the advertised naming context: the first with a contextCSN.
        for (let candidate = this.config.baseDn.trim(); ; candidate = candidate.replace(/^(?:[^,\\]|\\.)*,\s*/, '')) {
          found = await this.contextCsnOf(client, candidate);
          if (found !== undefined) {
            dn = candidate;
            break;
          }
          if (lowerDn(candidate) === lowerDn(advertised) || !/^(?:[^,\\]|\\.)*,/.test(candidate)) break;
        }
      }
      this.contexts.set(client, dn);
    }
    if (dn === null) return undefined;
    const values = found ?? (await this.contextCsnOf(client, dn));
    return values === undefined ? undefined : { dn, values };
  }

  /** A search of the store map failed: the connection is dropped (the next read opens one, maybe to another server), and this is the error to throw. */
  private async searchFailed(error: unknown): Promise<MailfrontError> {
    await this.client?.unbind().catch(() => undefined);
    this.client = null;
    return new MailfrontError('STOREMAP_LDAP_SEARCH_FAILED', 'config', `store-map search failed: ${this.searchFailure(error)}`, { cause: error });
  }

  /**
   * The paged searches under way or waiting, by connection: each waits for the one before it. A
   * server keeps one paged search's state per connection, and a paged search started meanwhile
   * ends the other's: slapd answers its next page "paged results cookie is invalid". A poll's
   * search by version met a failover's whole read so, and two failovers asked at once each read
   * the map whole; on a map of more than one page (100 entries: 25 stores of three slots) one of
   * them failed.
   */
  private readonly pagedTurns = new WeakMap<Client, Promise<void>>();

  /**
   * Hands each page of a paged search of the store entries under base_dn that match `filter` to
   * `onPage`, one paged search at a time on `client` (see pagedTurns). False when `onPage` said
   * to stop (false); the search is left there. Throws what the search or `onPage` threw, and when
   * the pages came to more than store_map.ldap.max_answer_bytes, `tooMuch()`'s words for it.
   */
  private async eachPage(client: Client, filter: string, attributes: readonly string[], onPage: (entries: ReadonlyArray<Record<string, unknown> & { dn: string }>) => boolean, tooMuch: () => string): Promise<boolean> {
    const before = this.pagedTurns.get(client);
    let done!: () => void;
    const mine = new Promise<void>((resolve) => (done = resolve));
    this.pagedTurns.set(client, mine);
    try {
      if (before !== undefined) await before;
      const heardBefore = ldapBytesReceived(client);
      for await (const { searchEntries } of client.searchPaginated(this.config.baseDn, { scope: 'sub', filter, attributes: [...attributes], paged: true })) {
        if (!onPage(searchEntries)) return false;
        if (ldapBytesReceived(client) - heardBefore > this.maxAnswerBytes) throw new Error(`${tooMuch()}; the search was stopped`);
      }
      return true;
    } finally {
      if (this.pagedTurns.get(client) === mine) this.pagedTurns.delete(client);
      done();
    }
  }

  /** The contextCSN by server id of the entry `dn`, or undefined where it has none the bind account may read. */
  private async contextCsnOf(client: Client, dn: string): Promise<ReadonlyMap<number, string> | undefined> {
    let entry: Record<string, unknown> | undefined;
    try {
      ({ searchEntries: [entry] } = await client.search(dn, { scope: 'base', filter: '(objectClass=*)', attributes: ['contextCSN'] }));
    } catch (error) {
      // An entry the account may not see, or not there: no contextCSN to go by.
      if (error instanceof ResultCodeError) return undefined;
      throw error;
    }
    const raw = entry === undefined ? undefined : Object.entries(entry).find(([key]) => key.toLowerCase() === 'contextcsn')?.[1];
    const values = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : String(v)));
    return contextCsnsBySid(values);
  }

  /**
   * The document the entries make, or why they make none. Either way the directory answered:
   * entries that make no map (one store name on two entries) are rejected as a document that
   * fails validation is, once per change, and the source stays healthy.
   */
  private async read(): Promise<LdapReading> {
    const previous = this.recent;
    this.recent = undefined;
    this.contextPolls = undefined;
    this.contextLagging = undefined;
    this.usnPolls = undefined;
    const readAt = performance.now();
    const readAtMs = Date.now();
    const client = await this.connection();
    const url = this.answered;
    // Before the entries: every change up to it is in them (slapd moves it once a change is in place).
    let context: Awaited<ReturnType<LdapStoreMapSource['contextCsn']>>;
    const socket = socketOf(client);
    /** Before the entries too: every change with a USN up to it is in them, once committed (see usnSearchFrom). */
    let usn: UsnSample | undefined;
    try {
      context = await this.contextCsn(client);
      if (context === undefined) {
        const values = await this.lastUsn(client);
        if (values !== undefined) usn = { at: performance.now(), values };
      }
    } catch (error) {
      throw await this.searchFailed(error);
    }
    const entries = await this.search(client);
    let reading: { readonly document: unknown; readonly fingerprint: string } | { readonly rejected: MailfrontError; readonly fingerprint: string };
    try {
      const document = storeEntriesToDocument(entries);
      reading = { document, fingerprint: JSON.stringify(document) };
    } catch (error) {
      const rejected = asMailfrontError(error);
      reading = { rejected, fingerprint: `rejected: ${rejected.message}` };
    }
    const csns = entryCsns(entries);
    if (context !== undefined && csns !== undefined) {
      // After the entries: one newer than it says the contextCSN is another database's.
      let after: ReadonlyMap<number, string> | undefined;
      try {
        after = await this.contextCsnOf(client, context.dn);
      } catch (error) {
        throw await this.searchFailed(error);
      }
      const newer = entryAfterContext(csns, after ?? context.values);
      if (newer !== undefined) {
        // Not at once for good: a consumer writes an entry before its contextCSN (a refresh moves it
        // at its end). Until the next whole read the polls go by modifyTimestamp, and by the
        // contextCSN again once it covers the entries (see ContextLagging). Found again after it
        // caught up once on this connection, or a full-read interval after the first time, for good.
        const firstBehind = this.contextFirstBehind.get(client);
        if (firstBehind === undefined) this.contextFirstBehind.set(client, performance.now());
        if (this.contextRecovered.has(client) || (firstBehind !== undefined && performance.now() - firstBehind >= this.timing.fullReadIntervalMs)) {
          this.contexts.set(client, null);
          this.log?.warn({ event: 'storemap.context_csn_not_used', source: this.description, url, contextDn: context.dn, dn: newer.dn, entryCsn: newer.csn, contextCsn: newer.context }, `the contextCSN of ${context.dn} on ${url ?? ''} (${newer.context}) is older than the entryCSN of ${newer.dn} (${newer.csn}), as a whole read on this connection found it before (since, it caught up, or it has stayed behind for a full-read interval): it is not the one of the database that holds the store entries (a database glued below whose contextCSN the bind account may not read, or below base_dn), or the server is a replica that has refreshed again since; the polls ask by modifyTimestamp on this connection`);
        } else {
          this.contextLagging = { client, contextDn: context.dn, csns };
        }
        context = undefined;
      }
    }
    let usns = usn === undefined || socketOf(client) !== socket ? undefined : entryUsns(entries);
    if (usns !== undefined && !(usns instanceof Map)) {
      if (!this.usnNotUsed.has(client)) {
        this.usnNotUsed.add(client);
        this.log?.warn({ event: 'storemap.usn_not_used', source: this.description, url, dn: usns.without }, `the store-map server ${url ?? ''} has the USN plugin (lastusn) but ${usns.without} has no entryusn the bind account may read (written before the plugin was on, or an ACI that hides it): until every store entry has one, the polls ask by modifyTimestamp (and read the whole map for about 11 s after each change)`);
      }
      usns = undefined;
    }
    if (context !== undefined && csns !== undefined) this.contextPolls = { client, fingerprint: reading.fingerprint, readAt, contextDn: context.dn, baseline: context.values, versions: csns };
    else if (usn !== undefined && usns !== undefined) {
      this.noteUsn(client, socket, usn);
      this.usnPolls = { client, socket, fingerprint: reading.fingerprint, readAt, versions: usns };
    } else this.recent = recentEntries(entries, { client, fingerprint: reading.fingerprint, readAt, readAtMs }, previous, this.searchesByTime === client, this.timing);
    return { ...reading, url, csns, context: context?.values };
  }

  /**
   * True when no store entry changed since the last whole read, as told by the server's
   * contextCSN (see ContextPolls): one base search, and when a server id's value moved, one search
   * for the store entries at or after its value before (a few, or none: the contextCSN moves with
   * every write to the database, users' entries too). False when that cannot be told so.
   */
  private async unchangedByContext(polls: ContextPolls): Promise<boolean> {
    if (polls.fingerprint !== this.lastFingerprint || performance.now() - polls.readAt >= this.timing.fullReadIntervalMs) return false;
    const client = await this.connection();
    if (client !== polls.client) return false;
    try {
      const now = await this.contextCsn(client);
      if (now === undefined || now.dn !== polls.contextDn) return false;
      /** The oldest value before of the server ids whose value moved. */
      let from: string | undefined;
      for (const [sid, csn] of now.values) {
        const before = polls.baseline.get(sid);
        // A server id not seen before: its changes may be stamped anything.
        if (before === undefined) return false;
        const order = compareCsn(csn, before);
        // Gone back (another server behind a proxy, a restore): read whole, and see.
        if (order < 0) return false;
        if (order > 0 && (from === undefined || compareCsn(before, from) < 0)) from = before;
      }
      if (now.values.size !== polls.baseline.size) return false;
      if (from === undefined) return true;
      const same = await this.eachPage(client, `(&${STORE_ENTRIES_FILTER}(entryCSN>=${escapeFilterValue(from)}))`, ['entryCSN'], (entries) => entries.every((entry) => polls.versions.get(lowerDn(entry.dn)) === operational(entry, 'entryCSN')), () => this.changedLatelyTooMuch());
      if (!same) return false;
      polls.baseline = now.values;
      return true;
    } catch (error) {
      if (error instanceof SizeLimitExceededError) return false;
      const failure = await this.searchFailed(error);
      this.contextPolls = undefined;
      throw failure;
    }
  }

  /**
   * True when the contextCSN, found behind a store entry at the last whole read, now covers every
   * store entry of that read (see ContextLagging): one base search.
   */
  private async contextCaughtUp(lagging: ContextLagging): Promise<boolean> {
    const client = await this.connection();
    if (client !== lagging.client) return false;
    try {
      const now = await this.contextCsn(client);
      const caughtUp = now !== undefined && now.dn === lagging.contextDn && entryAfterContext(lagging.csns, now.values) === undefined;
      if (caughtUp) this.contextRecovered.add(client);
      return caughtUp;
    } catch (error) {
      const failure = await this.searchFailed(error);
      this.contextLagging = undefined;
      throw failure;
    }
  }

  /** The root DSE's lastusn values (see lastUsns), or undefined where there are none the bind account may read. */
  private async lastUsn(client: Client): Promise<ReadonlyMap<string, bigint> | undefined> {
    let entry: Record<string, unknown> | undefined;
    try {
      ({ searchEntries: [entry] } = await client.search('', { scope: 'base', filter: '(objectClass=*)', attributes: ['lastusn'] }));
    } catch (error) {
      // A root DSE the account may not read: no USN to go by.
      if (error instanceof ResultCodeError) return undefined;
      throw error;
    }
    return entry === undefined ? undefined : lastUsns(entry);
  }

  /**
   * Adds a sample of the connection `client` on `socket` (a sample of another connection starts
   * anew) and says from which entryusn the poll asks (see usnSearchFrom): the margin is
   * recentMarginMs and a poll interval.
   */
  private noteUsn(client: Client, socket: unknown, sample: UsnSample): bigint | null | undefined {
    const seen = this.usnSeen?.client === client && this.usnSeen.socket === socket ? this.usnSeen.samples : [];
    const { samples, from } = usnSearchFrom(seen, sample, this.timing.recentMarginMs + this.config.pollIntervalMs);
    this.usnSeen = { client, socket, samples };
    return from;
  }

  /**
   * True when no store entry changed since the last whole read, as told by the server's lastusn
   * and the store entries' entryusn (see UsnPolls): one base search, and while a value moved
   * within the margin, one search for the store entries changed since (none or a few). False when
   * that cannot be told so.
   */
  private async unchangedByUsn(polls: UsnPolls): Promise<boolean> {
    if (polls.fingerprint !== this.lastFingerprint || performance.now() - polls.readAt >= this.timing.fullReadIntervalMs) return false;
    const client = await this.connection();
    if (client !== polls.client || socketOf(client) !== polls.socket) return false;
    try {
      const values = await this.lastUsn(client);
      // Answered on another socket (ldapts reconnected meanwhile): maybe another server's.
      if (values === undefined || socketOf(client) !== polls.socket) return false;
      const from = this.noteUsn(client, polls.socket, { at: performance.now(), values });
      if (from === undefined) return false;
      if (from === null) return true;
      // The values too, not the entryusn alone (see usnVersion); an entry not known is read whole.
      const same = await this.eachPage(client, `(&${STORE_ENTRIES_FILTER}(entryUSN>=${from}))`, [...ROUTING_ATTRIBUTES, 'entryUSN'], (entries) => entries.every((entry) => polls.versions.get(lowerDn(entry.dn)) === usnVersion(entry)), () => this.changedLatelyTooMuch());
      return same && socketOf(client) === polls.socket;
    } catch (error) {
      if (error instanceof SizeLimitExceededError) return false;
      const failure = await this.searchFailed(error);
      this.usnPolls = undefined;
      throw failure;
    }
  }

  /**
   * True when the entries stamped since the last whole read's `since` are those it found, in the
   * same versions: nothing changed that the holder does not have (see RecentEntries). False when
   * that cannot be told so: the map is then read whole. One search, for a few entries and their
   * versions.
   */
  private async unchanged(): Promise<boolean> {
    if (this.contextPolls !== undefined) return this.unchangedByContext(this.contextPolls);
    if (this.usnPolls !== undefined) return this.unchangedByUsn(this.usnPolls);
    if (this.contextLagging !== undefined && (await this.contextCaughtUp(this.contextLagging))) return false;
    const recent = this.recent;
    if (recent === undefined || recent.fingerprint !== this.lastFingerprint || performance.now() - recent.readAt >= this.timing.fullReadIntervalMs) return false;
    const client = await this.connection();
    if (client !== recent.client) return false;
    let found = 0;
    try {
      // Paged, as the whole read: a server's limit on one answer is no reason to read all.
      let same = true;
      await this.eachPage(client, `(&${STORE_ENTRIES_FILTER}(modifyTimestamp>=${recent.since}))`, VERSION_ATTRIBUTES, (entries) => {
        for (const entry of entries) if (recent.versions.get(lowerDn(entry.dn)) !== entryVersion(entry)) same = false;
        found += entries.length;
        return true;
      }, () => this.changedLatelyTooMuch());
      if (!same || found !== recent.versions.size) return false;
      if (found > 0) this.searchesByTime = client;
      return true;
    } catch (error) {
      // The whole read says what is wrong, if anything still is: a size limit, say.
      if (error instanceof SizeLimitExceededError) return false;
      const failure = await this.searchFailed(error);
      this.recent = undefined;
      throw failure;
    }
  }

  private async search(client: Client): Promise<Array<Record<string, unknown> & { dn: string }>> {
    try {
      // Paged (RFC 2696): a server that bounds each answer rather than the whole search (Active
      // Directory's MaxPageSize, an OpenLDAP size.prtotal above size.hard) hands over every entry.
      // No sizeLimit of our own: ldapts would return a truncated map as if it were whole. The
      // connection bounds each page's bytes; the pages together are bounded here, so a server
      // that hands out pages without end cannot hold them all in memory.
      const entries: Array<Record<string, unknown> & { dn: string }> = [];
      // The versions, for the polls until the next whole read (RecentEntries, ContextPolls, UsnPolls).
      await this.eachPage(client, STORE_ENTRIES_FILTER, [...ROUTING_ATTRIBUTES, ...VERSION_ATTRIBUTES, 'entryUSN'], (page) => {
        // One at a time: push(...page) passed the page as call arguments, and a server that
        // ignores paging sends the whole map as one page (200,000 entries overflowed the stack).
        for (const entry of page) entries.push(entry);
        return true;
      }, () => `the store entries under ${this.config.baseDn} came to more than ${this.maxAnswerBytes} bytes (${entries.length} entries so far; store_map.ldap.max_answer_bytes)`);
      return entries;
    } catch (error) {
      throw await this.searchFailed(error);
    }
  }

  /** What a poll's search of the entries changed lately says when they came to more than max_answer_bytes. */
  private changedLatelyTooMuch(): string {
    return `the store entries under ${this.config.baseDn} changed lately came to more than ${this.maxAnswerBytes} bytes (store_map.ldap.max_answer_bytes)`;
  }

  /** Why a search failed, in words that say what to do when a server limit is the reason. */
  private searchFailure(error: unknown): string {
    const message = error instanceof Error ? error.message : String(error);
    // sizeLimitExceeded (4): the bind account may read fewer entries than there are stores and
    // slots (OpenLDAP's default sizelimit is 500, and it bounds a paged search's total as well;
    // so does an nsSizeLimit of 389 DS's account entry). ldapts's own text is only "Code: 0x4".
    if (error instanceof SizeLimitExceededError) {
      return `the server's size limit for ${this.config.bindDn} is smaller than the number of mailfrontStore and mailfrontSlot entries under ${this.config.baseDn} (sizeLimitExceeded); raise that account's limit (OpenLDAP: limits dn.exact="${this.config.bindDn}" size=unlimited; 389 DS: nsSizeLimit: -1, or nsPagedSizeLimit: -1, in the entry ${this.config.bindDn})`;
    }
    // adminLimitExceeded (11): the server looked through more entries than the bind account may
    // (389 DS's nsslapd-lookthroughlimit, 5,000 by default, which bounds a paged search's total
    // too: a map of more than about 1,666 stores of two slots; OpenLDAP's size.unchecked).
    // ldapts's own text is only "Code: 0xb".
    if (error instanceof AdminLimitExceededError) {
      return `the server's limit of the entries one search of ${this.config.bindDn} may look through is smaller than the number of mailfrontStore and mailfrontSlot entries under ${this.config.baseDn} (adminLimitExceeded); raise that account's limit (389 DS: nsPagedLookThroughLimit: -1, or nsLookThroughLimit: -1, in the entry ${this.config.bindDn}; OpenLDAP: limits dn.exact="${this.config.bindDn}" size.unchecked=unlimited)`;
    }
    // The answer bound: a map larger than it needs store_map.ldap.max_answer_bytes raised.
    if (error instanceof LdapAnswerRefusedError) return `${message} (store_map.ldap.max_answer_bytes)`;
    return message;
  }

  watch(onChange: () => void, onHealth?: (error: Error | null) => void): () => void {
    // Polling keeps every instance of a fleet within one interval of the replicated truth; only
    // a document that differs from the one last loaded is reported, so an unchanged poll builds
    // no new version. The holder's reload loads it (and so moves lastFingerprint on); a reload
    // that failed is reported again at the next poll. Most polls read only the entries changed
    // lately, and the whole map only when one did, or every fullReadIntervalMs.
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    const poll = async (): Promise<void> => {
      try {
        // After a load under way: it reads the whole map, and what the polls compare with is its.
        while (this.loading !== undefined) await this.loading.catch(() => undefined);
        // A server found behind the map in force that still is: down, nothing read.
        const behind = await this.stillBehind();
        if (behind !== undefined) throw behind;
        // Unchanged since the last load, whenever that was (one may have come while this poll
        // waited on the server): nothing to report.
        let changed = false;
        if (!(await this.unchanged())) {
          const reading = await this.read();
          const lagging = this.inForce === undefined ? undefined : behindMapInForce(this.inForce, reading.csns, reading.context);
          if (lagging !== undefined) throw this.refuseBehind(reading, lagging);
          // Not behind (another server, or this one caught up): should it fall behind again, that is said again.
          this.behind = undefined;
          changed = reading.fingerprint !== this.lastFingerprint;
        }
        if (!stopped) onHealth?.(null);
        if (!stopped && changed) onChange();
      } catch (error) {
        // Unreachable LDAP: the last good map stays in force.
        if (!stopped) onHealth?.(error instanceof Error ? error : new Error(String(error)));
      }
      if (!stopped) timer = setTimeout(() => void poll(), this.config.pollIntervalMs);
    };
    void poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  /**
   * The document, read for a check (a write's, or a reload's) as a load reads it (refused from a
   * server behind the map in force), without making it the last one loaded, with what would have
   * been: the holder puts no map in force for it (a write refused after the check, by a
   * read-only replica, say, puts none in force at all), or not yet (a reload's, see load()).
   * Made the last loaded, a newer map read here would be the one the polls compare with, and never
   * reported (the rv-diff3 review's lost-change repro); left as it was, the next poll reports it.
   * `load` is the load that reads it.
   */
  private async readForCheck(load: () => Promise<unknown>): Promise<{ readonly document: unknown; readonly fingerprint: string; readonly inForce: ReadonlyMap<string, string> | undefined }> {
    const { lastFingerprint, inForce } = this;
    try {
      const document = await load();
      return { document, fingerprint: this.lastFingerprint, inForce: this.inForce };
    } finally {
      this.lastFingerprint = lastFingerprint;
      this.inForce = inForce;
    }
  }

  /**
   * The entry of `store`, once `check` has seen the document (see StoreMapSource), with the
   * attributes a write needs; `noun` names what is not written when there is no one entry.
   */
  private async storeEntry(store: string, noun: StoreMapWrite, check: ((document: unknown) => void) | undefined): Promise<{ readonly client: Client; readonly entry: Record<string, unknown> & { dn: string } }> {
    if (check !== undefined) check((await this.readForCheck(() => this.load())).document);
    let client: Client;
    let searchEntries: Array<Record<string, unknown> & { dn: string }>;
    try {
      client = await this.connection();
      ({ searchEntries } = await client.search(this.config.baseDn, { scope: 'sub', filter: `(&(objectClass=mailfrontStore)(cn=${escapeFilterValue(store)}))`, attributes: ['cn', 'mailfrontCurrentMaster', 'mailfrontPreferredMaster', 'mailfrontMaintenance'] }));
    } catch (error) {
      throw entrySearchError(error, store, this.answered, noun);
    }
    const entry = searchEntries[0];
    if (entry === undefined) throw new MailfrontError('UNKNOWN_STORE', 'no-route', `store "${store}" has no entry under ${this.config.baseDn}`);
    // A duplicate added since the map in force was read: writing to either could be the wrong one.
    if (searchEntries.length > 1) throw new MailfrontError('STOREMAP_DUPLICATE_STORE', 'config', `store "${store}" has ${searchEntries.length} entries under ${this.config.baseDn} (${searchEntries.map((e) => e.dn).join(', ')}); no ${noun} written`);
    return { client, entry };
  }

  /**
   * A modify of the store entry's mailfrontMaintenance: replaced by TRUE (the default text) or
   * the reason, or deleted (off; nothing to modify when there is none). A reason that would read
   * back as TRUE or FALSE never comes here: the holder refuses it (maintenanceProblem).
   */
  async setMaintenance(store: string, maintenance: boolean | string, check?: (document: unknown) => void): Promise<undefined> {
    const { client, entry } = await this.storeEntry(store, 'maintenance', check);
    const refused = (error: unknown): never => {
      throw failoverWriteError(error, store, entry.dn, this.answered, 'maintenance');
    };
    if (maintenance === false) {
      if (first(entry['mailfrontMaintenance']) !== undefined) await client.modify(entry.dn, [new Change({ operation: 'delete', modification: new Attribute({ type: 'mailfrontMaintenance', values: [] }) })]).catch(refused);
      return undefined;
    }
    await client.modify(entry.dn, [new Change({ operation: 'replace', modification: new Attribute({ type: 'mailfrontMaintenance', values: [maintenance === true ? 'TRUE' : maintenance] }) })]).catch(refused);
    return undefined;
  }

  async setCurrentMaster(store: string, slot: string, check?: (document: unknown) => void): Promise<undefined> {
    const { client, entry } = await this.storeEntry(store, 'failover', check);
    const current = new Change({ operation: 'replace', modification: new Attribute({ type: 'mailfrontCurrentMaster', values: [slot] }) });
    // Without mailfrontPreferredMaster, the preferred master is the current one, and would move
    // with the failover: the store would never show as backwards. The master failed over from is
    // added as the preferred one, in the same modify (an 'add': one set meanwhile fails it, and
    // is not overwritten).
    const before = first(entry['mailfrontCurrentMaster']);
    if (first(entry['mailfrontPreferredMaster']) === undefined && before !== undefined && before !== slot) {
      try {
        await client.modify(entry.dn, [current, new Change({ operation: 'add', modification: new Attribute({ type: 'mailfrontPreferredMaster', values: [before] }) })]);
        return undefined;
      } catch (error) {
        // The failover is what matters, during an incident: a bind account that may write
        // mailfrontCurrentMaster only (all a failover needed before it added the preferred master),
        // or a preferred master added meanwhile, must not fail it. A modify is all or nothing,
        // so nothing of it was written: the current master alone is.
        const why = error instanceof ResultCodeError ? PREFERRED_MASTER_ADD_FAILURES.get(error.code) : undefined;
        if (why === undefined) throw failoverWriteError(error, store, entry.dn, this.answered);
        await client.modify(entry.dn, [current]).catch((retried: unknown) => {
          throw failoverWriteError(retried, store, entry.dn, this.answered);
        });
        this.log?.warn({ event: 'storemap.failover_preferred_master_not_written', store, dn: entry.dn, from: before, to: slot, reason: why }, `failover of store "${store}" written without adding its preferred master ${before}: ${why}`);
        return undefined;
      }
    }
    await client.modify(entry.dn, [current]).catch((error: unknown) => {
      throw failoverWriteError(error, store, entry.dn, this.answered);
    });
    return undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const old of this.retiring) void old.unbind().catch(() => undefined);
    this.retiring.clear();
    await this.client?.unbind().catch(() => undefined);
    this.client = null;
  }
}

/**
 * The source a config names; `ca`: its LDAP CA file's content when the caller read it already;
 * `log`: hears what a source has to say besides its health (a failover written in part).
 */
export function createStoreMapSource(config: StoreMapSourceConfig, ca?: Buffer, log?: Logger): StoreMapSource {
  return config.kind === 'file' ? new FileStoreMapSource(config.file, config.watch, config.baseDir, log) : new LdapStoreMapSource(config, ca, log);
}
