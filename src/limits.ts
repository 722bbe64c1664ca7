/**
 * Size and time bounds of mailfront, with units in the names and the reason: the ones several
 * modules share, and most of the client and backend sessions'. Not all of them: a bound that one
 * module alone uses (the HTTP listener's, a parser's, a cache's) may be defined by its code, with
 * its reason there. Config may override the ones marked "default"; the others are fixed.
 */

/** Longest pre-auth command line we accept (RFC 7162 §4 recommends 8192 octets for servers). */
export const MAX_LINE_BYTES = 8192;

/** Largest literal before login: a LOGIN/AUTHENTICATE argument never needs more. */
export const MAX_PREAUTH_LITERAL_BYTES = 4096;

/** Largest non-synchronising literal ({N+}) accepted before login; RFC 7888 LITERAL- bound. */
export const MAX_NONSYNC_LITERAL_BYTES = 4096;

/**
 * Longest OAuth access token (OAUTHBEARER, XOAUTH2) taken, in bytes. Signed JWTs from Keycloak
 * or Microsoft Entra carrying realm roles and groups run 4 to 8 KB. The backends take a SASL
 * response of up to 8192 base64 characters (Dovecot 2.3, LOGIN_MAX_AUTH_BUF_SIZE: about 6 KB of
 * token) and 16 KiB decoded (Cyrus, saslserver.c's BASE64_BUF_SIZE), so a client refused here
 * would not have been there. A longer token is refused before any JSON or signature is looked at
 * (the verifier's work per login stays bounded; its cache keys tokens by an HMAC, not as they are).
 */
export const MAX_OAUTH_TOKEN_BYTES = 16 * 1024;

/**
 * Base64 characters of one bearer mechanism's SASL client response (an initial response, or one
 * answering a challenge): a token at its bound and 1 KiB for the rest of the message (the GS2
 * header and user, host and port pairs of OAUTHBEARER; XOAUTH2's user). 23,212.
 */
export const MAX_SASL_RESPONSE_BYTES = 4 * Math.ceil((MAX_OAUTH_TOKEN_BYTES + 1024) / 3);

/**
 * Longest AUTHENTICATE command line (IMAP, ManageSieve; AUTH in POP3) naming OAUTHBEARER or
 * XOAUTH2, and SASL response line or string of theirs, before login: any other line's bound plus
 * a response at its largest (31,404 bytes). Only where the bearer mechanisms are offered (oauth2
 * set, plaintext credentials allowed): without oauth2 a pre-auth session holds at most
 * MAX_LINE_BYTES of a line, as before tokens this long were taken (with oauth2, this much, well
 * under what a pending login may hold, MAX_PIPELINED_HELD_BYTES). PLAIN and LOGIN keep
 * MAX_LINE_BYTES: Dovecot closes on a SASL response over 8191 characters, so a longer password
 * could never log in there.
 */
export const MAX_AUTHENTICATE_LINE_BYTES = MAX_LINE_BYTES + MAX_SASL_RESPONSE_BYTES;

/** Bad or unknown commands tolerated before login before the connection is closed. */
export const MAX_BAD_COMMANDS = 5;

/** Commands (of any kind) accepted before login: a client that needs more is not a mail client. */
export const MAX_PREAUTH_COMMANDS = 50;

/** Failed login attempts on one connection before it is closed. */
export const MAX_AUTH_ATTEMPTS = 3;

/** Default time from accept to a successful login (Dovecot's login_timeout is 60 s too). */
export const DEFAULT_PREAUTH_TIMEOUT_MS = 60_000;

/** Default idle time for a spliced session: RFC 9051 §5.4 asks servers to allow 30 min of inactivity. */
export const DEFAULT_IDLE_TIMEOUT_MS = 31 * 60_000;

/**
 * A spliced session whose upload is held back because the backend does not read (backpressure),
 * with nothing queued for the client and nothing moving either way for this long (or the idle
 * timeout, if shorter), is ended as 'stalled'. While paused, the client's socket is not read, so
 * its close is never seen: clients that hung up on a backend that stopped reading kept their
 * sessions (and two descriptors each, counted by max_sessions_per_user and max_connections) for
 * the idle timeout. IMAP clients give up on a command answered in nothing much sooner
 * (Thunderbird after 100 s). Downloads are not checked: a client that reads, however slowly, is
 * never cut as stalled (its socket is read, or written to, meanwhile, so its close is seen anyway).
 */
export const SPLICE_STALL_TIMEOUT_MS = 5 * 60_000;

/** Default time to connect to a backend slot. */
export const DEFAULT_BACKEND_CONNECT_TIMEOUT_MS = 5_000;

/** Default time for the whole backend login dialogue after connect. */
export const DEFAULT_BACKEND_LOGIN_TIMEOUT_MS = 15_000;

/** Default time for one LDAP operation, and to connect to an LDAP server. */
export const DEFAULT_LDAP_OPERATION_TIMEOUT_MS = 5_000;
export const DEFAULT_LDAP_CONNECT_TIMEOUT_MS = 3_000;

/** Delay before answering a failed login: same for unknown user and wrong password. */
export const DEFAULT_AUTH_FAILURE_DELAY_MS = 2_000;

