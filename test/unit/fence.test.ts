/**
 * "Fenced as injected": the token exchange's check that a live pod carries the sidecar exactly as this
 * controller injects it. The reference is the webhook's own render; each tampering below is a way to run an
 * agent identity without (or around) the fence.
 */
import { describe, expect, it } from 'vitest';
import { fenceChecker, fenceProblem } from '../../webhook/fence.ts';
import { inject, type Container, type InjectorConfig, type Pod } from '../../webhook/inject.ts';

const config: InjectorConfig = {
  version: '0.1.0',
  image: 'ghcr.io/agentfence/agentfence:0.1.0',
  controllerUrl: 'https://agentfence-controller.agentfence-system.svc',
  logLevel: 'info',
  maxStaleness: '60s',
  resources: { cpuRequest: '50m', memoryRequest: '48Mi', memoryLimit: '128Mi' },
};

function injected(): Pod {
  const out = inject(
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'a', namespace: 'demo', labels: { 'agentfence.io/inject': 'true' } },
      spec: {
        serviceAccountName: 'support-agent',
        initContainers: [{ name: 'fetch', image: 'registry.example/fetch:1' }],
        containers: [{ name: 'agent', image: 'registry.example/agent:1', ports: [{ containerPort: 8080 }] }],
        volumes: [{ name: 'data', emptyDir: {} }],
      },
    },
    config,
  );
  if (!out.allowed) throw new Error(out.message);
  return out.pod;
}

const sidecar = (p: Pod): Container => {
  const c = p.spec.initContainers?.find((x) => x.name === 'agentfence-sidecar');
  if (!c) throw new Error('no sidecar');
  return c;
};

/** What the API server adds on create (defaults) and what may change on a live pod without touching the fence. */
function asStored(p: Pod): Pod {
  const pod = structuredClone(p);
  for (const c of [...(pod.spec.initContainers ?? []), ...pod.spec.containers]) {
    c.terminationMessagePath = '/dev/termination-log';
    c.terminationMessagePolicy = 'File';
    c.imagePullPolicy = 'IfNotPresent';
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const pr = c[probe] as { httpGet?: Record<string, unknown> } | undefined;
      if (!pr) continue;
      Object.assign(pr, { timeoutSeconds: 1, successThreshold: 1 });
      if (pr.httpGet) pr.httpGet.scheme = 'HTTP';
    }
    for (const e of c.env ?? []) {
      const ref = (e.valueFrom as { fieldRef?: Record<string, unknown> } | undefined)?.fieldRef;
      if (ref) ref.apiVersion = 'v1';
    }
    for (const port of c.ports ?? []) port.protocol ??= 'TCP';
  }
  for (const v of pod.spec.volumes ?? []) {
    const cm = v.configMap as Record<string, unknown> | undefined;
    if (cm) cm.defaultMode = 420;
  }
  pod.spec.dnsPolicy = 'ClusterFirst';
  pod.spec.restartPolicy = 'Always';
  const sc = sidecar(pod);
  sc.resources = { requests: { cpu: '100m', memory: '48Mi' }, limits: { memory: '256Mi' } }; // resized in place
  return pod;
}

