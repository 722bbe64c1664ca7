/**
 * An identity provider's stand-in for the OAuth tests: signing keys made in the test (RSA, EC,
 * Ed25519), JWTs signed with them (node:crypto, as the verifier checks them), and the endpoints
 * mailfront talks to, served by a small node http server on 127.0.0.1 that counts its requests:
 * the JWKS, the OpenID configuration document (OpenID Connect Discovery 1.0) and token
 * introspection (RFC 7662: HTTP basic client credentials, a form POST, tokens the test issued or
 * revoked), each of which can be made to fail (a status, a delay, a body of its own).
 */
import { constants, createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type TestAlg = 'RS256' | 'RS384' | 'PS256' | 'ES256' | 'ES384' | 'EdDSA';

/** A signing key of the stand-in: its kid, its algorithm and both halves. */
export interface TestKey {
  readonly kid: string;
  readonly alg: TestAlg;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

/**
 * A key pair for `alg`, named `kid`. Made as PEM and read back into key objects of their own: the
 * key objects generateKeyPairSync() returns share a lock with the key generation job that made
 * them, and Node 20's export of an EC key (as a JWK or PEM) holds that lock while it allocates. A
 * garbage collection there may free the job, whose destructor takes the same lock: the process
 * then sleeps for good (its main thread in ~KeyGenJob<EcKeyGenTraits>, under ExportJWKEcKey).
 * oauth-verify hung so at its start, making its JWKS, until the runner's 300 s timeout, with no
 * output. Read back from PEM, a key shares its lock with no job.
 */
export function makeKey(kid: string, alg: TestAlg): TestKey {
  const publicKeyEncoding = { type: 'spki', format: 'pem' } as const;
  const privateKeyEncoding = { type: 'pkcs8', format: 'pem' } as const;
  const pair =
    alg === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256', publicKeyEncoding, privateKeyEncoding })
      : alg === 'ES384'
        ? generateKeyPairSync('ec', { namedCurve: 'P-384', publicKeyEncoding, privateKeyEncoding })
        : alg === 'EdDSA'
          ? generateKeyPairSync('ed25519', { publicKeyEncoding, privateKeyEncoding })
          : generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding, privateKeyEncoding });
  return { kid, alg, privateKey: createPrivateKey(pair.privateKey), publicKey: createPublicKey(pair.publicKey) };
}

/** The public JWK of `key` (with kid, alg and use, as Keycloak publishes them). */
export function publicJwk(key: TestKey, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...key.publicKey.export({ format: 'jwk' }), kid: key.kid, alg: key.alg, use: 'sig', ...extra };
}

/** A JWKS document of `keys`. */
export function jwks(keys: readonly TestKey[]): string {
  return JSON.stringify({ keys: keys.map((k) => publicJwk(k)) });
}

const b64url = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A compact JWS of `claims` signed with `key` (header overrides in `header`: another alg, kid or none). */
export function signJwt(key: TestKey, claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  const head = { alg: key.alg, typ: 'at+jwt', kid: key.kid, ...header };
  const input = `${b64url(head)}.${b64url(claims)}`;
  const data = Buffer.from(input);
  const hash = key.alg === 'EdDSA' ? null : `sha${key.alg.slice(2)}`;
  const signature =
    key.alg.startsWith('PS')
      ? sign(hash, data, { key: key.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST })
      : key.alg.startsWith('ES')
        ? sign(hash, data, { key: key.privateKey, dsaEncoding: 'ieee-p1363' })
        : sign(hash, data, key.privateKey);
  return `${input}.${signature.toString('base64url')}`;
}

/** An `alg: none` token: no signature at all. */
export function unsignedJwt(claims: Record<string, unknown>, kid: string): string {
  return `${b64url({ alg: 'none', kid })}.${b64url(claims)}.`;
}

/** The HS256 confusion attack: a MAC keyed with the public key's bytes (its PEM), which a verifier that took `alg` from the token would check with the public key. */
export function hs256WithPublicKey(key: TestKey, claims: Record<string, unknown>): string {
  const input = `${b64url({ alg: 'HS256', kid: key.kid })}.${b64url(claims)}`;
  const pem = key.publicKey.export({ format: 'pem', type: 'spki' });
  return `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`;
}

