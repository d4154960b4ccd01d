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
import { IdentityExchange, OPERATOR_AUDIENCE } from '../../operator/identity/exchange.ts';
import { kubeIdentityCluster } from '../../operator/identity/kube-cluster.ts';
import { createIdentityApp } from '../../operator/identity/http.ts';
import { inject, type InjectorConfig, type Pod } from '../../webhook/inject.ts';
import { localInjectorConfig } from '../../localcluster/controller.ts';
import { runOrThrow } from './cluster.ts';
import { kubeRequest } from './kube-request.ts';

/** What the test issuer's exchange expects its pods to carry; createAgentPod renders pods with it. */
export const TEST_INJECTOR: InjectorConfig = localInjectorConfig('https://agentfence-controller.test.svc', 'test');

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
    injector: TEST_INJECTOR,
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
  /** The injector configuration the pod is rendered with (the exchange's own: TEST_INJECTOR by default). */
  injector?: InjectorConfig;
}

/** An agent pod rendered by the webhook's own injection (what the webhook would have admitted). */
export function injectedPod(
  ns: string,
  name: string,
  opts: { agent?: string; serviceAccount?: string; injector?: InjectorConfig } = {},
): Pod {
  const pod: Pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace: ns,
      labels: { 'agentfence.io/inject': 'true', 'agentfence.io/agent': opts.agent ?? 'support-agent' },
    },
    spec: {
      serviceAccountName: opts.serviceAccount ?? 'support-agent',
      containers: [{ name: 'app', image: 'registry.example/agent:1' }],
    },
  };
  const out = inject(pod, opts.injector ?? TEST_INJECTOR);
  if (!out.allowed) throw new Error(out.message);
  // Created directly, the ServiceAccount admission plugin would mount the API token into every container present,
  // the sidecar included (through the webhook the sidecar arrives after that plugin ran): not "as injected".
  out.pod.spec.automountServiceAccountToken = false;
  return out.pod;
}

/**
 * Creates an agent pod as the webhook would have injected it (or, with `injected: false`, labelled but without
 * the injection) and its AgentEntitlement (what the operator would write).
 */
export async function createAgentPod(ns: string, name: string, opts: AgentPodOptions = {}): Promise<CreatedPod> {
  const agent = opts.agent ?? 'support-agent';
  const rendered = injectedPod(ns, name, opts);
  if (opts.injected === false) {
    rendered.metadata.annotations = {};
    rendered.spec.initContainers = [];
    rendered.spec.volumes = [];
    // Without the injected volumes, the app containers' read-only trust-bundle mount goes too.
    for (const c of rendered.spec.containers) delete c.volumeMounts;
  }
  if (opts.finalizer) rendered.metadata.finalizers = ['agentfence.io/test-hold'];
  const res = await kubeRequest('POST', `/api/v1/namespaces/${ns}/pods`, rendered);
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
