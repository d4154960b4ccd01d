/**
 * A real identity issuer for integration tests: the exchange over TLS on 127.0.0.1, backed by the test API
 * server (TokenReview, pods, AgentEntitlements), plus helpers to create injected pods and real pod-bound tokens.
 */
import { createServer, type Server } from 'node:https';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { expect } from 'vitest';
import { createAgentVerifier } from '../../lib/verify/index.ts';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';
import { silentLogger } from '../../lib/log.ts';
import { generateSigningKey, publicJwks, type KeySet } from '../../operator/identity/keys.ts';
import { TokenIssuer } from '../../operator/identity/issuer.ts';
import { ANNOTATION_INJECTED, IdentityExchange, OPERATOR_AUDIENCE } from '../../operator/identity/exchange.ts';
import { kubeIdentityCluster } from '../../operator/identity/kube-cluster.ts';
import { createIdentityApp } from '../../operator/identity/http.ts';
import { runOrThrow } from './cluster.ts';
import { kubeRequest } from './kube-request.ts';

export interface TestIssuer {
  url: string;
  caPem: string;
  keys: KeySet;
  close(): void;
}

export async function startTestIssuer(options: { reviewCacheMs?: number } = {}): Promise<TestIssuer> {
  const ca = await createCertificateAuthority('identity-test-ca', 1);
  const serving = await issueCertificate(ca, {
    commonName: 'controller',
    ipAddresses: ['127.0.0.1'],
    usage: 'server',
    validityDays: 1,
  });
  const keys: KeySet = { current: await generateSigningKey(Date.now() - 1000, 86_400_000), previous: [] };
  const trustDomain = 'cluster.local';
  const server: Server = createServer({ cert: serving.certPem, key: serving.keyPem });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const exchange = new IdentityExchange({
    cluster: kubeIdentityCluster((method, path, body) => kubeRequest(method, path, body)),
    issuer: new TokenIssuer({ issuer: url, trustDomain, keys: () => keys }),
    selfVerifier: createAgentVerifier({ issuer: url, audience: url, jwks: publicJwks(keys), trustDomain }),
    issuerUrl: url,
    trustDomain,
    reviewCacheMs: options.reviewCacheMs ?? 0,
  });
  server.on('request', createIdentityApp({ exchange, issuerUrl: url, keys: () => keys, logger: silentLogger }));
  return { url, caPem: ca.certPem, keys, close: () => server.close() };
}

export interface CreatedPod {
  metadata: { name: string; uid: string };
}

export interface AgentPodOptions {
  agent?: string;
  serviceAccount?: string;
  injected?: boolean;
  finalizer?: boolean;
  audiences?: string[];
  tokenTTL?: string;
}

/** Creates an injected-looking agent pod and its AgentEntitlement (what webhook and operator would write). */
export async function createAgentPod(ns: string, name: string, opts: AgentPodOptions = {}): Promise<CreatedPod> {
  const agent = opts.agent ?? 'support-agent';
  const res = await kubeRequest('POST', `/api/v1/namespaces/${ns}/pods`, {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': agent },
      annotations: opts.injected === false ? {} : { [ANNOTATION_INJECTED]: '{"version":"test"}' },
      ...(opts.finalizer ? { finalizers: ['agentfence.io/test-hold'] } : {}),
    },
    spec: {
      serviceAccountName: opts.serviceAccount ?? 'support-agent',
      containers: [{ name: 'app', image: 'registry.example/agent:1' }],
    },
  });
  expect(res.status).toBe(201);
  const pod = res.body as CreatedPod;
  await runOrThrow(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify({
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentEntitlement',
      metadata: { name, namespace: ns },
      spec: {
        podName: name,
        podUID: pod.metadata.uid,
        agent,
        spiffeID: `spiffe://cluster.local/ns/${ns}/agent/${agent}`,
        revision: 'sha256:feed',
        tokenTTL: opts.tokenTTL ?? '2m',
        egress: (opts.audiences ?? ['orders-api']).map((aud, i) => ({
          policy: 'p',
          rule: `r${i}`,
          mode: 'Enforce',
          hosts: ['orders.example'],
          ports: [{ port: 80, protocol: 'TCP' }],
          audience: aud,
        })),
      },
    }),
  );
  return pod;
}

/** A real token from the TokenRequest API, bound to the pod unless `pod` is undefined. */
export async function serviceAccountToken(
  ns: string,
  serviceAccount: string,
  pod: CreatedPod | undefined,
  audiences = [OPERATOR_AUDIENCE],
): Promise<string> {
  const res = await kubeRequest('POST', `/api/v1/namespaces/${ns}/serviceaccounts/${serviceAccount}/token`, {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'TokenRequest',
    spec: {
      audiences,
      expirationSeconds: 600,
      ...(pod
        ? { boundObjectRef: { kind: 'Pod', apiVersion: 'v1', name: pod.metadata.name, uid: pod.metadata.uid } }
        : {}),
    },
  });
  expect(res.status).toBe(201);
  return (res.body as { status: { token: string } }).status.token;
}
