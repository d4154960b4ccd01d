import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAdmissionRouter } from '../../webhook/admission.ts';
import { createRegistry } from '../../lib/metrics.ts';
import { silentLogger } from '../../lib/log.ts';

let server: ReturnType<express.Express['listen']>;
let url: string;
const registry = createRegistry({ defaultMetrics: false });

beforeAll(async () => {
  const app = express();
  app.use(
    '/mutate-pods',
    createAdmissionRouter({
      config: {
        version: 't',
        image: 'i',
        controllerUrl: 'https://c',
        logLevel: 'info',
        maxStaleness: '60s',
        resources: { cpuRequest: '1m', memoryRequest: '1Mi', memoryLimit: '2Mi' },
      },
      logger: silentLogger,
      registry,
    }),
  );
  server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/mutate-pods`;
});
afterAll(() => server.close());

const post = (body: string) => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

describe('admission endpoint', () => {
  it('answers an AdmissionReview with the same uid and a JSONPatch', async () => {
    const review = {
      apiVersion: 'admission.k8s.io/v1',
      kind: 'AdmissionReview',
      request: {
        uid: 'abc-123',
        kind: { group: '', version: 'v1', kind: 'Pod' },
        object: {
          metadata: { labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': 'a' } },
          spec: { containers: [{ name: 'x' }] },
        },
      },
    };
    const res = await post(JSON.stringify(review));
    const body = (await res.json()) as {
      apiVersion: string;
      response: { uid: string; allowed: boolean; patchType: string; patch: string };
    };
    expect(body.apiVersion).toBe('admission.k8s.io/v1');
    expect(body.response).toMatchObject({ uid: 'abc-123', allowed: true, patchType: 'JSONPatch' });
    expect(JSON.parse(Buffer.from(body.response.patch, 'base64').toString())).toEqual(
      expect.arrayContaining([expect.objectContaining({ op: 'add', path: '/spec/initContainers' })]),
    );
  });

  it.each([
    ['not JSON', '{oops', 400, 'not valid JSON'],
    ['not an AdmissionReview', JSON.stringify({ hello: 'world' }), 400, 'AdmissionReview'],
    [
      'a review without a uid',
      JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: {} }),
      400,
      'request.uid',
    ],
  ])('refuses %s with a clear 4xx', async (_, body, status, words) => {
    const res = await post(body);
    expect(res.status).toBe(status);
    expect(JSON.stringify(await res.json())).toContain(words);
  });

  it('accepts a 3 MB review and refuses a body over 4 MB with 413', async () => {
    const big = (n: number) =>
      JSON.stringify({
        apiVersion: 'admission.k8s.io/v1',
        kind: 'AdmissionReview',
        request: {
          uid: 'big',
          kind: { kind: 'Pod' },
          object: { metadata: { annotations: { blob: 'x'.repeat(n) } }, spec: { containers: [{ name: 'x' }] } },
        },
      });
    expect((await post(big(3 * 1024 * 1024))).status).toBe(200);
    const res = await post(big(5 * 1024 * 1024));
    expect(res.status).toBe(413);
    expect(JSON.stringify(await res.json())).toContain('too large');
  });

  it('refuses a non-pod object', async () => {
    const res = await post(
      JSON.stringify({
        apiVersion: 'admission.k8s.io/v1',
        kind: 'AdmissionReview',
        request: { uid: 'u', kind: { kind: 'Pod' }, object: { metadata: {}, spec: {} } },
      }),
    );
    expect(((await res.json()) as { response: { allowed: boolean; status: { code: number } } }).response).toMatchObject(
      { allowed: false, status: { code: 400 } },
    );
  });
});