/** Claims a token for `user` from `issuer` to `audience` carries, valid for `seconds` from now. */
export function claimsFor(user: string, issuer: string, audience: string | string[], seconds = 300, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return { iss: issuer, aud: audience, sub: `sub-${user}`, preferred_username: user, email: `${user}@example.org`, email_verified: true, iat: now, exp: now + seconds, ...extra };
}

/** Where the stand-in serves what (Keycloak's paths under the realm); any other path gets the JWKS. */
const REALM_PATH = '/realms/mail';
const DISCOVERY_PATH = `${REALM_PATH}/.well-known/openid-configuration`;
const INTROSPECTION_PATH = `${REALM_PATH}/protocol/openid-connect/token/introspect`;

/** What one introspection request carried, as the stand-in read it (the test checks the client's credentials and form). */
export interface IntrospectionSeen {
  readonly authorization: string | undefined;
  readonly contentType: string | undefined;
  readonly form: Readonly<Record<string, string>>;
}

/**
 * The IdP's endpoints on 127.0.0.1: the JWKS (`keys` may change while it runs; `requests` counts
 * what it was asked), the OpenID configuration document (issuer `issuer`, naming the other two;
 * `discoveryDocument` overrides it) and token introspection for the clients in `clients`, of the
 * tokens in `tokens` (issue(), revoke()); everything else it is asked is `active: false`.
 */
export class JwksServer {
  keys: TestKey[];
  requests = 0;
  /** Answer with this status instead of the JWKS (an outage). */
  failWith: number | null = null;
  /** The OpenID configuration document served instead of the stand-in's own; `discoveryRequests` counts its requests. */
  discoveryDocument: Record<string, unknown> | null = null;
  discoveryRequests = 0;
  /** The clients allowed to introspect: client id to secret (HTTP basic, RFC 6749 §2.3.1 form-encoded). */
  readonly clients = new Map<string, string>();
  /** The tokens it knows: token to its introspection answer (without `active`); `active` false once revoked. */
  readonly tokens = new Map<string, { claims: Record<string, unknown>; active: boolean }>();
  introspectionRequests = 0;
  /** Introspection requests under way now, and the most there ever were at once. */
  introspectionsInFlight = 0;
  introspectionsPeak = 0;
  /** What each introspection request carried, in order. */
  readonly introspectionsSeen: IntrospectionSeen[] = [];
  /** Failures to inject: a status instead of the answer, a wait before answering, a body of its own. */
  introspectionFailWith: number | null = null;
  introspectionDelayMs = 0;
  introspectionBody: string | Buffer | null = null;
  private constructor(
    private readonly server: Server,
    keys: TestKey[],
  ) {
    this.keys = keys;
  }

