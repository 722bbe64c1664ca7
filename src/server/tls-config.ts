/**
 * TLS for client-facing listeners: the policy (lowest protocol version, cipher list, whose cipher
 * order wins) read from config with safe defaults, and a holder of the certificate and key as a
 * SecureContext that can be reloaded (SIGHUP) without ever giving up a working one.
 * Must not: log, bind sockets, or watch files (the caller decides when to reload and what to say).
 */
import { readFileSync } from 'node:fs';
import { X509Certificate, constants, createPrivateKey } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { SecureContext, SecureContextOptions } from 'node:tls';
import type { TlsFiles } from '../config/schema.js';
import { IssueList, at, bool, oneOf, readSection, str } from '../config/validate.js';
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
export const TLS_POLICY_DEFAULTS: TlsPolicy = Object.freeze({ minVersion: 'TLSv1.2', ciphers: INTERMEDIATE_CIPHERS, honorCipherOrder: false });

/** Reads a TLS policy section (absent: defaults); a cipher list OpenSSL cannot use is an issue. */
export function readTlsPolicy(v: unknown, path: string, issues: IssueList): TlsPolicy {
  const o = v === undefined ? {} : readSection(v, path, ['min_version', 'ciphers', 'honor_cipher_order'], issues) ?? {};
  const d = TLS_POLICY_DEFAULTS;
  const policy: TlsPolicy = {
    minVersion: oneOf<TlsMinVersion>(o, 'min_version', path, issues, ['TLSv1.2', 'TLSv1.3'], d.minVersion),
    ciphers: str(o, 'ciphers', path, issues, d.ciphers),
    honorCipherOrder: bool(o, 'honor_cipher_order', path, issues, d.honorCipherOrder),
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
 * the holder's context.
 */
function policyOptions(policy: TlsPolicy): SecureContextOptions {
  return { minVersion: policy.minVersion, ciphers: policy.ciphers, honorCipherOrder: policy.honorCipherOrder, secureOptions: constants.SSL_OP_NO_RENEGOTIATION };
}

/** Facts about the certificate in force, for logs and metrics. */
export interface CertificateInfo {
  readonly subject: string;
  readonly validFrom: Date;
  readonly validTo: Date;
  readonly fingerprint256: string;
}

function samePolicy(a: TlsPolicy, b: TlsPolicy): boolean {
  return a.minVersion === b.minVersion && a.ciphers === b.ciphers && a.honorCipherOrder === b.honorCipherOrder;
}

/** What reload() did. */
export type TlsReloadResult = { readonly ok: true; readonly certificate: CertificateInfo } | { readonly ok: false; readonly error: MailfrontError };

interface Loaded {
  readonly options: SecureContextOptions;
  readonly context: SecureContext;
  readonly certificate: CertificateInfo;
}

/** A listener's certificate, key and policy as a SecureContext, replaceable only by a working one. */
export class TlsContextHolder {
  private loaded: Loaded;

  /**
   * Loads the files now; throws a MailfrontError of kind `config` naming the files when they
   * cannot be used. `replacing`: these files take over from a working certificate (a reload that
   * names other files), so, as in reload(), one that has expired or is not valid yet is refused.
   */
  constructor(
    private readonly files: TlsFiles,
    private policy: TlsPolicy = TLS_POLICY_DEFAULTS,
    private readonly now: () => number = Date.now,
    replacing = false,
  ) {
    this.loaded = this.load(policy, replacing);
  }

  /** The context for new TLS sessions (STARTTLS: `new TLSSocket(socket, { secureContext })`). */
  get context(): SecureContext {
    return this.loaded.context;
  }

  /** The same as options (implicit TLS: `tls.createServer(options)`, and `server.setSecureContext(options)` after a reload). */
  get options(): SecureContextOptions {
    return this.loaded.options;
  }

  /** The certificate in force. */
  get certificate(): CertificateInfo {
    return this.loaded.certificate;
  }

  /**
   * Re-reads the files (and takes `policy` when given). On any problem, including a certificate
   * that has expired or is not valid yet, the certificate in force stays, under `policy` (see
   * keptUnder), and the error is returned.
   */
  reload(policy: TlsPolicy = this.policy): TlsReloadResult {
    try {
      this.loaded = this.load(policy, true);
      this.policy = policy;
      return { ok: true, certificate: this.loaded.certificate };
    } catch (error) {
      return { ok: false, error: this.keptUnder(policy, error) };
    }
  }

  /**
   * Other files in place of these (a reload that names them): a holder of them, or, when they
   * cannot be used, a MailfrontError, with this holder's certificate kept under `policy`.
   */
  replacedBy(files: TlsFiles, policy: TlsPolicy): TlsContextHolder {
    try {
      return new TlsContextHolder(files, policy, this.now, true);
    } catch (error) {
      throw this.keptUnder(policy, error);
    }
  }

  /**
   * After files that could not be used (`failure`): the certificate and key in force, whose bytes
   * are kept, are set up under `policy`, so that a new TLS policy applies from the next connection
   * all the same, as the listener's other settings do (it stayed the old one, and a listener
   * whose certificate could not be re-read went on offering TLS 1.2 after min_version: TLSv1.3).
   * Returns the failure, saying what stays.
   */
  private keptUnder(policy: TlsPolicy, failure: unknown): MailfrontError {
    const error = failure instanceof MailfrontError ? failure : new MailfrontError('TLS_FILES_UNUSABLE', 'config', failure instanceof Error ? failure.message : String(failure), { cause: failure });
    const kept = (what: string): MailfrontError => new MailfrontError(error.code, error.kind, `${error.message}; ${what}`, { cause: error });
    if (samePolicy(policy, this.policy)) return kept('the certificate in force stays');
    const { cert, key } = this.loaded.options;
    const options: SecureContextOptions = { ...policyOptions(policy), cert, key };
    try {
      this.loaded = { options, context: createSecureContext(options), certificate: this.loaded.certificate };
    } catch (policyError) {
      // Not expected: the policy was tried when it was read, and the certificate was in use.
      return kept(`the certificate in force stays, and so does the TLS policy in force: the new one cannot be used with it (${policyError instanceof Error ? policyError.message : String(policyError)})`);
    }
    this.policy = policy;
    return kept('the certificate in force stays, with the new TLS policy');
  }

  private load(policy: TlsPolicy, checkValidity: boolean): Loaded {
    const { cert: certFile, key: keyFile } = this.files;
    const fail = (why: string): never => {
      throw new MailfrontError('TLS_FILES_UNUSABLE', 'config', `cannot use certificate ${certFile} with key ${keyFile}: ${why}`);
    };
    let cert: Buffer;
    let key: Buffer;
    try {
      cert = readFileSync(certFile);
      key = readFileSync(keyFile);
    } catch (error) {
      return fail((error as NodeJS.ErrnoException).code ?? String(error));
    }
    let certificate: CertificateInfo;
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(cert);
      certificate = { subject: x509.subject.replace(/\n/g, ', '), validFrom: new Date(x509.validFrom), validTo: new Date(x509.validTo), fingerprint256: x509.fingerprint256 };
    } catch (error) {
      return fail(`not a PEM certificate (${error instanceof Error ? error.message : String(error)})`);
    }
    // The key must be the first certificate's (the server's own, before its chain). OpenSSL
    // checks that only for a key of the certificate's own type: an EC key with an RSA
    // certificate (a move to ECDSA half done), or a chain file in the wrong order, loads, and
    // every handshake then fails.
    let matches: boolean;
    try {
      matches = x509.checkPrivateKey(createPrivateKey(key));
    } catch (error) {
      return fail(`the key cannot be read (${error instanceof Error ? error.message : String(error)})`);
    }
    if (!matches) fail('the key does not belong to the certificate (the first certificate of the file must be the server\'s own, its chain after it)');
    // Starting with an expired certificate is the operator's call; replacing a working one with it is not.
    if (checkValidity) {
      const now = this.now();
      if (now > certificate.validTo.getTime()) fail(`the certificate expired on ${certificate.validTo.toISOString()}`);
      if (now < certificate.validFrom.getTime()) fail(`the certificate is not valid before ${certificate.validFrom.toISOString()}`);
    }
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
