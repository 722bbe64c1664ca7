/**
 * The auth_http service nginx's mail proxy needs, for the benchmark's nginx column: it checks the
 * user against the same slapd mailfront uses (search with the service account, then bind as the
 * user) and names the user's store's master Dovecot. Run as its own process so its CPU can be
 * counted with nginx's. Written to be fair to nginx: one kept service connection for searches
 * and a pool of kept connections for user binds (no connection set-up per login), no cache.
 *
 * Configuration: a JSON document in the environment variable BENCH_AUTH_HTTP (see AuthHttpConfig).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { Client, InvalidCredentialsError } from 'ldapts';

export interface AuthHttpConfig {
  readonly port: number;
  readonly ldapUrl: string;
  readonly bindDn: string;
  readonly bindPassword: string;
  readonly baseDn: string;
  readonly storeAttribute: string;
  /** Store name → the host and ports of its current master. */
  readonly stores: Record<string, { host: string; imapPort: number; pop3Port: number }>;
}

/** Most idle bind connections kept for reuse. */
const BIND_POOL_SIZE = 32;

function escapeFilterValue(value: string): string {
  return value.replace(/[*()\\\0]/g, (c) => `\\${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function header(req: IncomingMessage, name: string): string {
  const v = req.headers[name];
  const raw = Array.isArray(v) ? (v[0] ?? '') : (v ?? '');
  // nginx URL-escapes Auth-User and Auth-Pass.
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

async function main(): Promise<void> {
  const config = JSON.parse(process.env['BENCH_AUTH_HTTP'] ?? '') as AuthHttpConfig;
  let service: Promise<Client> | null = null;
  const serviceClient = (): Promise<Client> => {
    service ??= (async () => {
      const c = new Client({ url: config.ldapUrl, timeout: 5000, connectTimeout: 3000 });
      await c.bind(config.bindDn, config.bindPassword);
      return c;
    })().catch((error: unknown) => {
      service = null;
      throw error;
    });
    return service;
  };
  const idleBinders: Client[] = [];

  /** true: password right; false: wrong; throws on a directory failure. */
  const checkPassword = async (dn: string, password: string): Promise<boolean> => {
    const c = idleBinders.pop() ?? new Client({ url: config.ldapUrl, timeout: 5000, connectTimeout: 3000 });
    try {
      await c.bind(dn, password);
      if (idleBinders.length < BIND_POOL_SIZE) idleBinders.push(c);
      else c.unbind().catch(() => undefined);
      return true;
    } catch (error) {
      if (error instanceof InvalidCredentialsError) {
        if (idleBinders.length < BIND_POOL_SIZE) idleBinders.push(c);
        return false;
      }
      c.unbind().catch(() => undefined);
      throw error;
    }
  };

  const authenticate = async (user: string, password: string, protocol: string): Promise<{ host: string; port: number } | null> => {
    if (user === '' || password === '') return null;
    const svc = await serviceClient();
    const { searchEntries } = await svc.search(config.baseDn, {
      scope: 'sub',
      filter: `(&(objectClass=inetOrgPerson)(uid=${escapeFilterValue(user)}))`,
      attributes: [config.storeAttribute],
      sizeLimit: 2,
    });
    const entry = searchEntries.length === 1 ? searchEntries[0] : undefined;
    if (entry === undefined) return null;
    const storeValue = entry[config.storeAttribute];
    const storeName = String(Array.isArray(storeValue) ? storeValue[0] : storeValue);
    const store = config.stores[storeName];
    if (store === undefined) throw new Error(`unknown store ${storeName}`);
    if (!(await checkPassword(entry.dn, password))) return null;
    return { host: store.host, port: protocol === 'pop3' ? store.pop3Port : store.imapPort };
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const reply = (headers: Record<string, string>): void => {
      res.writeHead(200, headers);
      res.end();
    };
    authenticate(header(req, 'auth-user'), header(req, 'auth-pass'), header(req, 'auth-protocol')).then(
      (found) =>
        found === null
          ? reply({ 'Auth-Status': 'Invalid login or password', 'Auth-Wait': '2' })
          : reply({ 'Auth-Status': 'OK', 'Auth-Server': found.host, 'Auth-Port': String(found.port) }),
      (error: unknown) => {
        process.stderr.write(`auth-http: ${error instanceof Error ? error.message : String(error)}\n`);
        service = null;
        reply({ 'Auth-Status': 'Temporary server problem, try again later', 'Auth-Error-Code': '451 4.3.0' });
      },
    );
  });
  server.keepAliveTimeout = 60_000;
  server.listen(config.port, '127.0.0.1', () => process.stderr.write(`auth-http: listening on 127.0.0.1:${config.port}\n`));
  const stop = (): void => {
    server.close();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((error: unknown) => {
  process.stderr.write(`auth-http: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