describe('fenceProblem', () => {
  it('accepts a pod exactly as injected, also with the API server defaults and a resize', () => {
    expect(fenceProblem(injected(), config)).toBeUndefined();
    expect(fenceProblem(asStored(injected()), config)).toBeUndefined();
  });

  it.each<[string, (p: Pod) => void, RegExp]>([
    ['a hand-written annotation', (p) => (p.metadata.annotations = { 'agentfence.io/injected': '{}' }), /annotation/],
    [
      'no annotation',
      (p) => {
        p.metadata.annotations = {};
      },
      /no injection annotation/,
    ],
    ['the sidecar image swapped', (p) => (sidecar(p).image = 'registry.example/fake:1'), /image/],
    ['a command added to the sidecar', (p) => (sidecar(p).command = ['/bin/sh', '-c', 'sleep inf']), /command/],
    [
      'the sidecar args changed (another controller)',
      (p) => (sidecar(p).args = ['sidecar', '--controller=https://evil.example']),
      /args/,
    ],
    [
      'a capability added to the sidecar',
      (p) => (sidecar(p).securityContext = { ...sidecar(p).securityContext, capabilities: { add: ['NET_ADMIN'] } }),
      /securityContext/,
    ],
    [
      'a sidecar mount added',
      (p) => ((sidecar(p).volumeMounts as unknown[]).push({ name: 'data', mountPath: '/data' }), undefined),
      /volumeMounts/,
    ],
    [
      'the token volume for another audience',
      (p) => {
        const v = p.spec.volumes?.find((x) => x.name === 'agentfence-token');
        if (v) v.projected = { sources: [{ serviceAccountToken: { audience: 'x', path: 'token' } }] };
      },
      /agentfence-token/,
    ],
    [
      'no sidecar at all',
      (p) => (p.spec.initContainers = p.spec.initContainers?.filter((c) => c.name !== 'agentfence-sidecar')),
      /exactly one agentfence-sidecar/,
    ],
    [
      'the sidecar not first (the app would start before it)',
      (p) => (p.spec.initContainers = [...(p.spec.initContainers ?? [])].reverse()),
      /first among its init containers/,
    ],
    [
      'an ephemeral container (kubectl debug)',
      (p) => (p.spec.ephemeralContainers = [{ name: 'debug', image: 'busybox', targetContainerName: 'agent' }]),
      /ephemeral/,
    ],
    [
      'an app container without the proxy environment',
      (p) => (p.spec.containers[0] ? delete p.spec.containers[0].env : undefined),
      /spec\.containers/,
    ],
    [
      'an app container mounting the token volume',
      (p) =>
        p.spec.containers[0]
          ? (p.spec.containers[0].volumeMounts = [{ name: 'agentfence-token', mountPath: '/t' }])
          : undefined,
      /agentfence-token/,
    ],
    ['hostPID', (p) => (p.spec.hostPID = true), /hostPID/],
    ['not a pod', (p) => delete (p as { spec?: unknown }).spec, /no readable spec/],
  ])('refuses %s', (_, tamper, why) => {
    const pod = asStored(injected());
    tamper(pod);
    const problem = fenceProblem(pod, config);
    expect(problem).toMatch(why);
  });

  it('refuses a pod injected with another configuration (recomputes the hash, does not trust it)', () => {
    expect(fenceProblem(injected(), { ...config, image: 'ghcr.io/agentfence/agentfence:0.2.0' })).toMatch(
      /annotation does not match/,
    );
    expect(fenceProblem(injected(), { ...config, controllerUrl: 'https://other.example' })).toMatch(/annotation/);
  });

  it('names fields, never values from the pod', () => {
    const pod = injected();
    sidecar(pod).args = ['--token=supersecret'];
    expect(fenceProblem(pod, config)).not.toContain('supersecret');
  });
});

describe('fenceChecker', () => {
  it('remembers the verdict per pod revision, and checks a new revision again', () => {
    const check = fenceChecker(config);
    const pod = asStored(injected());
    pod.metadata.uid = 'u1';
    pod.metadata.resourceVersion = '10';
    expect(check(pod)).toBeUndefined();
    // Same uid and resourceVersion: the same object as far as the API server is concerned.
    const tampered = structuredClone(pod);
    sidecar(tampered).image = 'registry.example/fake:1';
    tampered.metadata.resourceVersion = '11';
    expect(check(tampered)).toMatch(/image/);
    expect(check(pod)).toBeUndefined();
    // Without a resourceVersion nothing is remembered.
    delete tampered.metadata.resourceVersion;
    expect(check(tampered)).toMatch(/image/);
  });
});

describe('earlier injector configurations, accepted during a rollout', () => {
  it('accepts a pod injected by an accepted earlier configuration, and only those', () => {
    const old = { ...config, version: '0.0.9', image: 'ghcr.io/agentfence/agentfence:0.0.9' };
    const out = inject(
      {
        metadata: { name: 'a', namespace: 'demo', labels: { 'agentfence.io/inject': 'true' } },
        spec: { serviceAccountName: 'sa', containers: [{ name: 'agent', image: 'registry.example/agent:1' }] },
      },
      old,
    );
    if (!out.allowed) throw new Error(out.message);
    expect(fenceChecker(config)(out.pod)).toMatch(/annotation does not match/);
    expect(fenceChecker(config, [old])(out.pod)).toBeUndefined();
    // The image alone is not enough: an old pod whose sidecar was swapped stays refused.
    sidecar(out.pod).image = 'ghcr.io/agentfence/agentfence:0.2.0';
    expect(fenceChecker(config, [old])(out.pod)).toMatch(/annotation|image/);
  });
});

