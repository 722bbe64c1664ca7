/**
 * TLS for client-facing listeners: the policy (lowest protocol version, cipher list, whose cipher
 * order wins, session tickets and the key that seals them) read from config with safe defaults,
 * and a holder of a listener's certificates and keys as SecureContexts, picked by the server name
 * a client asks for (SNI), that can be reloaded (SIGHUP) without ever giving up working ones.
 * Must not: log, bind sockets, or watch files (the caller decides when to reload and what to say).
 */
import { readFileSync } from 'node:fs';
import { X509Certificate, constants, createPrivateKey, timingSafeEqual } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { SecureContext, SecureContextOptions, TlsOptions } from 'node:tls';
import type { TlsFiles } from '../config/schema.js';
import { IssueList, at, bool, oneOf, optStr, readSection, str } from '../config/validate.js';
import { MailfrontError } from '../errors.js';

/** The lowest TLS version offered; TLS 1.0 and 1.1 are deprecated by RFC 8996. */
export type TlsMinVersion = 'TLSv1.2' | 'TLSv1.3';

/** How the listeners speak TLS. */
export interface TlsPolicy {
  readonly minVersion: TlsMinVersion;
  /** OpenSSL cipher list; TLS 1.3 suites (TLS_…) may be named in it too, else Node's TLS 1.3 defaults apply. */
  readonly ciphers: string;
  /** Prefer the server's cipher order over the client's. */
  readonly honorCipherOrder: boolean;
  /**
   * Issue session tickets, with which a client resumes its TLS session. Off, an IMAPS login
   * costs about 3 % less CPU (OpenSSL makes two tickets after each TLS 1.3 handshake:
   * docs/performance.md, "Session tickets"), and no ticket key lives as long as the process (node
   * makes one per context and never rotates it), but no client resumes.
   */
  readonly sessionTickets: boolean;
  /**
   * The key session tickets are sealed with (tls.session_ticket_key_file), the same for every
   * listener and certificate. Without it node makes one at random for each context, so a ticket
   * is good only until the next reload and only on the instance that gave it.
   */
  readonly ticketKey?: TicketKey;
}

/** How many bytes a ticket key file holds: what node's ticketKeys takes (16 for the key's name, 16 for HMAC, 16 for AES-128). */
export const TICKET_KEY_BYTES = 48;

/**
 * The bytes of tls.session_ticket_key_file, kept out of sight: anyone with them can open every
 * ticket sealed with them, and so the sessions resumed with those tickets. JSON.stringify, a log
 * line and util.inspect show the file's name only (the bytes are a private field).
 */
export class TicketKey {
  readonly #bytes: Buffer;

  constructor(
    /** The file, as the config names it (resolved). */
    readonly file: string,
    bytes: Buffer,
  ) {
    this.#bytes = Buffer.from(bytes);
  }

