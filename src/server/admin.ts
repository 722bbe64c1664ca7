/**
 * The admin API: stores (masters, backwards, maintenance, slot health, session counts), sessions,
 * where a user lives (with the throttle's counts of the user), failover of a store to a named
 * slot and its maintenance (written to the source of truth), kick, unthrottle, and reload. JSON
 * over HTTP, bearer-token protected; meant for loopback. Owns no state: it asks the objects it is
 * given.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import type { AccountState, Directory, DirectoryUser } from '../auth/directory.js';
import { countedUser, entryLoginName, normalizeUser } from '../auth/directory.js';
import type { SubjectReport, Throttle, ThrottleSource } from '../auth/throttle.js';
import type { SlotHealthMonitor } from '../backend/health.js';
import type { UsernameConfig } from '../config/schema.js';
import { MailfrontError, asMailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import type { SessionEntry, SessionRegistry } from '../proxy/registry.js';
import type { ReloadResult, StoreMapHolder } from '../routing/holder.js';
import { StoreMap } from '../routing/storemap.js';
import { bearerCheck } from './http.js';
import { CLOSE_BATCH_SESSIONS } from '../limits.js';
import type { Store } from '../routing/storemap.js';

/** What the admin API works on. */
export interface AdminContext {
  readonly token: () => string | undefined;
  readonly holder: StoreMapHolder;
  readonly registry: SessionRegistry;
  readonly health: SlotHealthMonitor;
  readonly directory: () => Directory;
  readonly usernames: () => UsernameConfig;
  readonly log: Logger;
  /** The auth-failure throttle (whereis shows a user's counts, unthrottle clears them); absent in contexts built for tests of other endpoints. */
  readonly throttle?: Throttle;
  /** Re-reads the config file and the store map now, as SIGHUP does (`mailfront reload`); `acceptOlderStoreMap`, see Mailfront.reload(). */
  readonly reload: (options?: { readonly acceptOlderStoreMap?: boolean }) => Promise<{ readonly ok: boolean; readonly error?: string; readonly storeMap: ReloadResult }>;
}

/** Largest request body accepted (a failover or kick request is a few dozen bytes). */
const MAX_BODY_BYTES = 4096;

/** A session as the API shows it; a master login's with `master`, the staff member in `user`'s mailbox. */
function sessionView(s: SessionEntry): Record<string, unknown> {
  return { id: s.id, protocol: s.protocol, user: s.user, ...(s.master !== undefined ? { master: s.master.user } : {}), store: s.store, slot: s.slot, client: s.clientAddress, startedAt: new Date(s.startedAt).toISOString(), bytesFromClient: s.traffic.bytesFromClient, bytesToClient: s.traffic.bytesToClient };
}

/** One store as the `stores` command shows it. */
function storeView(store: Store, registry: SessionRegistry, health: SlotHealthMonitor): unknown {
  return {
    store: store.name,
    currentMaster: store.currentMaster,
    preferredMaster: store.preferredMaster,
    backwards: StoreMap.isBackwards(store),
    // In maintenance: what its clients are told; its slots are not probed meanwhile ('paused').
    maintenance: store.maintenance !== null,
    maintenanceReason: store.maintenance,
    sessions: [...store.slots.keys()].reduce((n, slot) => n + registry.countOnSlot(slot), 0),
    slots: [...store.slots.values()].map((slot) => {
      const h = health.get(slot.name);
      return {
        slot: slot.name,
        host: slot.host,
        ports: { imap: slot.imapPort, imaps: slot.imapsPort, pop3: slot.pop3Port, pop3s: slot.pop3sPort, sieve: slot.sievePort },
        master: slot.name === store.currentMaster,
        health: store.maintenance !== null ? 'paused' : h === undefined ? 'unknown' : h.up ? 'up' : 'down',
        healthError: h?.error,
        checkedAt: h ? new Date(h.checkedAt).toISOString() : undefined,
        sessions: registry.countOnSlot(slot.name),
      };
    }),
  };
}

/**
 * Reads the request body as a JSON object. One over MAX_BODY_BYTES is refused as soon as that is
 * known: from its Content-Length, before any of it is read, or else when the chunks read pass the
 * limit. The rest is then left to flow and be dropped, not destroyed: destroying the request
 * resets the connection, and the client would never see the 413.
 */
