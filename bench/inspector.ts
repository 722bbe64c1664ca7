/**
 * Forces a full garbage collection in another Node process through its inspector
 * (`node --inspect=127.0.0.1:PORT`): HeapProfiler.collectGarbage over the DevTools WebSocket.
 * The memory measure uses it so that "RSS after" holds what the sessions keep alive, not
 * garbage the logins left behind. Needs a WebSocket client: Node 20 has one behind
 * --experimental-websocket (bench/run.sh passes it); without it, forceGc() says so.
 */

interface MinimalWebSocket {
  onopen: (() => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(text: string): void;
  close(): void;
}

type WebSocketConstructor = new (url: string) => MinimalWebSocket;

/** The WebSocket client of this Node, or undefined. */
function webSocketClass(): WebSocketConstructor | undefined {
  return (globalThis as unknown as { WebSocket?: WebSocketConstructor }).WebSocket;
}

/** True when forceGc() can work in this process. */
export function canForceGc(): boolean {
  return webSocketClass() !== undefined;
}

/** Runs a full GC in the process whose inspector listens on 127.0.0.1:`port`; resolves when done. */
export async function forceGc(port: number, timeoutMs = 30_000): Promise<void> {
  const WebSocketClass = webSocketClass();
  if (WebSocketClass === undefined) throw new Error('no WebSocket client (run node with --experimental-websocket)');
  const list = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()) as Array<{ webSocketDebuggerUrl?: string }>;
  const url = list[0]?.webSocketDebuggerUrl;
  if (url === undefined) throw new Error(`no inspector target on port ${port}`);
  await new Promise<void>((resolve, reject) => {
    const ws = new WebSocketClass(url);
    const timer = setTimeout(() => {
      ws.close();
      reject(new Error('HeapProfiler.collectGarbage timed out'));
    }, timeoutMs);
    ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' }));
    ws.onmessage = (event) => {
      const message = JSON.parse(String(event.data)) as { id?: number; error?: { message: string } };
      if (message.id !== 1) return;
      clearTimeout(timer);
      ws.close();
      if (message.error) reject(new Error(message.error.message));
      else resolve();
    };
    ws.onerror = () => {
      clearTimeout(timer);
      reject(new Error(`inspector WebSocket ${url} failed`));
    };
  });
}
