/**
 * The node behaves like a cluster: a pod reaches a ClusterIP Service by name (cluster DNS with the kubelet's
 * search path, then kube-proxy's NAT to the endpoint pod), names outside the cluster domain get NXDOMAIN (no
 * query leaves the machine), and a Service without endpoints is refused.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNamespace, execNode, realnode, run, runOrThrow, skipReason, waitPodReady } from './support.ts';

const reason = skipReason();
let ns: string;

/** A lookup from inside the pod: the addresses, or the resolver's error code. */
const lookup = (name: string): string => `require('node:dns').lookup(${JSON.stringify(name)},{all:true},(e,a)=>
console.log(JSON.stringify(e?{error:e.code}:{addresses:a.map((x)=>x.address)})));`;

const get = (url: string): string => `fetch(${JSON.stringify(url)},{signal:AbortSignal.timeout(5000)}).then(
async(r)=>console.log(JSON.stringify({status:r.status,body:await r.text()})),
(e)=>console.log(JSON.stringify({error:String(e.cause?.code??e.name)})));`;

const pod = (name: string, script: string): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { app: name } },
    spec: {
      terminationGracePeriodSeconds: 1,
      containers: [
        {
          name: 'main',
          image: realnode().image,
          imagePullPolicy: 'Never',
          command: ['node', '-e', script],
          securityContext: { runAsUser: 1000, allowPrivilegeEscalation: false },
        },
      ],
    },
  });

const service = (name: string, selector: Record<string, string>): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace: ns },
    spec: { selector, ports: [{ port: 80, targetPort: 8080, protocol: 'TCP' }] },
  });

describe.skipIf(reason)('a real node behaves like a cluster', () => {
  beforeAll(async () => {
    ns = await createNamespace('cluster');
    await runOrThrow(
      ['apply', '-f', '-'],
      pod('web', `require('node:http').createServer((q,s)=>s.end('web '+q.url)).listen(8080)`),
    );
    await runOrThrow(['apply', '-f', '-'], pod('client', 'setInterval(()=>{},1e9)'));
    await runOrThrow(['apply', '-f', '-'], service('web', { app: 'web' }));
    await runOrThrow(['apply', '-f', '-'], service('nobody', { app: 'nobody' }));
    await waitPodReady(ns, 'web');
    await waitPodReady(ns, 'client');
  });

  afterAll(async () => {
    if (ns) await run(['delete', 'namespace', ns, '--wait=false']);
  });

  it('resolves a Service by its full name and by the search-path forms, to its cluster IP', async () => {
    const clusterIP = (
      await runOrThrow(['get', 'service', 'web', '-n', ns, '-o', 'jsonpath={.spec.clusterIP}'])
    ).trim();
    expect(clusterIP).toMatch(/^10\.0\.0\.\d+$/);
    for (const name of [`web.${ns}.svc.cluster.local`, `web.${ns}.svc`, `web.${ns}`, 'web']) {
      expect(await execNode(ns, 'client', 'main', lookup(name))).toEqual({ addresses: [clusterIP] });
    }
  });

  it('answers NXDOMAIN for names that are not Services (nothing is forwarded off the machine)', async () => {
    for (const name of ['absent.default.svc.cluster.local', `absent.${ns}`, 'example.com', 'localhost.invalid']) {
      expect(await execNode(ns, 'client', 'main', lookup(name))).toEqual({ error: 'ENOTFOUND' });
    }
  });

  it('carries a connection to the Service name to its endpoint pod (kube-proxy), and refuses one without endpoints', async () => {
    expect(await execNode(ns, 'client', 'main', get('http://web/hello'))).toEqual({ status: 200, body: 'web /hello' });
    const none = await execNode<{ error?: string }>(ns, 'client', 'main', get('http://nobody/'));
    // kube-proxy's REJECT answers with an ICMP error at once (host unreachable here): no timeout to wait out.
    expect(['ECONNREFUSED', 'EHOSTUNREACH']).toContain(none.error);
  });
});

// Reported as skipped, with the reason in its name, only where the suite cannot run.
if (reason)
  describe('a real node behaves like a cluster (skipped)', () =>
    it.skip(`skipped on this machine: ${reason}`, () => undefined));