function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const tooLarge = (): MailfrontError => new MailfrontError('ADMIN_BODY_TOO_LARGE', 'limit', `request body over ${MAX_BODY_BYTES} bytes`);
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) return void chunks.push(chunk);
      req.off('data', onData).off('end', onEnd);
      reject(tooLarge());
    };
    const onEnd = (): void => {
      if (size === 0) return resolve({});
      try {
        const value: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (value !== null && typeof value === 'object' && !Array.isArray(value)) return resolve(value as Record<string, unknown>);
      } catch {
        // fall through
      }
      reject(new MailfrontError('ADMIN_BAD_JSON', 'client-protocol', 'the request body must be a JSON object'));
    };
    req.on('data', onData).on('end', onEnd).on('error', reject);
  });
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  // Compact: /api/stores for 50,000 stores of 3 slots is 22.3 MB, indented 42.8 MB (the CLI indents for people).
  sendJson(res, status, JSON.stringify(body), headers);
}

/** Sends `json`, a JSON text already made. */
function sendJson(res: ServerResponse, status: number, json: string, headers: Record<string, string> = {}): void {
  const text = `${json}\n`;
  res.writeHead(status, jsonHeaders(Buffer.byteLength(text), headers));
  res.end(text);
}

/** The headers of a JSON answer of `bytes` bytes, with `headers` added. */
function jsonHeaders(bytes: number, headers: Record<string, string>): Record<string, string | number> {
  return { 'content-type': 'application/json; charset=utf-8', 'content-length': bytes, 'cache-control': 'no-store', ...headers };
}

/**
 * How many sessions a listing (GET /api/sessions, a kick's answer) shows and puts in JSON in one
 * turn of the event loop: about 4 ms of CPU (measured on a busy machine of 2 cores), a small
 * fraction of what a kick's closes take.
 */
const SESSIONS_PER_TURN = 1_000;

/** How many stores GET /api/stores shows and puts in JSON in one turn of the event loop: a store of three slots costs about five sessions, 250 about 5 ms of CPU. */
const STORES_PER_TURN = 250;

/** The fields of `fields` as JSON.stringify writes them in an object (one whose value is undefined left out), without the braces: '' for none. */
function fieldsJson(fields: Record<string, unknown>): string {
  return JSON.stringify(fields).slice(1, -1);
}

/**
 * A JSON answer made in turns of the event loop, for the listings (sessions, stores, a kick's
 * closed sessions): made in one turn, 30,000 sessions held the loop 84 to 159 ms and 50,000
 * stores of three slots 0.7 to 2 s, with no login, scrape or failover served meanwhile. A list's
 * views are made and put in JSON a batch per turn; the text is kept in parts, one a batch, never
 * joined into one string (37 MB for 50,000 stores of three slots). It is sent once all of it is
 * made, with its content-length, as send() sends one text, to the byte: HEAD answers with the
 * length as before, and a failure while it is made is still answered with its own status, not
 * as a 200 cut short.
 */
class JsonInTurns {
  private readonly parts: Buffer[] = [];
  private bytes = 0;
  /** Text not yet in a part: the small pieces between lists, joined to the next batch. */
  private pending = '';

  /** Adds `json`, JSON text. */
  text(json: string): this {
    this.pending += json;
    return this;
  }

  /** Adds `items`' views as a JSON array, `perTurn` of them made in one turn of the event loop, a turn between batches. */
  async list<T>(items: readonly T[], view: (item: T) => unknown, perTurn: number): Promise<void> {
    this.text('[');
    for (let start = 0; start < items.length; start += perTurn) {
      if (start > 0) {
        this.flush();
        await nextTurn();
        this.text(',');
      }
      // Each batch's array without its brackets: the batches with commas between make one array.
      this.text(JSON.stringify(items.slice(start, start + perTurn).map(view)).slice(1, -1));
    }
    this.text(']');
  }

  /**
   * Sends the text with a newline, as sendJson sends one; the parts go to the socket as they are,
   * none copied into another. All at once, without waiting for 'drain': they are all made and
   * held already, and the socket lets each go once written.
   */
  send(res: ServerResponse, status: number, headers: Record<string, string> = {}): void {
    this.text('\n').flush();
    res.writeHead(status, jsonHeaders(this.bytes, headers));
    for (const part of this.parts) res.write(part);
    res.end();
  }

  private flush(): void {
    if (this.pending === '') return;
    const part = Buffer.from(this.pending, 'utf8');
    this.parts.push(part);
    this.bytes += part.length;
    this.pending = '';
  }
}

