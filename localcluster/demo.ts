/**
 * `npm run demo`: the whole of Agentfence on the built-in local control plane, narrated.
 * Real parts throughout: kube-apiserver calls the webhook over TLS, the controller compiles real AgentPolicies,
 * sidecars exchange real pod-bound tokens and proxy real HTTP to upstream servers on loopback. Only the kubelet
 * is missing, so the agent pods are admitted (and injected) but never run: their sidecars run here instead.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest, createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { stringify } from 'yaml';
import { clientFromKubeconfig } from '../lib/kube/client.ts';
import { createRegistry } from '../lib/metrics.ts';
import { silentLogger, type Logger } from '../lib/log.ts';
import { sleep } from '../lib/sleep.ts';
import { createAgentVerifier } from '../lib/verify/index.ts';
import { agentOf, requireAgent } from '../lib/verify/express.ts';
import { fetchWithCA } from '../lib/verify/fetch-with-ca.ts';
import { mutatingWebhookConfiguration, podIntegrityBinding, podIntegrityPolicy } from '../webhook/manifests.ts';
import { startSidecar, type RunningSidecar } from '../sidecar/runtime.ts';
import type { AuditRecord } from '../sidecar/audit.ts';
import type { Binaries } from './binaries.ts';
import { startControlPlane } from './controlplane.ts';
import { localInjectorConfig, startLocalController } from './controller.ts';
import { installCRDs, kubectlOrThrow } from './kubectl.ts';
import { CONTROLLER } from '../operator/defaults.ts';
import { gatesOfPod } from '../lib/inbound/gates.ts';

export interface DemoOptions {
  binaries: Binaries;
  kubeconfigPath?: string;
  /**
   * Resolves when the user wants to stop (Ctrl-C); the demo then tears everything down. Absent (--once): tear
   * down right after the narration.
   */
  until?: Promise<unknown>;
  out: (line: string) => void;
  logger: Logger;
}

const NS = 'demo';

async function listen(server: Server, cleanup: (() => Promise<void> | void)[]): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanup.push(() => {
    server.close();
    server.closeAllConnections();
  });
  return (server.address() as AddressInfo).port;
}

