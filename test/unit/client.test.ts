/** The client's HTTP behaviour against a local TLS server: headers, content types, errors, throttling, watch. */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyObject } from '../../lib/kube/apply.ts';
import { KubeApiError, KubeClient, resourcePath, retryAfterMs, type WatchEvent } from '../../lib/kube/client.ts';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: string;
}

let server: Server;
let client: KubeClient;
const seen: Seen[] = [];
let respond: (req: Seen, res: ServerResponse) => void = (_req, res) => res.end('{}');

beforeAll(async () => {
  const ca = await createCertificateAuthority('test-ca', 1);
  const leaf = await issueCertificate(ca, {
    commonName: 'apiserver',
    ipAddresses: ['127.0.0.1'],
    usage: 'server',
    validityDays: 1,
  });
  server = createServer({ cert: leaf.certPem, key: leaf.keyPem }, (req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      const entry = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body };
      seen.push(entry);
      respond(entry, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  client = new KubeClient({
    server: `https://127.0.0.1:${port}/`,
    tls: { ca: ca.certPem },
    headers: () => Promise.resolve({ authorization: 'Bearer t0k3n' }),
  });
});

afterAll(async () => {
  client.close();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

describe('KubeClient', () => {
  it('builds resource paths for core, grouped, namespaced and subresource URLs', () => {
    expect(resourcePath({ group: '', version: 'v1', resource: 'pods' })).toBe('/api/v1/pods');
    expect(
      resourcePath(
        { group: 'agentfence.io', version: 'v1alpha1', resource: 'agentpolicies' },
        {
          namespace: 'ns',
          name: 'p',
          subresource: 'status',
        },
      ),
    ).toBe('/apis/agentfence.io/v1alpha1/namespaces/ns/agentpolicies/p/status');
  });

  it('sends credentials, JSON and the server-side apply content type with its query', async () => {
    seen.length = 0;
    respond = (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"metadata":{}}');
    await applyObject(
      client,
      { group: '', version: 'v1', resource: 'configmaps' },
      {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'c', namespace: 'ns' },
      },
    );
    const req = seen[0];
    expect(req?.method).toBe('PATCH');
    expect(req?.url).toBe('/api/v1/namespaces/ns/configmaps/c?fieldManager=agentfence&force=true');
    expect(req?.headers['content-type']).toBe('application/apply-patch+yaml');
    expect(req?.headers.authorization).toBe('Bearer t0k3n');
    expect(JSON.parse(req?.body ?? '')).toMatchObject({ kind: 'ConfigMap', metadata: { name: 'c' } });
  });

  it('turns a Status body into KubeApiError with code, reason and message, and tolerates non-JSON bodies', async () => {
    respond = (_req, res) =>
      res
        .writeHead(409, { 'content-type': 'application/json' })
        .end(
          '{"kind":"Status","status":"Failure","reason":"Conflict","message":"the object has been modified","code":409}',
        );
    const err = await client.get('/api/v1/x').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KubeApiError);
    expect(err).toMatchObject({
      status: 409,
      reason: 'Conflict',
      message: 'the object has been modified',
      method: 'GET',
    });
    respond = (_req, res) => res.writeHead(502).end('bad gateway');
    expect(await client.get('/api/v1/x').catch((e: unknown) => e)).toMatchObject({
      status: 502,
      message: 'bad gateway',
    });
  });

  it('retries a throttled (429) request after Retry-After, a bounded number of times', async () => {
    seen.length = 0;
    let left = 2;
    respond = (_req, res) => {
      if (left-- > 0) res.writeHead(429, { 'retry-after': '0' }).end('{"code":429}');
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    };
    expect(await client.get('/api/v1/x')).toEqual({ ok: true });
    expect(seen).toHaveLength(3);
    respond = (_req, res) => res.writeHead(429, { 'retry-after': '0' }).end('{"code":429,"message":"throttled"}');
    expect(await client.get('/api/v1/x').catch((e: unknown) => e)).toMatchObject({ status: 429 });
    expect(retryAfterMs('3')).toBe(3000);
    expect(retryAfterMs('3600')).toBe(10_000);
    expect(retryAfterMs(undefined)).toBe(1000);
  });

  it('parses watch events split across chunks and resolves when the server ends the stream', async () => {
    respond = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"type":"ADDED","object":{"metadata":{"name":"a"}}}\n{"type":"MOD');
      setTimeout(() => res.end('IFIED","object":{"metadata":{"name":"a"}}}\n'), 20);
    };
    const events: WatchEvent[] = [];
    await client.watch('/api/v1/configmaps', { resourceVersion: '5' }, (e) => events.push(e));
    expect(events.map((e) => e.type)).toEqual(['ADDED', 'MODIFIED']);
    expect(seen.at(-1)?.url).toBe('/api/v1/configmaps?resourceVersion=5&watch=true');
  });
});