function statusFor(error: MailfrontError): number {
  // 413 (RFC 9110 §15.5.14) for this limit only: 'limit' is also the kind of a throttle's refusal.
  if (error.code === 'ADMIN_BODY_TOO_LARGE') return 413;
  // 503: a store-map file its file system would not take for a passing reason (full, over quota, an I/O error); nothing was written.
  if (error.code === 'STOREMAP_WRITE_FAILED' && error.kind === 'local-resources') return 503;
  // 409 (RFC 9110 §15.5.10): the request is sound, the store map it would change is not; nothing was written.
  // So is a failover the store-map server will not write: a read-only replica, a bind account without write access, another LDAP result.
  // So is a store the map names twice (two keys in the file, two LDAP entries): which one to change is not known.
  if (error.code === 'STOREMAP_FAILOVER_REFUSED' || error.code === 'STOREMAP_MAINTENANCE_REFUSED' || error.code === 'STOREMAP_READ_ONLY_REPLICA' || error.code === 'STOREMAP_WRITE_NOT_ALLOWED' || error.code === 'STOREMAP_WRITE_FAILED' || error.code === 'STOREMAP_DUPLICATE_STORE') return 409;
  // 503 (RFC 9110 §15.6.4): the store-map server is behind the map in force; another answers, or it catches up.
  // Or the file kept changing under the write (another writer without the lock, an editor): it passes; nothing was written.
  if (error.code === 'STOREMAP_LDAP_BEHIND' || error.code === 'STOREMAP_FILE_CHANGING') return 503;
  switch (error.kind) {
    case 'no-route':
      return 404;
    case 'client-protocol':
    case 'limit':
      return 400;
    // Something that passes: the directory or a server down or slow, mailfront out of descriptors.
    case 'auth-tempfail':
    case 'connect':
    case 'local-resources':
    case 'aborted':
    case 'maintenance':
    case 'held':
    case 'backend-login':
    case 'in-use':
    case 'login-delay':
      return 503;
    // The admin API authenticates no user: these would be a bug, as would the rest.
    case 'auth-failed':
    case 'not-authorized':
    case 'expired':
    case 'config':
    case 'internal':
      return 500;
  }
}

/** How long a directory lookup of the admin API (whereis, kick) may take. */
const ADMIN_LOOKUP_TIMEOUT_MS = 10_000;

/** A directory lookup for the admin API: past its deadline, a temporary failure that says so (not the session's "ended" words of an aborted login). */
async function adminLookup(directory: Directory, user: string): Promise<DirectoryUser | null> {
  try {
    return await directory.lookup(user, AbortSignal.timeout(ADMIN_LOOKUP_TIMEOUT_MS));
  } catch (error) {
    const failure = asMailfrontError(error);
    if (failure.kind !== 'aborted') throw failure;
    throw new MailfrontError('ADMIN_LOOKUP_TIMEOUT', 'auth-tempfail', `the directory did not answer the lookup of "${user}" within ${ADMIN_LOOKUP_TIMEOUT_MS / 1000} s`, { cause: error });
  }
}

/** The directory's account state of `found` for whereis, within ADMIN_LOOKUP_TIMEOUT_MS; undefined from a directory that has none to read. */
async function adminAccountState(directory: Directory, found: DirectoryUser): Promise<AccountState | undefined> {
  if (directory.accountState === undefined) return undefined;
  try {
    return await directory.accountState(found, AbortSignal.timeout(ADMIN_LOOKUP_TIMEOUT_MS));
  } catch (error) {
    const failure = asMailfrontError(error);
    if (failure.kind !== 'aborted') throw failure;
    throw new MailfrontError('ADMIN_LOOKUP_TIMEOUT', 'auth-tempfail', `the directory did not answer the lock search of "${found.user}" within ${ADMIN_LOOKUP_TIMEOUT_MS / 1000} s`, { cause: error });
  }
}

/**
 * What whereis says first of a locked account: what a user whose login is refused sees is a
 * wrong password (the lock is never told, it would show a guesser which accounts are locked).
 */
function lockProblem(state: AccountState | undefined): string | null {
  const lock = state?.lock;
  const ignored = state?.lockIgnored;
  // slapd lets the password in (pwdLockout not TRUE), but the bearer check reads the administrator's lock whatever the policy.
  if (lock === null && ignored?.byAdministrator === true) return `the directory's password policy does not enforce ${ignored.attribute} ${ignored.value} (an administrator's lock; the policy's pwdLockout is not TRUE): its password logins are let in, but its token logins are refused as a wrong password (mailfront's bearer check reads the lock whatever the policy) until an administrator deletes ${ignored.attribute}`;
  if (lock === undefined || lock === null || lock === 'unreadable') return null;
  if (lock.byAdministrator) return `the directory has locked the account (${lock.attribute} ${lock.value}, by an administrator): its logins, by password or token, are refused as a wrong password until an administrator lifts the lock`;
  const since = lock.since === null ? '' : ` since ${lock.since}`;
  const until =
    lock.until === undefined
      ? `until the policy's pwdLockoutDuration has passed since, if it sets one (not readable here), or an administrator deletes ${lock.attribute}`
      : lock.until === null
        ? `until an administrator unlocks it (${lock.attribute === 'accountUnlockTime' ? 'passwordUnlock off' : 'no pwdLockoutDuration'})`
        : `until ${lock.until}, or an administrator unlocks it`;
  return `the directory's password policy has locked the account out${since} (${lock.attribute} ${lock.value}, failed password binds): its password logins are refused as a wrong password ${until}; token logins are let in`;
}