/** An agent's HTTP call, as its HTTP client sends it with HTTP_PROXY pointing at its sidecar. */
function call(
  sidecar: RunningSidecar | undefined,
  method: string,
  url: string,
  body?: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    // Through the agent's sidecar (absolute form), or — without one — straight to the URL (a caller off the fence).
    const target = new URL(url);
    const via = sidecar ? new URL(sidecar.proxyUrl) : target;
    const req = httpRequest(
      {
        host: via.hostname,
        port: via.port,
        method,
        path: sidecar ? url : target.pathname,
        headers: { host: target.host, ...(body ? { 'content-type': 'application/json' } : {}), ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export async function runDemo(options: DemoOptions): Promise<void> {
  const { out } = options;
  const cleanup: (() => Promise<void> | void)[] = [];
  const started = Date.now();
  try {
    out('▶ starting the local control plane (etcd, kube-apiserver, kube-controller-manager)…');
    const plane = await startControlPlane({
      binaries: options.binaries,
      logger: options.logger,
      ...(options.kubeconfigPath ? { kubeconfigPath: options.kubeconfigPath } : {}),
    });
    cleanup.push(() => plane.stop());
    await installCRDs(plane);
    const k = (args: string[], input?: string): Promise<string> => kubectlOrThrow(plane, args, input);
    const client = await clientFromKubeconfig(plane.kubeconfigPath);
    cleanup.push(() => client.close());
    const dir = await mkdtemp(join(tmpdir(), 'agentfence-demo-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));

    // The controller: reconciler, webhook, identity issuer and entitlement distribution, on one TLS port.
    await k(['create', 'namespace', CONTROLLER.namespace]);
    const { operator, issuerUrl, caPem } = await startLocalController({
      client,
      namespace: CONTROLLER.namespace,
      podName: `${CONTROLLER.serviceName}-0`,
      heartbeatMs: 5000,
      logger: options.logger,
      injector: (controllerUrl) => localInjectorConfig(controllerUrl, 'demo'),
    });
    const ca = { certPem: caPem };
    await writeFile(join(dir, 'ca.crt'), caPem);
    cleanup.push(() => operator.stop());
    const caBundle = Buffer.from(ca.certPem).toString('base64');
    const exclude = ['kube-system', 'kube-public', 'kube-node-lease', CONTROLLER.namespace];
    await k(
      ['apply', '--server-side', '-f', '-'],
      JSON.stringify(
        mutatingWebhookConfiguration({
          clientConfig: { url: `${issuerUrl}/mutate-pods` },
          caBundle,
          excludeNamespaces: exclude,
        }),
      ),
    );
    await k(['apply', '--server-side', '-f', '-'], JSON.stringify(podIntegrityPolicy()));
    await k(['apply', '--server-side', '-f', '-'], JSON.stringify(podIntegrityBinding({ excludeNamespaces: exclude })));
    out(`✔ controller up at ${issuerUrl} (webhook, identity, entitlements); webhook and admission policy registered`);

    // Upstreams an agent might talk to.
    const verifier = createAgentVerifier({
      issuer: issuerUrl,
      audience: 'orders-api',
      trustDomain: 'cluster.local',
      fetch: fetchWithCA(ca.certPem),
    });
    const ordersApp = express();
    ordersApp.get(
      '/v1/orders/:id',
      requireAgent(verifier, { allowAgents: [`spiffe://cluster.local/ns/${NS}/agent/support-agent`] }),
      (req, res) => {
        res.json({ order: req.params.id, status: 'shipped', verifiedCaller: agentOf(res).sub });
      },
    );
    const ordersPort = await listen(createServer(ordersApp), cleanup);
    const llmPort = await listen(
      createServer((_req, res) =>
        res.end(JSON.stringify({ choices: [{ message: { content: 'Here is a summary.' } }] })),
      ),
      cleanup,
    );
    const docsPort = await listen(
      createServer((req, res) => res.end(`docs page ${req.url ?? ''}\n`)),
      cleanup,
    );
    out(
      `✔ upstreams: orders API :${ordersPort} (verifies agent tokens), LLM-like API :${llmPort}, docs site :${docsPort}`,
    );
    // research-agent's own app: it serves research to other agents and trusts the caller its sidecar names.
    const researchPort = await listen(
      createServer((req, res) => {
        req.resume();
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ answer: 'three sources found', caller: req.headers['agentfence-caller'] ?? null }));
      }),
      cleanup,
    );
    // The research pod's address: it never runs here, so a loopback address stands in for its pod IP.
    const researchIP = `127.77.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;

    // Policies and agents.
    await k(['create', 'namespace', NS]);
    await k(['create', 'serviceaccount', 'support-agent', '-n', NS]);
    await k(['create', 'serviceaccount', 'research-agent', '-n', NS]);
    const supportPolicy = (withOrders: boolean): string =>
      stringify({
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        metadata: { name: 'support-agent', namespace: NS },
        spec: {
          agentSelector: { matchLabels: { 'agentfence.io/agent': 'support-agent' } },
          egress: [
            ...(withOrders
              ? [
                  {
                    name: 'orders-api',
                    to: { cidrs: ['127.0.0.1/32'] },
                    ports: [{ port: ordersPort }],
                    http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/orders/' }] }],
                    audience: 'orders-api',
                  },
                ]
              : []),
            {
              // Another agent: the sidecar attaches a token for research-agent's SPIFFE ID and dials its gate.
              name: 'research-agent',
              to: { agents: { agentSelector: { matchLabels: { 'agentfence.io/agent': 'research-agent' } } } },
              ports: [{ port: researchPort }],
              http: [{ methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/research' }] }],
            },
          ],
        },
      });
    const researchPolicy = stringify({
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentPolicy',
      metadata: { name: 'research-agent', namespace: NS },
      spec: {
        agentSelector: { matchLabels: { 'agentfence.io/agent': 'research-agent' } },
        egress: [
          {
            name: 'llm-api',
            to: { cidrs: ['127.0.0.1/32'] },
            ports: [{ port: llmPort }],
            http: [{ methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/chat/completions' }] }],
          },
          {
            name: 'docs-site',
            to: { cidrs: ['127.0.0.1/32'] },
            ports: [{ port: docsPort }],
            http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/docs/' }] }],
          },
        ],
      },
    });
    await k(['apply', '-f', '-'], supportPolicy(true));
    await k(['apply', '-f', '-'], researchPolicy);
    out(
      '✔ AgentPolicies applied: support-agent → orders API (GET /v1/orders/*) + research-agent (POST /v1/research); research-agent → LLM (POST) + docs (GET /docs/*)',
    );

    const sidecars = new Map<string, RunningSidecar>();
    const audits: AuditRecord[] = [];
    for (const agent of ['support-agent', 'research-agent']) {
      const pod = JSON.parse(
        await k(
          ['create', '-o', 'json', '-f', '-'],
          stringify({
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name: `${agent}-0`, namespace: NS, labels: { 'agentfence.io/inject': 'true' } },
            spec: {
              serviceAccountName: agent,
              containers: [
                {
                  name: 'agent',
                  image: `registry.example/${agent}:1`,
                  // research-agent serves other agents on a named port: the webhook puts its sidecar's gate in front.
                  ...(agent === 'research-agent' ? { ports: [{ name: 'http', containerPort: researchPort }] } : {}),
                },
              ],
            },
          }),
        ),
      ) as {
        metadata: { name: string; uid: string; labels: Record<string, string> };
        spec: { initContainers?: { name: string; args?: unknown }[] };
      };
      const gates = gatesOfPod(pod.spec);
      if (gates.length > 0) {
        await k([
          'patch',
          'pod',
          pod.metadata.name,
          '-n',
          NS,
          '--subresource=status',
          '--type=merge',
          '-p',
          JSON.stringify({ status: { podIP: researchIP, podIPs: [{ ip: researchIP }] } }),
        ]);
      }
      out(
        `✔ pod ${NS}/${pod.metadata.name} created through the API server → injected: ${(pod.spec.initContainers ?? []).map((c) => c.name).join(', ')}, agent label ${pod.metadata.labels['agentfence.io/agent'] ?? '?'}${gates.length > 0 ? `, inbound gate ${gates.map((g) => `:${g.gate} → app :${g.port}`).join(', ')}` : ''}`,
      );
      const token = JSON.parse(
        await k([
          'create',
          'token',
          agent,
          '-n',
          NS,
          '--audience=agentfence.io/operator',
          `--bound-object-kind=Pod`,
          `--bound-object-name=${pod.metadata.name}`,
          `--bound-object-uid=${pod.metadata.uid}`,
          '--duration=10m',
          '-o',
          'json',
        ]),
      ) as { status: { token: string } };
      const tokenFile = join(dir, `${agent}.token`);
      await writeFile(tokenFile, token.status.token);
      const sidecar = await startSidecar(
        {
          listen: { host: '127.0.0.1', port: 0 },
          adminListen: { host: '127.0.0.1', port: 0 },
          mode: { kind: 'controller', controllerUrl: issuerUrl, tokenFile, caFile: join(dir, 'ca.crt') },
          ...(gates.length > 0 ? { inbound: { host: researchIP, gates } } : {}),
          maxStalenessMs: 60_000,
          pod: { name: pod.metadata.name, namespace: NS },
        },
        silentLogger,
        {
          audit: { write: (r) => audits.push(r), dropped: () => 0, flush: () => undefined },
          registry: createRegistry({ defaultMetrics: false }),
        },
      );
      cleanup.push(() => sidecar.stop());
      sidecars.set(agent, sidecar);
    }
    for (const [agent, sidecar] of sidecars) {
      for (let i = 0; i < 300 && (await fetch(`${sidecar.adminUrl}/readyz`)).status !== 200; i++) await sleep(100);
      const status = (await (await fetch(`${sidecar.adminUrl}/status`)).json()) as { agent: string; revision: string };
      out(`✔ sidecar of ${agent} ready: identity ${status.agent}, entitlements ${status.revision.slice(0, 19)}…`);
    }
    const support = sidecars.get('support-agent');
    const research = sidecars.get('research-agent');
    if (!support || !research) throw new Error('sidecars missing');

    const show = async (
      who: string,
      sidecar: RunningSidecar | undefined,
      method: string,
      url: string,
      body?: string,
      headers?: Record<string, string>,
    ): Promise<number> => {
      const res = await call(sidecar, method, url, body, headers);
      let detail = res.body.trim();
      try {
        const json = JSON.parse(detail) as Record<string, unknown>;
        detail = res.status >= 400 ? `${String(json.reason)}: ${String(json.missing)}` : JSON.stringify(json);
      } catch {
        /* plain text */
      }
      out(`  ${who.padEnd(15)} ${method.padEnd(4)} ${url.replace('http://127.0.0.1', '')} → ${res.status} ${detail}`);
      return res.status;
    };
    out('');
    out('▶ agents making calls through their sidecars:');
    await show('support-agent', support, 'GET', `http://127.0.0.1:${ordersPort}/v1/orders/42`);
    await show('support-agent', support, 'POST', `http://127.0.0.1:${ordersPort}/v1/orders/42`, '{}');
    await show('support-agent', support, 'POST', `http://127.0.0.1:${llmPort}/v1/chat/completions`, '{}');
    await show(
      'research-agent',
      research,
      'POST',
      `http://127.0.0.1:${llmPort}/v1/chat/completions`,
      '{"messages":[]}',
    );
    await show('research-agent', research, 'GET', `http://127.0.0.1:${docsPort}/docs/intro`);
    await show('research-agent', research, 'GET', `http://127.0.0.1:${ordersPort}/v1/orders/42`);

    out('');
    out('▶ agent to agent: support-agent → its sidecar → research-agent’s gate (verifies the caller) → research app:');
    const researchUrl = `http://${researchIP}:${researchPort}/v1/research`;
    for (let i = 0; i < 100 && (await call(support, 'POST', researchUrl, '{}')).status !== 200; i++) await sleep(100);
    await show('support-agent', support, 'POST', researchUrl, '{"q":"refund policy"}', {
      'agentfence-caller': `spiffe://cluster.local/ns/${NS}/agent/admin`,
    });
    const gatePort = research.gatePorts[0] ?? 0;
    out(`  a caller off the fence, claiming to be support-agent, straight to the gate :${gatePort}:`);
    await show('forged caller', undefined, 'POST', `http://${researchIP}:${gatePort}/v1/research`, '{}', {
      'agentfence-caller': `spiffe://cluster.local/ns/${NS}/agent/support-agent`,
    });

    out('');
    out(`▶ kubectl get agentpolicies,agententitlements,networkpolicies -n ${NS}`);
    await sleep(500);
    for (const line of (await k(['get', 'agentpolicies,agententitlements,networkpolicies', '-n', NS]))
      .trimEnd()
      .split('\n'))
      out(`  ${line}`);

    out('');
    out('▶ audit lines (one JSON object per decision on each sidecar’s stdout; three shown):');
    for (const a of audits.slice(0, 3)) {
      out(
        `  ${JSON.stringify({ agent: a.agent, method: a.method, host: a.host, port: a.port, path: a.path, decision: a.decision, reason: a.reason, rule: a.rule, status: a.status })}`,
      );
    }

    out('');
    out('▶ narrowing support-agent live: kubectl apply the policy without the orders-api rule');
    const t0 = Date.now();
    await k(['apply', '-f', '-'], supportPolicy(false));
    let status = 200;
    while (status !== 403 && Date.now() - t0 < 15_000) {
      // Revocation closes idle keep-alive connections; a request racing that close is simply retried.
      status = await call(support, 'GET', `http://127.0.0.1:${ordersPort}/v1/orders/42`).then(
        (r) => r.status,
        () => 0,
      );
    }
    out(`  enforced ${Date.now() - t0} ms after kubectl apply (including kubectl itself):`);
    await show('support-agent', support, 'GET', `http://127.0.0.1:${ordersPort}/v1/orders/42`);

    out('');
    const took = `Done in ${((Date.now() - started) / 1000).toFixed(1)} s.`;
    if (!options.until) {
      out(`${took} Stopping the control plane and removing every process and file.`);
      return;
    }
    out(`${took} The cluster keeps running: kubectl --kubeconfig ${plane.kubeconfigPath} get ap,ae,netpol -A`);
    out(`  kubectl: ${options.binaries.kubectl}`);
    out('Press Ctrl-C to stop; everything is removed on exit.');
    await options.until;
  } finally {
    for (const fn of cleanup.reverse()) {
      try {
        await fn();
      } catch {
        // keep tearing down
      }
    }
  }
}
