// The admin API's authentication and its body limit, as a client sees them: a 401 says how to
// authenticate (WWW-Authenticate: Bearer), the scheme is matched without regard to case, and a
// body over the limit is a 413 the client gets to read, whether its size was declared or not.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, request } from 'node:http';
import type { OutgoingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import { createLogger } from '../../src/log.js';

const TOKEN = 'admin-token-for-the-auth-test';

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** One request; `chunks` are written one by one without a Content-Length (chunked), `body` with one. */
function call(port: number, method: string, path: string, headers: OutgoingHttpHeaders, send: { body?: string; chunks?: string[] } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    for (const chunk of send.chunks ?? []) req.write(chunk);
    req.end(send.body);
  });
}

describe('admin API: authentication and body limit', () => {
  const context = { token: () => TOKEN, registry: new SessionRegistry(), usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  let port = 0;
  before(async () => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  it('answers 401 with WWW-Authenticate: Bearer, and invalid_token when a token was given', async () => {
    for (const authorization of [undefined, `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}`, 'Bearer', `Bearer${TOKEN}`]) {
      const reply = await call(port, 'GET', '/api/sessions', authorization === undefined ? {} : { authorization });
      assert.equal(reply.status, 401, authorization);
      assert.equal(reply.headers['www-authenticate'], 'Bearer realm="mailfront"', authorization);
    }
    const wrong = await call(port, 'GET', '/api/sessions', { authorization: 'Bearer wrong-token-wrong-token' });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers['www-authenticate'], 'Bearer realm="mailfront", error="invalid_token"');
    assert.deepEqual(JSON.parse(wrong.body), { error: 'a valid bearer token is required' });
  });

  it('takes the bearer scheme in any case, and more than one space after it', async () => {
    for (const authorization of [`Bearer ${TOKEN}`, `bearer ${TOKEN}`, `BEARER ${TOKEN}`, `bEaReR   ${TOKEN}`]) {
      const reply = await call(port, 'GET', '/api/sessions', { authorization });
      assert.equal(reply.status, 200, authorization);
      assert.deepEqual(JSON.parse(reply.body), { sessions: [] });
    }
  });

  it('answers 413 to a body over the limit, declared or chunked; a bad body within it stays a 400', async () => {
    const authorization = `Bearer ${TOKEN}`;
    const declared = await call(port, 'POST', '/api/kick', { authorization, 'content-type': 'application/json' }, { body: JSON.stringify({ user: 'x'.repeat(5000) }) });
    assert.equal(declared.status, 413);
    assert.equal(JSON.parse(declared.body).code, 'ADMIN_BODY_TOO_LARGE');
    // No Content-Length: the limit is found while reading, and the rest of the body (here far
    // more than a socket buffer) does not reset the connection before the answer is read.
    const chunked = await call(port, 'POST', '/api/kick', { authorization }, { chunks: Array.from({ length: 64 }, () => 'x'.repeat(16_384)) });
    assert.equal(chunked.status, 413);
    assert.equal(JSON.parse(chunked.body).code, 'ADMIN_BODY_TOO_LARGE');
    const notJson = await call(port, 'POST', '/api/kick', { authorization }, { body: 'not json' });
    assert.equal(notJson.status, 400);
    assert.equal(JSON.parse(notJson.body).code, 'ADMIN_BAD_JSON');
    // Read whole from its chunks: the session it names is looked for (and is not open).
    const within = await call(port, 'POST', '/api/kick', { authorization }, { chunks: ['{"session":', '"none"}'] });
    assert.equal(within.status, 404);
    assert.equal(JSON.parse(within.body).code, 'UNKNOWN_SESSION');
  });

  it('takes a body of exactly the limit (4096 bytes) and refuses one byte more, chunked or declared', async () => {
    const authorization = `Bearer ${TOKEN}`;
    // Valid JSON padded with spaces to `bytes`: within the limit it is read and the session it
    // names is looked for (404), over it the body is refused (413) whatever it holds.
    const padded = (bytes: number): string => '{"session":"none"}'.padEnd(bytes, ' ');
    const split = (text: string): string[] => [text.slice(0, 1000), text.slice(1000, 3000), text.slice(3000)];
    const atLimit = padded(4096);
    const overLimit = padded(4097);
    assert.equal(Buffer.byteLength(atLimit), 4096);
    assert.equal(Buffer.byteLength(overLimit), 4097);
    const chunkedAt = await call(port, 'POST', '/api/kick', { authorization }, { chunks: split(atLimit) });
    assert.equal(chunkedAt.status, 404, chunkedAt.body);
    assert.equal(JSON.parse(chunkedAt.body).code, 'UNKNOWN_SESSION');
    const chunkedOver = await call(port, 'POST', '/api/kick', { authorization }, { chunks: split(overLimit) });
    assert.equal(chunkedOver.status, 413, chunkedOver.body);
    assert.equal(JSON.parse(chunkedOver.body).code, 'ADMIN_BODY_TOO_LARGE');
    const declaredAt = await call(port, 'POST', '/api/kick', { authorization, 'content-type': 'application/json' }, { body: atLimit });
    assert.equal(declaredAt.status, 404, declaredAt.body);
    const declaredOver = await call(port, 'POST', '/api/kick', { authorization, 'content-type': 'application/json' }, { body: overLimit });
    assert.equal(declaredOver.status, 413, declaredOver.body);
    assert.equal(JSON.parse(declaredOver.body).code, 'ADMIN_BODY_TOO_LARGE');
  });
});