/**
 * The name a login of `user` goes on with (the entry's own, directory.login_attribute, as the
 * session picks it: entryLoginName()), the name the logs' `user` field and the sessions carry;
 * null when the entry has several and none is `user` (such a login is refused).
 */
function loginNameOf(found: DirectoryUser, user: string, context: AdminContext): string | null {
  const login = entryLoginName(found.loginNames ?? [], user, context.usernames());
  return login.kind === 'name' ? login.name : login.kind === 'none' ? user : null;
}

/** A cache's view of a user, as whereis shows it. */
interface CachedView {
  readonly cache: 'auth' | 'entry';
  readonly store: string | null;
  readonly held: string | null;
  readonly expiresInMs: number;
}

/**
 * What this instance's caches hold of `user` and of the entry `found` (the directory's answer,
 * read now), and what a login here would do from them that the directory no longer says: an
 * instance that was not kicked after a hold was set goes on letting the user in from its cache of
 * logins, or from its cache of entries, until they expire (`problem`; null when they agree).
 */
function cacheView(context: AdminContext, user: string, found: DirectoryUser): { cached: CachedView[]; problem: string | null } {
  const cached = (context.directory().cached?.(user, new Set([found.dn])) ?? []).map((c): CachedView => ({ cache: c.cache, store: c.store, held: c.hold ?? null, expiresInMs: c.expiresInMs }));
  const seconds = (views: CachedView[]): number => Math.ceil(Math.max(...views.map((c) => c.expiresInMs)) / 1000);
  const lets = cached.filter((c) => c.held === null && found.hold !== undefined);
  const elsewhere = cached.filter((c) => c.held === null && found.hold === undefined && c.store !== found.store);
  const holds = cached.filter((c) => c.held !== null && found.hold === undefined);
  const says: string[] = [];
  if (lets.length > 0) says.push(`lets the user in from its cache for ${seconds(lets)} s more`);
  if (elsewhere.length > 0) says.push(`sends the user's logins to store ${[...new Set(elsewhere.map((c) => c.store ?? '(none)'))].join(', ')} from its cache for ${seconds(elsewhere)} s more`);
  if (holds.length > 0) says.push(`refuses the user's logins as held from its cache for ${seconds(holds)} s more`);
  return { cached, problem: says.length === 0 ? null : `this instance ${says.join(' and ')}: mailfront kick ${user} here` };
}

/** The throttle's counts of `users` (names typed: the throttle counts a user by the name typed), or null while throttling is off. */
async function throttleView(context: AdminContext, users: readonly string[]): Promise<{ from: ThrottleSource; users: Array<Omit<SubjectReport, 'key' | 'from'> & { user: string }> } | null> {
  // Keyed as a login counts them (countedUser): with usernames.lowercase off, "Frank" is counted as "frank".
  const reports = (await context.throttle?.inspect(users.map((user) => ({ user: countedUser(user, context.usernames()) })))) ?? null;
  if (reports === null) return null;
  return { from: reports[0]?.from ?? 'memory', users: reports.map(({ failures, limit, refusedForMs }, i) => ({ user: users[i]!, failures, limit, refusedForMs })) };
}

/** Handles requests under /api/; resolves false for any other path. */
export function createAdminHandler(context: AdminContext): (req: IncomingMessage, res: ServerResponse) => Promise<boolean> {
  return async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://admin.invalid');
    if (!url.pathname.startsWith('/api/')) return false;
    const token = context.token();
    if (token === undefined) {
      send(res, 404, { error: 'the admin API is disabled (admin.token is not set)' });
      return true;
    }
    const bearer = bearerCheck(req.headers.authorization, token);
    if (bearer !== 'ok') {
      // A 401 says how to authenticate (RFC 9110 §11.6.1); a token was given and is wrong: invalid_token (RFC 6750 §3.1).
      send(res, 401, { error: 'a valid bearer token is required' }, { 'www-authenticate': `Bearer realm="mailfront"${bearer === 'missing' ? '' : ', error="invalid_token"'}` });
      return true;
    }
    try {
      await route(context, req, res, url);
    } catch (caught) {
      const error = asMailfrontError(caught);
      send(res, statusFor(error), { error: error.message, code: error.code });
    }
    return true;
  };
}