  static async start(keys: TestKey[]): Promise<JwksServer> {
    let self: JwksServer | undefined;
    const server = createServer((request, response) => {
      const idp = self!;
      const path = new URL(request.url ?? '/', 'http://127.0.0.1').pathname;
      if (path === DISCOVERY_PATH) {
        idp.discoveryRequests++;
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(idp.discoveryDocument ?? { issuer: idp.issuer, jwks_uri: idp.url, introspection_endpoint: idp.introspectionUrl, token_endpoint: `${idp.issuer}/protocol/openid-connect/token` }));
        return;
      }
      if (path === INTROSPECTION_PATH) {
        idp.introspect(request, response);
        return;
      }
      idp.requests++;
      if (idp.failWith !== null) {
        response.writeHead(idp.failWith).end('down');
        return;
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end(jwks(idp.keys));
    });
    await withDeadline(
      new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => {
          server.off('error', reject);
          resolve();
        });
      }),
      'the IdP stand-in listening on 127.0.0.1',
      () => server.close(),
    );
    self = new JwksServer(server, keys);
    return self;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${REALM_PATH}/protocol/openid-connect/certs`;
  }

  /** The realm's issuer, whose discovery document is at `${issuer}/.well-known/openid-configuration`. */
  get issuer(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${REALM_PATH}`;
  }

  get discoveryUrl(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${DISCOVERY_PATH}`;
  }

  get introspectionUrl(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${INTROSPECTION_PATH}`;
  }

  /** An opaque access token (as Google's or an Authentik's: no dots, nothing to decode) whose introspection answers `claims`, active. */
  issue(claims: Record<string, unknown>): string {
    const token = `opq_${randomBytes(24).toString('base64url')}`;
    this.tokens.set(token, { claims, active: true });
    return token;
  }

  /** Makes `token` (issued, or a JWT) known with `claims`, active. */
  know(token: string, claims: Record<string, unknown>): void {
    this.tokens.set(token, { claims, active: true });
  }

  /** The token is inactive from now on (a logout, an administrator's revocation). */
  revoke(token: string): void {
    const known = this.tokens.get(token);
    if (known !== undefined) known.active = false;
  }

  /** Puts failure injection back to a healthy IdP. */
  heal(): void {
    this.introspectionFailWith = null;
    this.introspectionDelayMs = 0;
    this.introspectionBody = null;
    this.failWith = null;
    this.discoveryDocument = null;
  }

  private introspect(request: IncomingMessage, response: ServerResponse): void {
    this.introspectionRequests++;
    this.introspectionsInFlight++;
    this.introspectionsPeak = Math.max(this.introspectionsPeak, this.introspectionsInFlight);
    // Under way until answered, or until the client gave up on it (its deadline).
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      this.introspectionsInFlight--;
    };
    response.on('close', end);
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
      const authorization = request.headers.authorization;
      this.introspectionsSeen.push({ authorization, contentType: request.headers['content-type'], form });
      const answer = (): void => {
        end();
        if (response.destroyed) return;
        if (this.introspectionFailWith !== null) {
          response.writeHead(this.introspectionFailWith, { 'content-type': 'application/json' }).end('{"error":"server_error"}');
          return;
        }
        if (this.introspectionBody !== null) {
          response.writeHead(200, { 'content-type': 'application/json' }).end(this.introspectionBody);
          return;
        }
        // RFC 7662 §2.1: the client authenticates; RFC 6749 §2.3.1: id and secret form-encoded, then basic.
        const [id, secret] = Buffer.from((authorization ?? '').replace(/^Basic /, ''), 'base64').toString('utf8').split(':').map((part) => decodeURIComponent(part.replace(/\+/g, ' ')));
        if (id === undefined || secret === undefined || this.clients.get(id) !== secret) {
          response.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Basic realm="mail"' }).end('{"error":"invalid_client"}');
          return;
        }
        const known = this.tokens.get(form['token'] ?? '');
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(known?.active === true ? { active: true, ...known.claims } : { active: false }));
      };
      if (this.introspectionDelayMs > 0) setTimeout(answer, this.introspectionDelayMs);
      else answer();
    });
  }

  /** Closes the server and every connection to it; rejects, saying so, if it is not closed within STEP_DEADLINE_MS. */
  stop(): Promise<void> {
    // Named before it closes: closed, it has no address (a second stop() is answered as before).
    const address = this.server.address() as AddressInfo | null;
    const what = `the IdP stand-in on 127.0.0.1:${address?.port ?? '(closed)'} closing (close() waits for every connection to it to end)`;
    return withDeadline(
      new Promise((resolve) => {
        this.server.closeAllConnections();
        this.server.close(() => resolve());
      }),
      what,
    );
  }
}

/**
 * How long the stand-in's own steps (listening, closing) may take: a few milliseconds on a
 * loopback, under a second on a busy machine. A step that never ends fails the case in seconds,
 * naming what it waited for, instead of holding the file until the runner's timeout.
 */
const STEP_DEADLINE_MS = 10_000;

/** `work`, or a rejection naming `what` once STEP_DEADLINE_MS have passed (after `onTimeout`). */
function withDeadline<T>(work: Promise<T>, what: string, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new Error(`${what}: not done within ${STEP_DEADLINE_MS} ms`));
    }, STEP_DEADLINE_MS);
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
