// The "minimal Node forward proxy" anchor from PERFORMANCE.md: http.request + a keep-alive agent, no policy,
// no audit. Prints its port.
import { Agent, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';

const agent = new Agent({ keepAlive: true, maxSockets: 256 });
const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/');
  const up = request(
    {
      host: url.hostname,
      port: url.port,
      path: url.pathname + url.search,
      method: req.method,
      headers: req.headers,
      agent,
    },
    (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    },
  );
  up.on('error', () => res.destroy());
  req.pipe(up);
});
server.listen(0, '127.0.0.1', () => console.log((server.address() as AddressInfo).port));