/** One path segment, percent-decoded; a broken escape is the client's error (400), not ours. */
function decodePathPart(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new MailfrontError('ADMIN_BAD_REQUEST', 'client-protocol', 'the path has a broken percent-escape');
  }
}

/**
 * How long a kick waits for the directory's answer before it closes the user's sessions: a user
 * the directory holds (a mailbox being moved) has its clients told the hold's reason, not that an
 * administrator disconnected them; a directory that hangs delays the closing no longer than this.
 */
const KICK_HOLD_WAIT_MS = 1_000;

/** `promise`'s value if it settles within `ms`, else undefined (it goes on). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(resolve, ms, undefined);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Kicks `user` (normalised): after a password change or a lock, the old password must not log
 * in again, from a cache or through a login under way. At once: the caches forget the name and
 * every name of the entries cached under it (a login from now on asks the directory), and the
 * kick is recorded (a login of them begun before it and under way is stopped, and not spliced
 * when it completes). Then, once the directory has answered the lookup of the user or
 * KICK_HOLD_WAIT_MS has passed, their sessions begun before it are closed, told the hold's
 * reason when the directory holds the user. The entry's DN from the directory, when it
 * answers, finds what the caches did not know, and the same is done for it, for the logins begun
 * before the kick (one begun since, with the new password say, is left alone), spliced by now or
 * still under way.
 */
async function kickUser(context: AdminContext, user: string): Promise<{ sessions: SessionEntry[]; forgotten: number }> {
  const directory = context.directory();
  const dns = new Set<string>();
  let forgotten = directory.forget(user, dns);
  // Recorded at once: the logins of the user under way are stopped now (held for a master, at
  // their backend), and none begun before it is spliced while the lookup below runs (after a
  // password change or a lock, a login with the old password must not get in meanwhile). They
  // are told the kick's own words: the lookup has not answered yet.
  const kick = context.registry.userKicked(user, dns);
  const lookup = (d: Directory): Promise<DirectoryUser | null> => adminLookup(d, user);
  // A reload may replace (and close) the directory meanwhile: then the one in force answers.
  const looking = lookup(directory).catch(() => (context.directory() !== directory ? lookup(context.directory()) : null)).catch(() => null);
  // The sessions already spliced wait for the lookup, at most KICK_HOLD_WAIT_MS, to be told the
  // hold's reason when the directory holds the user (a mailbox being moved).
  const early = await within(looking, KICK_HOLD_WAIT_MS);
  const hold = early?.hold;
  if (hold !== undefined) context.registry.userKicked(user, dns, { count: kick, hold });
  const sessions = context.registry.ofUserAndEntries(user, dns).filter((s) => s.kicksAtLogin < kick);
  for (const s of sessions) s.close('kicked', hold);

  const found = early === undefined ? await looking : early;
  if (found === null || dns.has(found.dn)) return { sessions, forgotten };
  const more = new Set([found.dn]);
  context.registry.entriesKicked(more, kick, found.hold);
  const late = context.registry.ofUserAndEntries(user, more).filter((s) => s.kicksAtLogin < kick && !sessions.includes(s));
  for (const s of late) s.close('kicked', found.hold);
  sessions.push(...late);
  try {
    forgotten += context.directory().forget(user, more);
  } catch (error) {
    context.log.error({ event: 'admin.kick_forget_failed', user, err: error instanceof Error ? error.message : String(error) }, 'the caches could not forget the user');
  }
  return { sessions, forgotten };
}

/** Resolves at the event loop's next turn, once what waits for I/O has run. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Closes the `sessions` of a kick CLOSE_BATCH_SESSIONS at a time, a turn of the event loop
 * between batches; returns those it closed. One whose session ended before its turn (its client
 * logged out) is left out: the kick did not close it.
 */
async function closeInTurns(registry: SessionRegistry, sessions: readonly SessionEntry[]): Promise<SessionEntry[]> {
  const closed: SessionEntry[] = [];
  for (let start = 0; start < sessions.length; start += CLOSE_BATCH_SESSIONS) {
    if (start > 0) await nextTurn();
    for (const s of sessions.slice(start, start + CLOSE_BATCH_SESSIONS)) {
      if (!registry.holds(s)) continue;
      s.close('kicked');
      closed.push(s);
    }
  }
  return closed;
}

