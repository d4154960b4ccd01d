// A trivial keep-alive HTTPS upstream for the TLS benchmark (its own process): listens on two ports with the
// certificate and key files given as arguments, prints both ports on one line.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';

const [certFile = '', keyFile = ''] = process.argv.slice(2);
const body = Buffer.from('ok\n');
const ports: number[] = [];
for (let i = 0; i < 2; i++) {
  const server = createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
    res.end(body);
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => {
    ports.push((server.address() as AddressInfo).port);
    if (ports.length === 2) console.log(ports.join(' '));
  });
}
