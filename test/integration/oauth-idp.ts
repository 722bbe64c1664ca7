/**
 * An identity provider's stand-in for the OAuth tests: signing keys made in the test (RSA, EC,
 * Ed25519), JWTs signed with them (node:crypto, as the verifier checks them), and the one
 * endpoint mailfront talks to, the JWKS, served by a small node http server on 127.0.0.1 that
 * counts its requests.
 */
import { constants, createHmac, generateKeyPairSync, sign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export type TestAlg = 'RS256' | 'RS384' | 'PS256' | 'ES256' | 'ES384' | 'EdDSA';

/** A signing key of the stand-in: its kid, its algorithm and both halves. */
export interface TestKey {
  readonly kid: string;
  readonly alg: TestAlg;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

/** A key pair for `alg`, named `kid`. */
export function makeKey(kid: string, alg: TestAlg): TestKey {
  const pair =
    alg === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : alg === 'ES384'
        ? generateKeyPairSync('ec', { namedCurve: 'P-384' })
        : alg === 'EdDSA'
          ? generateKeyPairSync('ed25519')
          : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { kid, alg, privateKey: pair.privateKey, publicKey: pair.publicKey };
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

/** The IdP's JWKS endpoint on 127.0.0.1: `keys` may change while it runs; `requests` counts what it was asked. */
export class JwksServer {
  keys: TestKey[];
  requests = 0;
  /** Answer with this status instead of the JWKS (an outage). */
  failWith: number | null = null;
  private constructor(
    private readonly server: Server,
    keys: TestKey[],
  ) {
    this.keys = keys;
  }

  static async start(keys: TestKey[]): Promise<JwksServer> {
    let self: JwksServer | undefined;
    const server = createServer((_request, response) => {
      const jwksServer = self!;
      jwksServer.requests++;
      if (jwksServer.failWith !== null) {
        response.writeHead(jwksServer.failWith).end('down');
        return;
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end(jwks(jwksServer.keys));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    self = new JwksServer(server, keys);
    return self;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/realms/mail/protocol/openid-connect/certs`;
  }

  stop(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }
}
