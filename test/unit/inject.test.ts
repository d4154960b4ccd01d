/**
 * Injection golden files: each test/golden/inject/<case>.input.yaml is admitted; our JSONPatch is applied with
 * an independent implementation (fast-json-patch) and must give <case>.output.yaml; then the output is admitted
 * again and must come back unchanged (idempotency, reinvocation). UPDATE_GOLDEN=1 rewrites the outputs.
 */
import { readdirSync, readFileSync } from 'node:fs';
import fastJsonPatch from 'fast-json-patch';
import { describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { review } from '../../webhook/admission.ts';
import { inject, type InjectorConfig, type Pod } from '../../webhook/inject.ts';
import { expectGolden } from '../support/golden.ts';

const dir = new URL('../golden/inject/', import.meta.url).pathname;
const config: InjectorConfig = {
  version: '0.1.0',
  image: 'ghcr.io/agentfence/agentfence:0.1.0',
  controllerUrl: 'https://agentfence-controller.agentfence-system.svc',
  logLevel: 'info',
  maxStaleness: '60s',
  resources: { cpuRequest: '50m', memoryRequest: '48Mi', memoryLimit: '128Mi' },
};

function admit(pod: Pod, operation = 'CREATE') {
  return review({ uid: 'u-1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation, object: pod }, config);
}

function applyPatch(pod: Pod, patch: string | undefined): Pod {
  if (!patch) return pod;
  const ops = JSON.parse(Buffer.from(patch, 'base64').toString()) as fastJsonPatch.Operation[];
  return fastJsonPatch.applyPatch(structuredClone(pod), ops, true, false).newDocument;
}

describe('injection golden files', () => {
  const cases = readdirSync(dir)
    .filter((f) => f.endsWith('.input.yaml'))
    .map((f) => f.replace('.input.yaml', ''));
  it('has the cases', () => expect(cases.length).toBeGreaterThanOrEqual(5));

  it.each(cases)('%s: patch applied independently gives the golden pod, and a second pass changes nothing', (name) => {
    const input = parse(readFileSync(`${dir}${name}.input.yaml`, 'utf8')) as Pod;
    const first = admit(input);
    expect(first.response.allowed).toBe(true);
    expect(first.response.patchType).toBe('JSONPatch');
    const output = applyPatch(input, first.response.patch);
    expectGolden(`${dir}${name}.output.yaml`, stringify(output));

    const second = admit(output, 'UPDATE');
    expect(second.response.allowed).toBe(true);
    expect(second.response.patch).toBeUndefined(); // nothing to change: no duplicate sidecar, volume or env
    expect(second.result).toBe('unchanged');
    expect(output.spec.initContainers?.filter((c) => c.name === 'agentfence-sidecar')).toHaveLength(1);
  });
});

describe('injection rules', () => {
  const base = (): Pod => parse(readFileSync(`${dir}plain.input.yaml`, 'utf8')) as Pod;

  it('puts the sidecar first among init containers, as a native sidecar with a startup probe', () => {
    const pod = parse(readFileSync(`${dir}init-containers.input.yaml`, 'utf8')) as Pod;
    const out = inject(pod, config);
    if (!out.allowed) throw new Error(out.message);
    expect(out.pod.spec.initContainers?.map((c) => c.name)).toEqual(['agentfence-sidecar', 'fetch-prompts']);
    const sidecar = out.pod.spec.initContainers?.[0];
    expect(sidecar?.restartPolicy).toBe('Always');
    expect(sidecar?.startupProbe).toMatchObject({ httpGet: { path: '/readyz', port: 15020 } });
    // The projected token is mounted into the sidecar only.
    const mounts = (c: object) => JSON.stringify((c as { volumeMounts?: unknown }).volumeMounts ?? []);
    expect(mounts(sidecar ?? {})).toContain('agentfence-token');
    for (const c of [...out.pod.spec.containers, ...(out.pod.spec.initContainers ?? []).slice(1)])
      expect(mounts(c)).not.toContain('agentfence-token');
    expect(JSON.stringify(out.pod.spec.volumes)).toContain('"audience":"agentfence.io/operator"');
  });

  it('makes the token readable by the sidecar UID when the kubelet writes it as root:root', () => {
    // Without a pod fsGroup, and with app containers on other UIDs than the sidecar, the kubelet (1.36,
    // FsUserFrom) writes projected files as root:root with defaultMode: only the "other" bits reach UID 15001.
    // The real-node suite proves it on a kubelet; this pins the mode for every shape of input pod.
    for (const file of ['plain', 'multi-container', 'init-containers', 'existing-volumes', 'job-pod']) {
      const out = inject(parse(readFileSync(`${dir}${file}.input.yaml`, 'utf8')) as Pod, config);
      if (!out.allowed) throw new Error(out.message);
      const token = out.pod.spec.volumes?.find((v) => v.name === 'agentfence-token') as
        { projected: { defaultMode: number } } | undefined;
      expect(token?.projected.defaultMode ?? 0, file).toSatisfy((mode: number) => (mode & 0o004) !== 0);
      expect(token?.projected.defaultMode ?? 0, file).toSatisfy((mode: number) => (mode & 0o222) === 0);
    }
  });

  it('defaults the agent label from the service account, and refuses an invalid one', () => {
    const pod = base();
    delete pod.metadata.labels?.['agentfence.io/agent'];
    const out = inject(pod, config);
    expect(out.allowed && out.pod.metadata.labels?.['agentfence.io/agent']).toBe('support-agent');
    const bad = base();
    if (bad.metadata.labels) bad.metadata.labels['agentfence.io/agent'] = 'Support_Agent';
    expect(inject(bad, config)).toMatchObject({ allowed: false, reason: 'InvalidAgentName' });
  });

  it('replaces a user HTTP(S)_PROXY with a warning and keeps NO_PROXY entries', () => {
    const pod = parse(readFileSync(`${dir}user-proxy-env.input.yaml`, 'utf8')) as Pod;
    const out = inject(pod, config);
    if (!out.allowed) throw new Error(out.message);
    const env = Object.fromEntries((out.pod.spec.containers[0]?.env ?? []).map((e) => [e.name, e.value]));
    expect(env.HTTPS_PROXY).toBe('http://127.0.0.1:15001');
    expect(env.https_proxy).toBe('http://127.0.0.1:15001');
    expect(env.NO_PROXY).toBe('.svc.cluster.local,10.0.0.0/8,localhost,127.0.0.1,::1');
    expect(out.warnings.join()).toContain('HTTPS_PROXY replaced');
    expect(JSON.stringify(out.pod)).not.toContain('corp-proxy');
  });

  it('wires the trust bundle: read-only mount and trust variables in every app and init container, written by the sidecar', () => {
    const pod = parse(readFileSync(`${dir}init-containers.input.yaml`, 'utf8')) as Pod;
    const out = inject(pod, config);
    if (!out.allowed) throw new Error(out.message);
    const [sidecar, ...init] = out.pod.spec.initContainers ?? [];
    expect(sidecar?.args).toContain('--trust-bundle-dir=/var/run/agentfence/trust');
    expect(sidecar?.volumeMounts).toContainEqual({ name: 'agentfence-trust', mountPath: '/var/run/agentfence/trust' });
    for (const c of [...init, ...out.pod.spec.containers]) {
      expect(c.volumeMounts, c.name).toContainEqual({
        name: 'agentfence-trust',
        mountPath: '/var/run/agentfence/trust',
        readOnly: true,
      });
      const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value]));
      for (const name of ['SSL_CERT_FILE', 'REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'GIT_SSL_CAINFO', 'AWS_CA_BUNDLE'])
        expect(env[name], `${c.name} ${name}`).toBe('/var/run/agentfence/trust/ca-bundle.pem');
      expect(env.NODE_EXTRA_CA_CERTS).toBe('/var/run/agentfence/trust/pod-ca.pem');
    }
    const volume = out.pod.spec.volumes?.find((v) => v.name === 'agentfence-trust');
    expect(volume).toEqual({ name: 'agentfence-trust', emptyDir: { medium: 'Memory', sizeLimit: '4Mi' } });
  });

  it('replaces a user trust-store variable with a warning (a file path cannot be merged)', () => {
    const pod = base();
    const app = pod.spec.containers[0] ?? { name: '' };
    app.env = [
      { name: 'REQUESTS_CA_BUNDLE', value: '/etc/corp/ca.pem' },
      { name: 'SSL_CERT_FILE', valueFrom: { configMapKeyRef: { name: 'tls', key: 'path' } } },
    ];
    const out = inject(pod, config);
    if (!out.allowed) throw new Error(out.message);
    const env = out.pod.spec.containers[0]?.env ?? [];
    expect(env.filter((e) => e.name === 'REQUESTS_CA_BUNDLE')).toEqual([
      { name: 'REQUESTS_CA_BUNDLE', value: '/var/run/agentfence/trust/ca-bundle.pem' },
    ]);
    expect(env.filter((e) => e.name === 'SSL_CERT_FILE')).toEqual([
      { name: 'SSL_CERT_FILE', value: '/var/run/agentfence/trust/ca-bundle.pem' },
    ]);
    expect(out.warnings.join()).toMatch(
      /container agent: SSL_CERT_FILE, REQUESTS_CA_BUNDLE replaced by the Agentfence trust bundle/,
    );
  });

  it("bounds the sidecar's memory for its limit (NODE_OPTIONS, GLIBC_TUNABLES on the sidecar only), also for an override", () => {
    const runtime = ['NODE_OPTIONS', 'GLIBC_TUNABLES'];
    const sidecarEnv = (pod: Pod, name: string): string | undefined => {
      const out = inject(pod, config);
      if (!out.allowed) throw new Error(out.message);
      for (const c of out.pod.spec.containers) expect(c.env?.some((e) => runtime.includes(e.name))).toBe(false);
      const sidecar = out.pod.spec.initContainers?.find((c) => c.name === 'agentfence-sidecar');
      return sidecar?.env?.find((e) => e.name === name)?.value;
    };
    const nodeOptions = (pod: Pod): string | undefined => sidecarEnv(pod, 'NODE_OPTIONS');
    expect(nodeOptions(base())).toBe('--max-semi-space-size=2 --max-old-space-size=96');
    expect(sidecarEnv(base(), 'GLIBC_TUNABLES')).toBe(
      'glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072',
    );
    for (const [limit, oldSpace] of [
      ['1Gi', 768],
      ['0.5Gi', 384],
      ['256M', 183],
      ['200000Ki', 146],
      ['268435456', 192],
    ] as const) {
      const pod = base();
      pod.metadata.annotations = { 'agentfence.io/sidecar-memory-limit': limit };
      expect(nodeOptions(pod)).toBe(`--max-semi-space-size=2 --max-old-space-size=${oldSpace}`);
    }
    // A limit too small to run the sidecar at all still gets a usable heap (the pod fails visibly, OOM, not V8).
    const tiny = base();
    tiny.metadata.annotations = { 'agentfence.io/sidecar-memory-limit': '16Mi' };
    expect(nodeOptions(tiny)).toBe('--max-semi-space-size=2 --max-old-space-size=32');
    // A controller limit the webhook's pattern does not read (valid for Kubernetes) gets no cap rather than a wrong one.
    const big = inject(base(), { ...config, resources: { ...config.resources, memoryLimit: '1Ti' } });
    if (!big.allowed) throw new Error(big.message);
    expect(big.pod.spec.initContainers?.[0]?.env?.find((e) => e.name === 'NODE_OPTIONS')?.value).toBe(
      '--max-semi-space-size=2',
    );
  });

  it('refuses a container that mounts the trust volume itself (it could replace the bundle)', () => {
    const pod = base();
    const app = pod.spec.containers[0] ?? { name: '' };
    app.volumeMounts = [{ name: 'agentfence-trust', mountPath: '/var/run/agentfence/trust' }];
    expect(inject(pod, config)).toMatchObject({ allowed: false, reason: 'ReservedVolume' });
  });

  it('warns, naming the container, when NO_PROXY comes from valueFrom or envFrom (it cannot be read at admission)', () => {
    const pod = base();
    const app = pod.spec.containers[0] ?? { name: '' };
    app.env = [{ name: 'no_proxy', valueFrom: { configMapKeyRef: { name: 'proxy', key: 'no_proxy' } } }];
    pod.spec.containers.push({ name: 'worker', image: 'x', envFrom: [{ configMapRef: { name: 'settings' } }] });
    pod.spec.containers.push({
      name: 'literal',
      image: 'x',
      env: [{ name: 'NO_PROXY', value: '.corp' }],
      envFrom: [{ configMapRef: { name: 'settings' } }],
    });
    const out = inject(pod, config);
    if (!out.allowed) throw new Error(out.message);
    const warnings = out.warnings.join('\n');
    expect(warnings).toMatch(new RegExp(`container ${app.name}: no_proxy is set through valueFrom`));
    expect(warnings).toMatch(/container worker: envFrom/);
    // A literal NO_PROXY wins over envFrom in Kubernetes anyway: nothing is lost there, no warning.
    expect(warnings).not.toMatch(/container literal/);
    const env = (name: string) => out.pod.spec.containers.find((c) => c.name === name)?.env ?? [];
    expect(env(app.name).find((e) => e.name === 'no_proxy')).toEqual({
      name: 'no_proxy',
      value: 'localhost,127.0.0.1,::1',
    });
    expect(env('literal').find((e) => e.name === 'NO_PROXY')?.value).toBe('.corp,localhost,127.0.0.1,::1');
    // The admission response carries the warnings.
    expect(admit(pod).response.warnings?.join('\n')).toContain('container worker: envFrom');
  });

  it.each([
    ['hostNetwork', (p: Pod) => (p.spec.hostNetwork = true), 'HostNetwork', 'hostNetwork'],
    [
      'shared process namespace',
      (p: Pod) => (p.spec.shareProcessNamespace = true),
      'ShareProcessNamespace',
      'process namespace',
    ],
    [
      'a container named like the sidecar',
      (p: Pod) => p.spec.containers.push({ name: 'agentfence-sidecar', image: 'x' }),
      'ContainerNameConflict',
      'already named',
    ],
    [
      'an app container as the sidecar UID',
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).securityContext = { runAsUser: 15001 }),
      'SidecarUIDInUse',
      'UID 15001',
    ],
    [
      'the sidecar UID pod-wide',
      (p: Pod) => (p.spec.securityContext = { runAsUser: 15001 }),
      'SidecarUIDInUse',
      'UID 15001',
    ],
    [
      'NET_ADMIN',
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).securityContext = { capabilities: { add: ['NET_ADMIN'] } }),
      'ForbiddenCapability',
      'NET_ADMIN',
    ],
    [
      'CAP_NET_RAW',
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).securityContext = { capabilities: { add: ['CAP_NET_RAW'] } }),
      'ForbiddenCapability',
      'NET_RAW',
    ],
    [
      'a privileged container',
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).securityContext = { privileged: true }),
      'PrivilegedContainer',
      'privileged',
    ],
    [
      'SYS_ADMIN',
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).securityContext = { capabilities: { add: ['SYS_ADMIN'] } }),
      'ForbiddenCapability',
      'SYS_ADMIN',
    ],
    [
      'PERFMON',
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).securityContext = { capabilities: { add: ['perfmon'] } }),
      'ForbiddenCapability',
      'PERFMON',
    ],
    [
      'ALL capabilities',
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).securityContext = { capabilities: { add: ['ALL'] } }),
      'ForbiddenCapability',
      'ALL',
    ],
    ['hostPID', (p: Pod) => (p.spec.hostPID = true), 'HostPID', 'hostPID'],
    ['hostIPC', (p: Pod) => (p.spec.hostIPC = true), 'HostIPC', 'hostIPC'],
    [
      'a hostPath volume, even one no container mounts',
      (p: Pod) => (p.spec.volumes = [{ name: 'sock', hostPath: { path: '/var/run' } }]),
      'HostPathVolume',
      'hostPath',
    ],
    [
      "an app port on the sidecar's proxy port",
      (p: Pod) => ((p.spec.containers[0] ?? { name: '' }).ports = [{ containerPort: 15001, protocol: 'TCP' }]),
      'PortConflict',
      '15001',
    ],
    [
      'an init container privileged',
      (p: Pod) => (p.spec.initContainers = [{ name: 'init', image: 'x', securityContext: { privileged: true } }]),
      'PrivilegedContainer',
      'init',
    ],
    [
      'ephemeral containers present at injection',
      (p: Pod) => (p.spec.ephemeralContainers = [{ name: 'debug', image: 'busybox' }]),
      'EphemeralContainer',
      'ephemeral',
    ],
    [
      'an app container mounting the scratch volume of an earlier injection',
      (p: Pod) => {
        p.metadata.annotations = { 'agentfence.io/injected': '{}' };
        (p.spec.containers[0] ?? { name: '' }).volumeMounts = [{ name: 'agentfence-scratch', mountPath: '/x' }];
      },
      'ReservedVolume',
      'agentfence-scratch',
    ],
    [
      'a bad memory override',
      (p: Pod) => (p.metadata.annotations = { 'agentfence.io/sidecar-memory-limit': 'lots' }),
      'InvalidOverride',
      'not a resource quantity',
    ],
    [
      'a bad log level',
      (p: Pod) => (p.metadata.annotations = { 'agentfence.io/sidecar-log-level': 'trace' }),
      'InvalidOverride',
      'debug, info, warn, error',
    ],
    [
      'an unknown override (no way to switch enforcement off)',
      (p: Pod) => (p.metadata.annotations = { 'agentfence.io/sidecar-mode': 'disabled' }),
      'InvalidOverride',
      'not a supported override',
    ],
  ] as [string, (p: Pod) => unknown, string, string][])(
    'refuses %s with a message that says why',
    (_, mutate, reason, words) => {
      const pod = base();
      mutate(pod);
      const out = inject(pod, config);
      expect(out).toMatchObject({ allowed: false, reason });
      if (!out.allowed) expect(out.message).toContain(words);
      const { response } = admit(pod);
      expect(response).toMatchObject({ allowed: false, status: { code: 403 } });
      expect(response.status?.message).toContain(words);
    },
  );

  it('records what was injected; a changed configuration re-renders in place', () => {
    const first = inject(base(), config);
    if (!first.allowed) throw new Error('refused');
    const annotation = JSON.parse(first.pod.metadata.annotations?.['agentfence.io/injected'] ?? '{}') as {
      version: string;
      config: string;
    };
    expect(annotation.version).toBe('0.1.0');
    const newer = inject(first.pod, { ...config, image: 'ghcr.io/agentfence/agentfence:0.2.0' });
    if (!newer.allowed) throw new Error('refused');
    expect(newer.pod.spec.initContainers?.filter((c) => c.name === 'agentfence-sidecar').map((c) => c.image)).toEqual([
      'ghcr.io/agentfence/agentfence:0.2.0',
    ]);
    expect(JSON.parse(newer.pod.metadata.annotations?.['agentfence.io/injected'] ?? '{}')).not.toMatchObject({
      config: annotation.config,
    });
  });

  it('leaves unlabelled pods alone and echoes the uid', () => {
    const pod = base();
    if (pod.metadata.labels) delete pod.metadata.labels['agentfence.io/inject'];
    const { response, result } = admit(pod);
    expect(response).toEqual({ uid: 'u-1', allowed: true });
    expect(result).toBe('skipped');
  });
});

describe('refusal golden files', () => {
  const refusedDir = new URL('../golden/inject-refused/', import.meta.url).pathname;
  const cases = readdirSync(refusedDir)
    .filter((f) => f.endsWith('.input.yaml'))
    .map((f) => f.replace('.input.yaml', ''));
  it.each(cases)('%s: refused with the recorded reason and a message, and no patch', (name) => {
    const input = parse(readFileSync(`${refusedDir}${name}.input.yaml`, 'utf8')) as Pod;
    const expected = readFileSync(`${refusedDir}${name}.reason`, 'utf8').trim();
    const { response, reason } = admit(input);
    expect(reason).toBe(expected);
    expect(response.allowed).toBe(false);
    expect(response.patch).toBeUndefined();
    expect(response.status?.message).toMatch(/^agentfence: .{20,}/);
  });
  it('has, with the injected cases, at least 15 golden cases', () => {
    expect(cases.length + readdirSync(dir).filter((f) => f.endsWith('.input.yaml')).length).toBeGreaterThanOrEqual(15);
  });
});