/** The subject an unthrottle names: `{"user"}` (normalised as a login's name is) or `{"address"}` (an IP address, as the throttle counts it). */
function throttleSubjectOf(body: Record<string, unknown>, context: AdminContext): { user: string } | { address: string } {
  const { user, address } = body;
  if (typeof user === 'string' && address === undefined) {
    const normalised = normalizeUser(user, context.usernames());
    if (normalised === null) throw new MailfrontError('INVALID_USERNAME', 'client-protocol', 'not a valid user name');
    return { user: countedUser(normalised, context.usernames()) };
  }
  if (typeof address === 'string' && user === undefined) {
    const trimmed = address.trim();
    if (isIP(trimmed) === 0) throw new MailfrontError('ADMIN_BAD_REQUEST', 'client-protocol', `"${address.slice(0, 64)}" is not an IP address`);
    return { address: trimmed };
  }
  throw new MailfrontError('ADMIN_BAD_REQUEST', 'client-protocol', 'body must be {"user": "<user name>"} or {"address": "<client IP address>"}');
}

async function route(context: AdminContext, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  const parts = url.pathname.split('/').filter(Boolean).map(decodePathPart); // ['api', ...]
  // HEAD is GET without the body (RFC 9110 §9.3.2); node sends no body to a HEAD request.
  const method = req.method === 'HEAD' ? 'GET' : (req.method ?? 'GET');
  const [, resource, name, action] = parts;
  // Every endpoint has an exact number of segments: more are a path that names nothing (POST
  // /api/kick/x must not kick, nor /api/stores/alpha/failover/x fail over), not extras to ignore.
  const segments = parts.length;
  if (method === 'GET' && resource === 'stores' && segments === 2) {
    // The map in force when the request came, whatever a reload or failover puts in force while
    // its view is made (a map is never changed, a new one replaces it); the health and session
    // counts are as each batch is made.
    const map = context.holder.current;
    const head = fieldsJson({ version: map.version, lastReload: context.holder.last });
    const answer = new JsonInTurns().text(`{${head}${head === '' ? '' : ','}"stores":`);
    await answer.list([...map.stores.values()], (store) => storeView(store, context.registry, context.health), STORES_PER_TURN);
    return answer.text('}').send(res, 200);
  }
  if (method === 'GET' && resource === 'stores' && name !== undefined && segments === 3) {
    // One store's view, in the shape of the answer for all of them, whose view of a large map
    // takes long to build for an operator asking about one (about 300 ms and 37 MB of JSON at
    // 50,000 stores of three slots).
    const map = context.holder.current;
    const store = map.stores.get(name);
    if (store === undefined) throw new MailfrontError('UNKNOWN_STORE', 'no-route', `store "${name}" is not in the store map (version ${map.version})`);
    return send(res, 200, { version: map.version, lastReload: context.holder.last, stores: [storeView(store, context.registry, context.health)] });
  }
  if (method === 'GET' && resource === 'sessions' && segments === 2) {
    const user = url.searchParams.get('user');
    const normalised = user === null ? null : normalizeUser(user, context.usernames());
    // A name that is no user is the caller's mistake, not "no filter": listing everyone would mislead.
    if (user !== null && normalised === null) throw new MailfrontError('INVALID_USERNAME', 'client-protocol', 'not a valid user name');
    const store = url.searchParams.get('store');
    const slot = url.searchParams.get('slot');
    // A user is found as whereis finds one: a session carries the entry's own name (the logs'
    // `user`), and the name asked may be an alias the user filter matched. Without an answer
    // from the directory, the sessions under the name asked are listed, and the answer says so.
    let ofUser: SessionEntry[] | undefined;
    let entry: { dn: string; loginName: string | null } | null | undefined;
    let lookupFailed: string | undefined;
    if (normalised !== null) {
      const found = await adminLookup(context.directory(), normalised).catch((error: unknown) => {
        lookupFailed = asMailfrontError(error).message;
        return null;
      });
      entry = found === null ? null : { dn: found.dn, loginName: loginNameOf(found, normalised, context) };
      ofUser = context.registry.ofUserAndEntries(normalised, found === null ? [] : [found.dn]);
    }
    // The sessions open when the request came: one that ends while the answer is made is shown as it was.
    const sessions = (ofUser ?? context.registry.all()).filter((s) => (store === null || s.store === store) && (slot === null || s.slot === slot));
    const answer = new JsonInTurns().text('{"sessions":');
    await answer.list(sessions, sessionView, SESSIONS_PER_TURN);
    const rest = fieldsJson({ ...(entry !== undefined && lookupFailed === undefined ? { entry } : {}), ...(lookupFailed !== undefined ? { lookupFailed } : {}) });
    return answer.text(rest === '' ? '}' : `,${rest}}`).send(res, 200);
  }
  if (method === 'GET' && resource === 'whereis' && name !== undefined && segments === 3) {
    const user = normalizeUser(name, context.usernames());
    if (user === null) throw new MailfrontError('INVALID_USERNAME', 'client-protocol', 'not a valid user name');
    const found = await adminLookup(context.directory(), user);
    if (found === null) throw new MailfrontError('UNKNOWN_USER', 'no-route', `no directory entry for "${user}"`);
    const map = context.holder.current;
    const store = found.store === null ? undefined : map.stores.get(found.store);
    const master = store?.slots.get(store.currentMaster);
    const loginName = loginNameOf(found, user, context);
    const account = await adminAccountState(context.directory(), found);
    const reset = account?.passwordReset === true ? `an administrator reset the password (${account.passwordResetBy ?? 'pwdReset TRUE'}): with the policy's pwdMustChange (389 DS: passwordMustChange), its password logins are refused until it is changed` : null;
    const problem =
      found.hold !== undefined
        ? `the directory holds the user (directory.hold_attribute): its logins are refused with "${found.hold}"`
        : found.store === null
          ? 'the directory entry names no store'
          : store === undefined
            ? `store "${found.store}" is not in the store map`
            : store.maintenance !== null
              ? `store "${found.store}" is in maintenance: its logins are refused with "${store.maintenance}"`
              : loginName === null
                ? `the directory entry has several login names, none of them "${user}": its logins under this name are refused (USER_LOGIN_AMBIGUOUS)`
                : null;
    // What the directory says now, and what this instance would do from its caches meanwhile.
    const fromCache = cacheView(context, user, found);
    // A lock first: the user is told a wrong password, which is what the desk is asked about.
    const problems = [lockProblem(account), reset, problem, fromCache.problem].filter((p): p is string => p !== null);
    return send(res, 200, {
      user,
      loginName,
      dn: found.dn,
      store: found.store,
      currentMaster: store?.currentMaster ?? null,
      address: master ? `${master.host}` : null,
      ports: master ? { imap: master.imapPort, imaps: master.imapsPort, pop3: master.pop3Port, pop3s: master.pop3sPort, sieve: master.sievePort } : null,
      maintenance: store?.maintenance ?? null,
      held: found.hold ?? null,
      // Absent: a directory without lock attributes; null: not locked; `unknown`: the service account cannot read them all.
      ...(account !== undefined ? { locked: account.lock === null ? null : account.lock === 'unreadable' ? { unknown: `not readable: the service account may not read ${(account.hidden ?? []).join(', ') || 'the entry'}` } : account.lock } : {}),
      // A lockout whose end has passed: not a lock, though the attribute stays until the next good bind.
      ...(account?.lockEnded !== undefined ? { lockEnded: account.lockEnded } : {}),
      // A pwdAccountLockedTime slapd does not enforce: the policy's pwdLockout is not TRUE, or it is in the future.
      ...(account?.lockIgnored !== undefined ? { lockIgnored: account.lockIgnored } : {}),
      ...(account !== undefined ? { passwordReset: account.passwordReset, ...(account.passwordResetBy !== undefined ? { passwordResetBy: account.passwordResetBy } : {}) } : {}),
      problem: problems.length === 0 ? null : problems.join('; '),
      cached: fromCache.cached,
      // Every session of the entry, under whichever of its names it logged in.
      sessions: context.registry.ofUserAndEntries(user, [found.dn]).map(sessionView),
      // The throttle counts the name typed: the name asked, and the entry's own when another.
      throttle: await throttleView(context, loginName === null || loginName === user ? [user] : [user, loginName]),
    });
  }
  if (method === 'POST' && resource === 'stores' && name !== undefined && action === 'failover' && segments === 4) {
    const body = await readJson(req);
    const slot = body['slot'];
    if (typeof slot !== 'string' || slot === '') throw new MailfrontError('ADMIN_BAD_REQUEST', 'client-protocol', 'body must be {"slot": "<slot name>"}');
    context.log.warn({ event: 'admin.failover', store: name, slot }, 'failover requested through the admin API');
    const result = await context.holder.failover(name, slot);
    return send(res, result.ok ? 200 : 500, result);
  }
  if (method === 'POST' && resource === 'stores' && name !== undefined && action === 'maintenance' && segments === 4) {
    const body = await readJson(req);
    const on = body['on'];
    const reason = body['reason'];
    if (typeof on !== 'boolean' || (reason !== undefined && (typeof reason !== 'string' || !on))) throw new MailfrontError('ADMIN_BAD_REQUEST', 'client-protocol', 'body must be {"on": true}, {"on": true, "reason": "<text clients are told>"} or {"on": false}');
    context.log.warn({ event: 'admin.maintenance', store: name, on, ...(reason !== undefined ? { reason } : {}) }, 'maintenance switched through the admin API');
    const result = await context.holder.setMaintenance(name, on ? (reason ?? true) : false);
    return send(res, result.ok ? 200 : 500, result);
  }
  if (method === 'POST' && resource === 'kick' && segments === 2) {
    const body = await readJson(req);
    let sessions: SessionEntry[];
    let forgotten: number | undefined;
    if (typeof body['user'] === 'string') {
      const user = normalizeUser(body['user'], context.usernames());
      if (user === null) throw new MailfrontError('INVALID_USERNAME', 'client-protocol', 'not a valid user name');
      ({ sessions, forgotten } = await kickUser(context, user));
    } else if (typeof body['slot'] === 'string') {
      const slot = body['slot'];
      // The sessions on the slot when the kick came: one spliced to it while the kick runs is
      // left alone, as before (a kick holds no slot: failover or maintenance keep logins off it).
      const onSlot = context.registry.onSlot(slot);
      // A slot no store has (a typo) is said so: "closed 0 sessions" would read as done. A slot a
      // reload took out of the store map may still carry sessions: those are closed.
      if (onSlot.length === 0 && ![...context.holder.current.stores.values()].some((store) => store.slots.has(slot))) {
        throw new MailfrontError('UNKNOWN_SLOT', 'no-route', `no store has a slot "${slot}" (store map version ${context.holder.current.version}), and no session is on one`);
      }
      // In batches, not in one turn (CLOSE_BATCH_SESSIONS); answered once all are closed.
      sessions = await closeInTurns(context.registry, onSlot);
    } else if (typeof body['session'] === 'string') {
      const id = body['session'];
      sessions = context.registry.all().filter((s) => s.id === id);
      // As for a slot: "closed 0 sessions" would read as done, for a mistyped id or a session that had already ended.
      if (sessions.length === 0) throw new MailfrontError('UNKNOWN_SESSION', 'no-route', `no session "${id}" (it ended, or never was: mailfront sessions lists those open)`);
      for (const s of sessions) s.close('kicked');
    } else {
      throw new MailfrontError('ADMIN_BAD_REQUEST', 'client-protocol', 'body must name a "user", a "slot" or a "session"');
    }
    context.log.warn({ event: 'admin.kick', user: body['user'], slot: body['slot'], session: body['session'], sessions: sessions.length, forgotten }, 'kick requested through the admin API');
    const answer = new JsonInTurns().text('{"kicked":');
    await answer.list(sessions, sessionView, SESSIONS_PER_TURN);
    return answer.text(forgotten !== undefined ? `,"forgotten":${JSON.stringify(forgotten)}}` : '}').send(res, 200);
  }
  if (method === 'POST' && resource === 'unthrottle' && segments === 2) {
    const body = await readJson(req);
    const subject = throttleSubjectOf(body, context);
    const throttle = context.throttle;
    const release = throttle === undefined ? null : await throttle.clear(subject);
    if (release === null) return send(res, 200, { ...subject, throttle: 'off' });
    const { key, failures, limit, refusedForMs, from } = release.before;
    context.log.info({ event: 'admin.unthrottled', ...subject, key, failures, refusedForMs, read: from, cleared: release.cleared }, 'throttle counts cleared through the admin API');
    return send(res, 200, { ...subject, key, before: { failures, limit, refusedForMs, from }, cleared: release.cleared });
  }
  if (method === 'POST' && resource === 'reload' && segments === 2) {
    const body = await readJson(req);
    const accept = body['acceptOlderStoreMap'];
    // Checked whole: a misspelt key would reload without what was asked, and say it took.
    if (Object.keys(body).some((key) => key !== 'acceptOlderStoreMap') || (accept !== undefined && typeof accept !== 'boolean')) {
      throw new MailfrontError('ADMIN_BAD_REQUEST', 'client-protocol', 'body must be empty, {} or {"acceptOlderStoreMap": true}');
    }
    if (accept === true) context.log.warn({ event: 'admin.reload_accept_older' }, 'reload requested through the admin API, putting in force a store map older than the one in force if the LDAP server read is behind it');
    const { ok, error, storeMap } = await context.reload({ acceptOlderStoreMap: accept === true });
    return send(res, 200, { ok: ok && storeMap.ok, config: { ok, ...(error !== undefined ? { error } : {}) }, storeMap });
  }
  send(res, 404, { error: `no such endpoint: ${req.method ?? method} ${url.pathname}` });
}