/**
 * Bytes one backend response in the login dialogue may take (its literals, a ManageSieve
 * capability list, included) before the backend is called broken. POP3's replies are one line
 * each, so there it bounds the whole dialogue.
 */
export const MAX_BACKEND_RESPONSE_BYTES = 64 * 1024;

/**
 * Bytes and responses (lines, for ManageSieve) one whole IMAP or ManageSieve backend login
 * dialogue may take. Untagged responses are ignored while a login waits for its tagged one, so
 * without a bound on the dialogue a backend streaming "* OK filler" kept the login parsing on
 * the event loop until the login timeout (8 s of CPU in 15 s for one login). Real dialogues are
 * a few KiB and at most about 25 responses (Cyrus with STARTTLS: its capability list twice,
 * 9 lines each; Dovecot's post-login capability list, the longest line, is under 1 KiB).
 */
export const MAX_BACKEND_DIALOGUE_BYTES = 256 * 1024;
export const MAX_BACKEND_DIALOGUE_RESPONSES = 100;

/**
 * Pipelined client bytes kept while a login is in progress before the session stops reading the
 * client: the rest waits in the kernel's buffers (TCP flow control) until the login is answered,
 * then goes to the backend through the splice, or is read as pre-auth commands after a refusal.
 * RFC 9051 §5.5 and RFC 2449 §6.6 let clients pipeline any amount behind their login (a client
 * resyncing a mailbox sends thousands of FETCHes), so reaching this is no reason to end a session.
 */
export const MAX_PIPELINED_BYTES = 64 * 1024;

/**
 * The most pipelined bytes a pre-auth machine holds behind a pending login at all: the bound
 * above plus the reads that may still come in once the session stops reading (one read is at
 * most 64 KiB). Only a session that went on feeding the machine past MAX_PIPELINED_BYTES could
 * reach it, and the connection is then closed ([LIMIT]) rather than the buffer grown.
 */
export const MAX_PIPELINED_HELD_BYTES = 4 * MAX_PIPELINED_BYTES;

/**
 * How long a socket mailfront closes on purpose (a refused connection, a splice that ends, the
 * HTTP listener that stops) may take to send what is queued for it before it is destroyed: a last
 * line reaches a client that reads, and a peer that does not read cannot hold its descriptor open.
 */
export const CLOSE_GRACE_MS = 1_000;

/**
 * The least time between two log lines about the connections one limit refused (the mail
 * listeners' limits, and the HTTP listener's): a flood gets a line per interval, not per connection.
 */
export const REFUSED_LOG_INTERVAL_MS = 10_000;

/**
 * Bytes an LDAP server may send in answer to one operation of the directory (a user search, a
 * bind) before its connection is closed. A user's entry with the store attribute is well under
 * 1 KiB; ldapts keeps a whole message, and every entry of a search until its end, in memory
 * (about six times their size), so a server that ignores sizeLimit or announces a huge entry
 * would otherwise grow the heap until the operation deadline.
 */
export const MAX_LDAP_ANSWER_BYTES = 256 * 1024;

/**
 * Bytes the store-map LDAP source may receive for one store-map search by default, all its pages
 * together (and so for any one page: a server without paging sends the whole map as one answer);
 * store_map.ldap.max_answer_bytes sets it. A store with two slots is about 850 bytes of entries
 * (OpenLDAP), so this holds about 75,000 such stores; ldapts holds about six times the bytes of a
 * page while reading it.
 */
export const MAX_STOREMAP_LDAP_ANSWER_BYTES = 64 * 1024 * 1024;

/**
 * The most entries a cache may be set to hold (directory.cache_max_entries, throttle.max_tracked).
 * lru-cache allocates its index for the whole maximum when a cache is made: 44 bytes an entry
 * (measured, lru-cache 11 on Node 20), so 88 MB and about half a second of blocked event loop per
 * cache at this bound. At 10,000,000 each cache took 440 MB and 1.3 s, and serve with both keys
 * there (five caches, Redis set) used 1.6 GB idle and aborted under a 1 GB old space.
 */
export const MAX_CACHE_ENTRIES = 2_000_000;

/**
 * Longest maintenance reason a store map may give (UTF-8 bytes): one sentence, sent in a login's
 * refusal and a drain's BYE, and short enough for a phone's notification.
 */
export const MAX_MAINTENANCE_REASON_BYTES = 200;

/**
 * How many sessions are closed in one turn of the event loop when many are closed on purpose (a
 * kick of a slot, a failover's or maintenance's drain, the end of a stop), a turn between
 * batches. Each close writes the client's last line, closes two sockets and logs a line, about
 * 0.1 ms of the loop, and a slot or store holds up to 30,000 sessions: 5,000 closed in one turn
 * held the loop 1.1 to 1.5 s, while no login, scrape or admin request was served. The longest
 * turn of a kick measured 13 to 23 ms of CPU with 25 a turn, 47 to 56 ms with 100 and 110 to
 * 130 ms with 400, and the whole kick took no longer (src/server/admin.ts, proxy/drain-schedule.ts).
 */
export const CLOSE_BATCH_SESSIONS = 25;