describe('inbound gates and the fence', () => {
  it('accepts a pod injected with gates, and one injected before gates existed (no --inbound), as rendered then', () => {
    expect(fenceProblem(asStored(injected()), config)).toBeUndefined();
    const base: Pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'a', namespace: 'demo', labels: { 'agentfence.io/inject': 'true' } },
      spec: {
        serviceAccountName: 'support-agent',
        containers: [
          { name: 'agent', image: 'registry.example/agent:1', ports: [{ name: 'http', containerPort: 8080 }] },
        ],
      },
    };
    const old = inject(base, config, { gates: false });
    if (!old.allowed) throw new Error(old.message);
    expect(old.pod.spec.containers[0]?.ports?.[0]?.name).toBe('http');
    expect(fenceProblem(asStored(old.pod), config)).toBeUndefined();
  });

  it('refuses a pod whose gates were changed: another mapping, or a gate dropped', () => {
    const pod = asStored(injected());
    const args = sidecar(pod).args as string[];
    const i = args.findIndex((a) => a.startsWith('--inbound='));
    args[i] = '--inbound=15006:9999';
    expect(fenceProblem(pod, config)).toMatch(/differs from the injected one in: args/);
    const dropped = asStored(injected());
    sidecar(dropped).ports = sidecar(dropped).ports?.filter((p) => p.containerPort !== 15006);
    expect(fenceProblem(dropped, config)).toMatch(/differs from the injected one in: ports/);
  });

  it('refuses a gated pod without its gated label, or a port-less pod whose empty --inbound was dropped', () => {
    // Without the label the pre-gate NetworkPolicies would select it: such a pod gets no identity.
    const unlabelled = asStored(injected());
    Reflect.deleteProperty(unlabelled.metadata.labels ?? {}, 'agentfence.io/inbound-gated');
    expect(fenceProblem(unlabelled, config)).toMatch(/labels/);
    const portless = inject(
      {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'p', namespace: 'demo', labels: { 'agentfence.io/inject': 'true' } },
        spec: {
          serviceAccountName: 'support-agent',
          containers: [{ name: 'agent', image: 'registry.example/agent:1' }],
        },
      },
      config,
    );
    if (!portless.allowed) throw new Error(portless.message);
    const pod = asStored(portless.pod);
    expect(fenceProblem(pod, config)).toBeUndefined();
    // Posing as pre-gate (argument dropped) while labelled gated: the render of either version differs.
    sidecar(pod).args = (sidecar(pod).args as string[]).filter((a) => !a.startsWith('--inbound'));
    expect(fenceProblem(pod, config)).toBeDefined();
  });
});

describe("the sidecar's runtime settings and the fence", () => {
  const runtime = ['NODE_OPTIONS', 'GLIBC_TUNABLES'];
  it('accepts a pod injected before the sidecar had runtime settings, and refuses any other or partial ones', () => {
    const without = (pod: Pod, names: string[]): Pod => {
      sidecar(pod).env = sidecar(pod).env?.filter((e) => !names.includes(e.name));
      return pod;
    };
    // Injected by the previous release (neither variable): still fenced, so upgrading keeps running pods' identity.
    expect(fenceProblem(without(asStored(injected()), runtime), config)).toBeUndefined();
    // One of them alone is not what any release injected.
    for (const name of runtime) {
      expect(fenceProblem(without(asStored(injected()), [name]), config)).toMatch(
        /differs from the injected one in: env/,
      );
    }
    // Any other value on the sidecar (a preload, an inspector, another heap or allocator) is not the injection.
    for (const [name, value] of [
      ['NODE_OPTIONS', '--require=/tmp/x.js'],
      ['NODE_OPTIONS', '--inspect=0.0.0.0:9229'],
      ['NODE_OPTIONS', '--max-old-space-size=4096'],
      ['NODE_OPTIONS', ''],
      ['GLIBC_TUNABLES', 'glibc.malloc.check=3'],
    ] as const) {
      const pod = asStored(injected());
      const env = sidecar(pod).env?.find((e) => e.name === name);
      if (!env) throw new Error(`the injection sets ${name}`);
      env.value = value;
      expect(fenceProblem(pod, config)).toMatch(/differs from the injected one in: env/);
    }
    const moved = asStored(injected());
    sidecar(moved).env = sidecar(moved).env?.map((e) =>
      e.name === 'NODE_OPTIONS' ? { name: e.name, valueFrom: { configMapKeyRef: { name: 'x', key: 'y' } } } : e,
    );
    expect(fenceProblem(moved, config)).toMatch(/differs from the injected one in: env/);
  });
});