  /** The key as node's ticketKeys option takes it (a copy: the original never leaves). */
  get bytes(): Buffer {
    return Buffer.from(this.#bytes);
  }

  equals(other: TicketKey | undefined): boolean {
    return other !== undefined && timingSafeEqual(this.#bytes, other.#bytes);
  }

  toJSON(): { file: string } {
    return { file: this.file };
  }
}

/**
 * Reads tls.session_ticket_key_file: exactly TICKET_KEY_BYTES bytes, as `openssl rand 48 >
 * FILE` writes them. Undefined, with an issue, when it cannot be read or holds anything else.
 */
function readTicketKey(file: string, keyPath: string, issues: IssueList): TicketKey | undefined {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (error) {
    issues.addFinding(keyPath, `a readable file (${file})`, (error as NodeJS.ErrnoException).code ?? String(error));
    return undefined;
  }
  if (bytes.length !== TICKET_KEY_BYTES) {
    // `openssl rand -base64 48` and `-hex 48` write text: 65 and 97 bytes with their line break.
    const text = /^[A-Za-z0-9+/=\s]+$/.test(bytes.toString('latin1')) ? ', text (the key is the random bytes themselves, not their base64 or hex)' : '';
    issues.addFinding(keyPath, `a file of exactly ${TICKET_KEY_BYTES} random bytes, as \`openssl rand ${TICKET_KEY_BYTES} > FILE\` writes (${file})`, `${bytes.length} bytes${text}`);
    return undefined;
  }
  return new TicketKey(file, bytes);
}

/**
 * Mozilla's "intermediate" list (server-side TLS guidelines v5.7) without its DHE suites, which
 * need a dhparam file: forward secrecy and AEAD only, and every mail client since about 2014.
 */
export const INTERMEDIATE_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/** Defaults: TLS 1.2 and up, the intermediate list, and the client's order (all listed suites are strong; phones prefer ChaCha20). */
export const TLS_POLICY_DEFAULTS: TlsPolicy = Object.freeze({ minVersion: 'TLSv1.2', ciphers: INTERMEDIATE_CIPHERS, honorCipherOrder: false, sessionTickets: true });

/**
 * Reads a TLS policy section (absent: defaults); a cipher list OpenSSL cannot use is an issue, and
 * so is a ticket key file that cannot be read, holds anything but the key, or is given with
 * session tickets off. `resolvePath` makes the key file's name absolute.
 */
export function readTlsPolicy(v: unknown, path: string, issues: IssueList, resolvePath: (p: string) => string = (p) => p): TlsPolicy {
  const o = v === undefined ? {} : readSection(v, path, ['min_version', 'ciphers', 'honor_cipher_order', 'session_tickets', 'session_ticket_key_file'], issues) ?? {};
  const d = TLS_POLICY_DEFAULTS;
  const sessionTickets = bool(o, 'session_tickets', path, issues, d.sessionTickets);
  const keyPath = at(path, 'session_ticket_key_file');
  const keyFile = optStr(o, 'session_ticket_key_file', path, issues);
  let ticketKey: TicketKey | undefined;
  if (keyFile !== undefined) {
    if (!sessionTickets) issues.addFinding(keyPath, 'no ticket key file while session_tickets is false (no ticket is made to be sealed with it)', 'a key file');
    else ticketKey = readTicketKey(resolvePath(keyFile), keyPath, issues);
  }
  const policy: TlsPolicy = {
    minVersion: oneOf<TlsMinVersion>(o, 'min_version', path, issues, ['TLSv1.2', 'TLSv1.3'], d.minVersion),
    ciphers: str(o, 'ciphers', path, issues, d.ciphers),
    honorCipherOrder: bool(o, 'honor_cipher_order', path, issues, d.honorCipherOrder),
    sessionTickets,
    ...(ticketKey !== undefined ? { ticketKey } : {}),
  };
  try {
    createSecureContext(policyOptions(policy));
  } catch (error) {
    issues.add(at(path, 'ciphers'), `an OpenSSL cipher list with at least one usable suite (${error instanceof Error ? error.message : String(error)})`, policy.ciphers);
  }
  return policy;
}

/**
 * The policy as context options. TLS 1.2 renegotiation is refused outright: no mail client needs
 * it, and a client-initiated one costs the server a full handshake each time (Node only closes the
 * connection after the third in ten minutes). Implicit-TLS and STARTTLS sockets both take it from
 * the holder's context. Without session tickets nothing resumes: a TLS socket made over an
 * accepted one has no session cache (node keeps none; tls.Server's is its 'newSession' events).
 */
function policyOptions(policy: TlsPolicy): SecureContextOptions {
  const secureOptions = constants.SSL_OP_NO_RENEGOTIATION | (policy.sessionTickets ? 0 : constants.SSL_OP_NO_TICKET);
  return { minVersion: policy.minVersion, ciphers: policy.ciphers, honorCipherOrder: policy.honorCipherOrder, secureOptions, ...(policy.ticketKey !== undefined ? { ticketKeys: policy.ticketKey.bytes } : {}) };
}

/** Facts about a certificate in force, for logs and metrics. */
export interface CertificateInfo {
  readonly subject: string;
  readonly validFrom: Date;
  readonly validTo: Date;
  readonly fingerprint256: string;
  /** The certificate file, as the config names it (resolved). */
  readonly file: string;
  /**
   * The DNS names it is for, lower-cased: its subjectAltName's DNS entries, or its subject's CN
   * when it has none (RFC 6125 section 6.4.4, as browsers do).
   */
  readonly names: readonly string[];
}

/** A listener's certificates as its config gives them: one (`certificate`), or a list (`certificates`, the first the default). */
export type ListenerCertificates = TlsFiles | readonly TlsFiles[];

/** Node's SNICallback: the context for the server name a client asked for. */
export type SniCallback = NonNullable<TlsOptions['SNICallback']>;

/**
 * A listener's certificate files that cannot be used (TLS_FILES_UNUSABLE, kind `config`), with
 * where its config names them.
 */
export class TlsFilesError extends MailfrontError {
  constructor(
    message: string,
    /**
     * The key under the listener that is at fault: `certificate` (for one certificate), or
     * `certificates[M]`, with `.cert` or `.key` when one file of the pair is (unreadable, not PEM,
     * expired).
     */
    readonly configKey: string,
    options?: { cause?: unknown },
  ) {
    super('TLS_FILES_UNUSABLE', 'config', message, options);
  }
}

function samePolicy(a: TlsPolicy, b: TlsPolicy): boolean {
  const sameKey = a.ticketKey === undefined ? b.ticketKey === undefined : a.ticketKey.equals(b.ticketKey);
  return a.minVersion === b.minVersion && a.ciphers === b.ciphers && a.honorCipherOrder === b.honorCipherOrder && a.sessionTickets === b.sessionTickets && sameKey;
}

/** What reload() did: `certificate` is the default one (the first), `certificates` all of them in config order. */
export type TlsReloadResult =
  | { readonly ok: true; readonly certificate: CertificateInfo; readonly certificates: readonly CertificateInfo[] }
  | { readonly ok: false; readonly error: MailfrontError };

interface LoadedCertificate {
  readonly options: SecureContextOptions;
  readonly context: SecureContext;
  readonly certificate: CertificateInfo;
}

interface Loaded {
  /** In config order; never empty. The first is the default. */
  readonly all: readonly LoadedCertificate[];
  /** Contexts by DNS name; a name two certificates are for goes to the first. */
  readonly exact: ReadonlyMap<string, SecureContext>;
  /** Contexts by what follows a wildcard's `*.` (`*.example.com`: `example.com`); the first wins too. */
  readonly wildcard: ReadonlyMap<string, SecureContext>;
}

/** A DNS name as a certificate or a client gives it, for comparing: lower-cased, without a final dot. */
function normalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Whether a name can be matched: letters, digits, hyphens and underscores in dot-separated labels, or `*.` and such a name. */
const MATCHABLE_NAME = /^(?:\*\.)?[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$/;

/**
 * The DNS names `x509` is for (see CertificateInfo.names). Node writes a subjectAltName entry
 * holding a comma or a quote as a JSON string (`DNS:"a,b"`); such a name matches no host anyway.
 */
function dnsNamesOf(x509: X509Certificate): string[] {
  const names: string[] = [];
  for (const match of (x509.subjectAltName ?? '').matchAll(/(?:^|, )([^:,]+):("(?:[^"\\]|\\.)*"|[^,]*)/g)) {
    const [, type = '', value = ''] = match;
    if (type !== 'DNS') continue;
    const name = normalName(value.startsWith('"') ? String(JSON.parse(value)) : value);
    if (name !== '' && !names.includes(name)) names.push(name);
  }
  if (names.length > 0) return names;
  // Without a DNS entry, the CN: the last, the most specific (as OpenSSL's host check takes it).
  const cn = [...x509.subject.matchAll(/^CN=(.*)$/gm)].at(-1)?.[1];
  return cn !== undefined && MATCHABLE_NAME.test(normalName(cn)) ? [normalName(cn)] : [];
}

/**
 * The index of `all` by name. RFC 6125 section 6.4.3 wildcards only: `*` as the whole leftmost
 * label, matching exactly one label (`*.example.com` is for `a.example.com`, not `example.com`
 * nor `a.b.example.com`); partial ones (`w*.example.com`), which browsers no longer accept, match nothing.
 */
function indexByName(all: readonly LoadedCertificate[]): Loaded {
  const exact = new Map<string, SecureContext>();
  const wildcard = new Map<string, SecureContext>();
  for (const { certificate, context } of all) {
    for (const name of certificate.names) {
      if (!MATCHABLE_NAME.test(name)) continue;
      const index = name.startsWith('*.') ? wildcard : exact;
      const key = name.startsWith('*.') ? name.slice(2) : name;
      if (!index.has(key)) index.set(key, context);
    }
  }
  return { all, exact, wildcard };
}

/** The context for a client that asked for `servername`: a certificate for that name, else one whose wildcard covers it, else the default. */
function contextFor(loaded: Loaded, servername: string): SecureContext {
  const name = normalName(servername);
  const exact = loaded.exact.get(name);
  if (exact !== undefined) return exact;
  const dot = name.indexOf('.');
  const wildcard = dot > 0 ? loaded.wildcard.get(name.slice(dot + 1)) : undefined;
  return wildcard ?? (loaded.all[0] as LoadedCertificate).context;
}

/**
 * Why the certificate at `index` (not the first) would never be given to a client: each of its
 * names is served by an earlier one (a renewed certificate listed after the one it replaces, say),
 * or it has none. Undefined when some name of it is its own.
 */
function neverServed(all: readonly LoadedCertificate[], index: number): string | undefined {
  const names = (all[index] as LoadedCertificate).certificate.names.filter((n) => MATCHABLE_NAME.test(n));
  if (names.length === 0) return 'it is for no DNS name (no subjectAltName DNS entry, nor a CN that is a host name; a partial wildcard such as w*.example.com is for none), so no client would be given it: only the first certificate is served to clients that ask for no name or another one';
  const earlier = all.slice(0, index).map((l) => l.certificate);
  const owner = (name: string): CertificateInfo | undefined => earlier.find((c) => c.names.includes(name));
  if (!names.every((n) => owner(n) !== undefined)) return undefined;
  const owners = [...new Set(names.map((n) => owner(n)?.file))].join(', ');
  return `no client would be given it: every name it is for (${names.join(', ')}) is served by a certificate listed before it (${owners}); the first in the list wins a name`;
}

/**
 * A listener's certificates, keys and policy as SecureContexts, replaceable only by working ones:
 * one certificate, or several picked by the client's SNI server name (the first the default).
 */
export class TlsContextHolder {
  private loaded: Loaded;

  /**
   * Loads the files now; throws a TlsFilesError naming the files (and the config key) when they
   * cannot be used. `replacing`: these files take over from working certificates (a reload that
   * names other files), so, as in reload(), one that has expired or is not valid yet is refused.
   */
  constructor(
    private readonly files: ListenerCertificates,
    private policy: TlsPolicy = TLS_POLICY_DEFAULTS,
    private readonly now: () => number = Date.now,
    replacing = false,
  ) {
    this.loaded = this.load(policy, replacing);
  }

  /** The default context (STARTTLS: `new TLSSocket(socket, { secureContext, SNICallback })`). */
  get context(): SecureContext {
    return this.defaultCertificate.context;
  }

  /** The default context's options (`tls.createServer(options)`, and `server.setSecureContext(options)` after a reload). */
  get options(): SecureContextOptions {
    return this.defaultCertificate.options;
  }

  /** The default certificate in force (the first). */
  get certificate(): CertificateInfo {
    return this.defaultCertificate.certificate;
  }

  /** Every certificate in force, in config order. */
  get certificates(): readonly CertificateInfo[] {
    return this.loaded.all.map((l) => l.certificate);
  }

  /**
   * The SNICallback that picks among the certificates in force at each handshake (a reload's
   * apply from the next one); undefined with one certificate, which needs none.
   */
  get sniCallback(): SniCallback | undefined {
    return this.loaded.all.length > 1 ? this.pick : undefined;
  }

  private readonly pick: SniCallback = (servername, done) => done(null, contextFor(this.loaded, servername));

  private get defaultCertificate(): LoadedCertificate {
    return this.loaded.all[0] as LoadedCertificate;
  }

  /**
   * Re-reads the files (and takes `policy` when given). On any problem, including a certificate
   * that has expired or is not valid yet, the certificates in force stay, all of them, under
   * `policy` (see keptUnder), and the error is returned.
   */
  reload(policy: TlsPolicy = this.policy): TlsReloadResult {
    try {
      this.loaded = this.load(policy, true);
      this.policy = policy;
      return { ok: true, certificate: this.certificate, certificates: this.certificates };
    } catch (error) {
      return { ok: false, error: this.keptUnder(policy, error) };
    }
  }

  /**
   * Other files in place of these (a reload that names them): a holder of them, or, when they
   * cannot be used, a MailfrontError, with this holder's certificates kept under `policy`.
   */
  replacedBy(files: ListenerCertificates, policy: TlsPolicy): TlsContextHolder {
    try {
      return new TlsContextHolder(files, policy, this.now, true);
    } catch (error) {
      throw this.keptUnder(policy, error);
    }
  }

  /** Whether `files` are the ones this holder reads, given the same way (one, or a list in the same order). */
  reads(files: ListenerCertificates): boolean {
    const mine = this.files;
    if (!Array.isArray(mine) || !Array.isArray(files)) {
      return !Array.isArray(mine) && !Array.isArray(files) && (mine as TlsFiles).cert === (files as TlsFiles).cert && (mine as TlsFiles).key === (files as TlsFiles).key;
    }
    return mine.length === files.length && mine.every((f, i) => f.cert === files[i]?.cert && f.key === files[i]?.key);
  }

  /**
   * After files that could not be used (`failure`): the certificates and keys in force, whose
   * bytes are kept, are set up under `policy`, so that a new TLS policy applies from the next
   * connection all the same, as the listener's other settings do (it stayed the old one, and a
   * listener whose certificate could not be re-read went on offering TLS 1.2 after min_version:
   * TLSv1.3). Returns the failure, saying what stays.
   */
  private keptUnder(policy: TlsPolicy, failure: unknown): MailfrontError {
    const error = failure instanceof MailfrontError ? failure : new TlsFilesError(failure instanceof Error ? failure.message : String(failure), this.configKey(), { cause: failure });
    const configKey = error instanceof TlsFilesError ? error.configKey : this.configKey();
    const several = this.loaded.all.length > 1;
    const kept = (what: string): MailfrontError => new TlsFilesError(`${error.message}; ${what}`, configKey, { cause: error });
    const inForce = several ? 'the certificates in force stay' : 'the certificate in force stays';
    if (samePolicy(policy, this.policy)) return kept(inForce);
    let all: LoadedCertificate[];
    try {
      all = this.loaded.all.map(({ options: { cert, key }, certificate }) => {
        const options: SecureContextOptions = { ...policyOptions(policy), cert, key };
        return { options, context: createSecureContext(options), certificate };
      });
    } catch (policyError) {
      // Not expected: the policy was tried when it was read, and the certificates were in use.
      return kept(`${inForce}, and so does the TLS policy in force: the new one cannot be used with ${several ? 'them' : 'it'} (${policyError instanceof Error ? policyError.message : String(policyError)})`);
    }
    this.loaded = indexByName(all);
    this.policy = policy;
    return kept(`${inForce}, with the new TLS policy`);
  }

  /** The config key of the files as a whole: `certificate` or `certificates`. */
  private configKey(index?: number): string {
    if (!Array.isArray(this.files)) return 'certificate';
    return index === undefined ? 'certificates' : `certificates[${index}]`;
  }

  private load(policy: TlsPolicy, checkValidity: boolean): Loaded {
    const list: readonly TlsFiles[] = Array.isArray(this.files) ? this.files : [this.files as TlsFiles];
    const all = list.map((files, i) => this.loadOne(files, policy, checkValidity, this.configKey(Array.isArray(this.files) ? i : undefined)));
    for (let i = 1; i < all.length; i++) {
      const why = neverServed(all, i);
      const files = list[i] as TlsFiles;
      if (why !== undefined) throw new TlsFilesError(`cannot use certificate ${files.cert} with key ${files.key}: ${why}`, this.configKey(i));
    }
    return indexByName(all);
  }

  private loadOne(files: TlsFiles, policy: TlsPolicy, checkValidity: boolean, configKey: string): LoadedCertificate {
    const { cert: certFile, key: keyFile } = files;
    // With a list, the file at fault is named when it is one of the pair.
    const fail = (why: string, file?: 'cert' | 'key'): never => {
      throw new TlsFilesError(`cannot use certificate ${certFile} with key ${keyFile}: ${why}`, file !== undefined && configKey !== 'certificate' ? `${configKey}.${file}` : configKey);
    };
    const read = (file: 'cert' | 'key'): Buffer => {
      try {
        return readFileSync(files[file]);
      } catch (error) {
        return fail((error as NodeJS.ErrnoException).code ?? String(error), file);
      }
    };
    const cert = read('cert');
    const key = read('key');
    let certificate: CertificateInfo;
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(cert);
      certificate = { subject: x509.subject.replace(/\n/g, ', '), validFrom: new Date(x509.validFrom), validTo: new Date(x509.validTo), fingerprint256: x509.fingerprint256, file: certFile, names: dnsNamesOf(x509) };
    } catch (error) {
      return fail(`not a PEM certificate (${error instanceof Error ? error.message : String(error)})`, 'cert');
    }
    // The key must be the first certificate's (the server's own, before its chain). OpenSSL
    // checks that only for a key of the certificate's own type: an EC key with an RSA
    // certificate (a move to ECDSA half done), or a chain file in the wrong order, loads, and
    // every handshake then fails.
    let matches: boolean;
    try {
      matches = x509.checkPrivateKey(createPrivateKey(key));
    } catch (error) {
      return fail(`the key cannot be read (${error instanceof Error ? error.message : String(error)})`, 'key');
    }
    if (!matches) fail('the key does not belong to the certificate (the first certificate of the file must be the server\'s own, its chain after it)');
    // Starting with an expired certificate is the operator's call; replacing a working one with it is not.
    if (checkValidity) {
      const now = this.now();
      if (now > certificate.validTo.getTime()) fail(`the certificate expired on ${certificate.validTo.toISOString()}`, 'cert');
      if (now < certificate.validFrom.getTime()) fail(`the certificate is not valid before ${certificate.validFrom.toISOString()}`, 'cert');
    }
    // Every certificate under the same policy: the one a handshake switches to by SNI brings its own context's settings.
    const options: SecureContextOptions = { ...policyOptions(policy), cert, key };
    let context: SecureContext;
    try {
      // Fails on a broken key, a key that does not belong to the certificate, or an unusable cipher list.
      context = createSecureContext(options);
    } catch (error) {
      return fail(error instanceof Error ? error.message : String(error));
    }
    return { options, context, certificate };
  }
}
