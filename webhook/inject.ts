/**
 * Sidecar injection as a pure function: (pod, injector config) → the injected pod, or a refusal that says why.
 * No I/O, no clock: admission, dry-run admission and the golden tests all run exactly this.
 *
 * Re-rendering is idempotent: a pod that already carries our injection is first stripped of it (the sidecar,
 * our volumes, our environment entries) and then rendered again, so a second pass, a reinvocation after
 * another webhook added a container, or a changed configuration never duplicates anything.
 */
import { createHash } from 'node:crypto';
import {
  ANNOTATION_INJECTED,
  LABEL_AGENT,
  LABEL_INBOUND_GATED,
  LABEL_INJECT,
  OPERATOR_AUDIENCE,
} from '../lib/api/constants.ts';
import type { Container, ContainerPort, EnvVar, Pod } from '../lib/kube/pod.ts';
import { GATE_PORT_COUNT, GATE_PORT_FIRST, SIDECAR_CONTAINER } from '../lib/inbound/gates.ts';
import { assignGates, restoreGates } from './inbound.ts';

export const SIDECAR_NAME = SIDECAR_CONTAINER;
/** The sidecar's fixed UID (also the image's USER); app containers may not use it. */
export const SIDECAR_UID = 15001;
export const PROXY_PORT = 15001;
export const ADMIN_PORT = 15020;
export const CA_CONFIGMAP = 'agentfence-ca';
const VOLUME_TOKEN = 'agentfence-token';
const VOLUME_CA = 'agentfence-ca';
const VOLUME_SCRATCH = 'agentfence-scratch';
/** The trust bundle the sidecar writes (public roots + the pod's interception CA); app containers read it. */
const VOLUME_TRUST = 'agentfence-trust';
/**
 * The volumes the injection adds. Only the sidecar may mount them (the token volume holds its credential);
 * the trust volume is also mounted read-only into app and init containers by the injection itself, never by
 * the user (a writable mount could replace the bundle).
 */
export const INJECTED_VOLUMES: readonly string[] = [VOLUME_TOKEN, VOLUME_CA, VOLUME_SCRATCH, VOLUME_TRUST];
/**
 * The sidecar's listeners, in the pod's shared network namespace: an app port on any would collide. The inbound
 * gates (lib/inbound/gates.ts) are consecutive from 15006.
 */
export const SIDECAR_PORTS: readonly number[] = [
  PROXY_PORT,
  ...Array.from({ length: GATE_PORT_COUNT }, (_, i) => GATE_PORT_FIRST + i),
  ADMIN_PORT,
];
/**
 * Capabilities an app or init container may not add. NET_ADMIN/NET_RAW could rewrite routing or forge packets
 * around the proxy; SYS_PTRACE, SYS_ADMIN, BPF and PERFMON give ways into the sidecar's memory (ptrace, mounts
 * and namespaces, eBPF, perf events); ALL is all of them.
 */
const FORBIDDEN_CAPABILITIES: Record<string, string> = {
  NET_ADMIN: 'could bypass the sidecar',
  NET_RAW: 'could bypass the sidecar',
  SYS_PTRACE: 'could read the sidecar’s memory and its identity token',
  SYS_ADMIN: 'could read the sidecar’s memory and its identity token',
  BPF: 'could read the sidecar’s memory and its identity token',
  PERFMON: 'could read the sidecar’s memory and its identity token',
  ALL: 'could bypass the sidecar and read its memory',
};
const TOKEN_DIR = '/var/run/secrets/agentfence.io';
const CA_DIR = '/var/run/agentfence/ca';
/** Where the trust bundle is, in the sidecar (written) and in every app and init container (read-only). */
export const TRUST_DIR = '/var/run/agentfence/trust';
/** The bundle files (sidecar/pod-ca.ts writes them under these names). */
const TRUST_BUNDLE = `${TRUST_DIR}/ca-bundle.pem`;
const POD_CA = `${TRUST_DIR}/pod-ca.pem`;
/**
 * Where each common stack looks for its trust store, pointed at the bundle (public roots + pod CA; the
 * variables that replace a store get the whole bundle, so destinations that are not intercepted still verify).
 * Node adds NODE_EXTRA_CA_CERTS to its own roots, so it gets the pod CA alone. The JVM reads none of these
 * (docs/sidecar.md says what to do there).
 */
export const TRUST_ENV: readonly EnvVar[] = [
  { name: 'SSL_CERT_FILE', value: TRUST_BUNDLE }, // OpenSSL default paths: Python ssl/urllib/httpx, Ruby, Go, curl builds
  { name: 'REQUESTS_CA_BUNDLE', value: TRUST_BUNDLE }, // Python requests (ignores SSL_CERT_FILE)
  { name: 'CURL_CA_BUNDLE', value: TRUST_BUNDLE },
  { name: 'NODE_EXTRA_CA_CERTS', value: POD_CA },
  { name: 'GIT_SSL_CAINFO', value: TRUST_BUNDLE },
  { name: 'AWS_CA_BUNDLE', value: TRUST_BUNDLE }, // AWS CLI, boto3, AWS SDKs
  { name: 'PIP_CERT', value: TRUST_BUNDLE },
  { name: 'GRPC_DEFAULT_SSL_ROOTS_FILE_PATH', value: TRUST_BUNDLE }, // gRPC C-core (Python grpcio, Ruby)
  { name: 'DENO_CERT', value: TRUST_BUNDLE },
  { name: 'CARGO_HTTP_CAINFO', value: TRUST_BUNDLE },
];

/** Per-pod overrides: resources and verbosity only — nothing here can switch enforcement off. */
export const OVERRIDES = {
  cpuRequest: 'agentfence.io/sidecar-cpu-request',
  memoryRequest: 'agentfence.io/sidecar-memory-request',
  memoryLimit: 'agentfence.io/sidecar-memory-limit',
  logLevel: 'agentfence.io/sidecar-log-level',
} as const;

const PROXY_URL = `http://127.0.0.1:${PROXY_PORT}`;
const PROXY_VARS = ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'] as const;
const NO_PROXY_VARS = ['NO_PROXY', 'no_proxy'] as const;
const NO_PROXY_OURS = ['localhost', '127.0.0.1', '::1'];

export interface InjectorConfig {
  version: string;
  image: string;
  controllerUrl: string;
  logLevel: string;
  maxStaleness: string;
  resources: { cpuRequest: string; memoryRequest: string; memoryLimit: string };
}

// The webhook's pod is the one Pod type; re-exported for the webhook's callers.
export type { Container, EnvVar, Pod };

export type InjectResult =
  { allowed: true; pod: Pod; warnings: string[] } | { allowed: false; reason: RefusalReason; message: string };

export type RefusalReason =
  | 'HostNetwork'
  | 'ShareProcessNamespace'
  | 'HostPID'
  | 'HostIPC'
  | 'HostPathVolume'
  | 'OperatorAudienceToken'
  | 'EphemeralContainer'
  | 'ReservedVolume'
  | 'PortConflict'
  | 'ContainerNameConflict'
  | 'SidecarUIDInUse'
  | 'ForbiddenCapability'
  | 'PrivilegedContainer'
  | 'InvalidOverride'
  | 'InvalidAgentName';

const QUANTITY = /^([0-9]+(\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi)?$/;
const QUANTITY_BYTES: Record<string, number> = {
  '': 1,
  m: 1e-3,
  k: 1e3,
  Ki: 2 ** 10,
  M: 1e6,
  Mi: 2 ** 20,
  G: 1e9,
  Gi: 2 ** 30,
};

/**
 * The sidecar's runtime settings for its container memory limit (a validated quantity), as environment of the
 * sidecar container only (the image's entrypoint is shared with the controller). Measured with 100 concurrent
 * 1 MB MCP bodies (bench:proxy, docs/performance.md): the heap stays under 35 MB; what crossed the limit was
 * garbage — body chunks and freed buffers, off-heap memory that V8 frees only when it collects their small
 * wrappers, and freed buffers the allocator kept.
 * - NODE_OPTIONS: semi-spaces of 2 MiB (the default grows to 16 MiB each) make scavenges frequent, so those
 *   wrappers and their buffers go within a few megabytes of allocation (peak anonymous memory in that case
 *   65–75 MiB at 1 and 2 MiB, 86–91 at 4; 1 MiB doubles the scavenges under small-request load for no gain); an
 *   old-generation cap at 3/4 of the limit (96 MiB of 128 MiB, ~3× the heap measured under load) lets V8 size its
 *   collections for the container, not for the node's RAM (at least 32 MiB: below that the sidecar would not
 *   run anyway).
 * - GLIBC_TUNABLES: glibc's own defaults (128 KiB), fixed. Left dynamic, glibc raises its mmap threshold to the
 *   largest buffer freed (up to 32 MiB), so after the first 1 MB body every later one comes from the heap and
 *   stays resident after it is freed; fixed, large buffers are mapped and go back to the system when freed.
 */
export function sidecarRuntimeEnv(memoryLimit: string): EnvVar[] {
  // The controller's --sidecar-memory-limit is any Kubernetes quantity; one this pattern does not read (Ti, an
  // exponent) gets no old-space cap rather than a wrong one.
  const m = QUANTITY.exec(memoryLimit);
  const mib = m ? (Number(m[1]) * (QUANTITY_BYTES[m[3] ?? ''] ?? 1)) / 2 ** 20 : undefined;
  const oldSpace = mib === undefined ? '' : ` --max-old-space-size=${Math.max(32, Math.floor(mib * 0.75))}`;
  return [
    { name: 'NODE_OPTIONS', value: `--max-semi-space-size=2${oldSpace}` },
    { name: 'GLIBC_TUNABLES', value: 'glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072' },
  ];
}

/** The names sidecarRuntimeEnv sets (the fence check tells a sidecar injected before them by their absence). */
export const SIDECAR_RUNTIME_ENV: readonly string[] = sidecarRuntimeEnv('0').map((e) => e.name);
const LOG_LEVELS = new Set(['debug', 'info', 'warn', 'error']);
const LABEL_VALUE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export function configHash(config: InjectorConfig, overrides: Record<string, string>): string {
  const canonical = JSON.stringify({ config, overrides: Object.fromEntries(Object.entries(overrides).sort()) });
  return createHash('sha256').update(canonical).digest('hex').slice(0, 16);
}

function refuse(reason: RefusalReason, message: string): InjectResult & { allowed: false } {
  return { allowed: false, reason, message };
}

/**
 * Injects the sidecar into a pod labelled agentfence.io/inject=true. `gates: false` renders without inbound
 * gates and `runtimeEnv: false` without the sidecar's runtime settings: only the fence check uses them, for
 * pods injected before those existed (see webhook/fence.ts).
 */
export function inject(
  input: Pod,
  config: InjectorConfig,
  options: { gates?: boolean; runtimeEnv?: boolean } = {},
): InjectResult {
  const pod = strip(structuredClone(input));
  const refusal = refuseUnfenceable(pod);
  if (refusal) return refusal;
  const spec = pod.spec;
  const appContainers = [...(spec.initContainers ?? []), ...spec.containers];

  const overrides = readOverrides(pod.metadata.annotations ?? {});
  if ('error' in overrides) return refuse('InvalidOverride', overrides.error);

  const labels = { ...pod.metadata.labels };
  const warnings: string[] = [];
  if (!labels[LABEL_AGENT]) {
    const agent = spec.serviceAccountName ?? 'default';
    if (!LABEL_VALUE.test(agent)) {
      return refuse(
        'InvalidAgentName',
        `no ${LABEL_AGENT} label, and the service account name '${agent}' is not a valid agent name; set the label`,
      );
    }
    labels[LABEL_AGENT] = agent;
  } else if (!LABEL_VALUE.test(labels[LABEL_AGENT])) {
    return refuse('InvalidAgentName', `${LABEL_AGENT} must be a lower-case DNS label (got '${labels[LABEL_AGENT]}')`);
  }

  // Proxy environment and the trust bundle for every app and init container. The trust variables go first:
  // NO_PROXY is stripped and appended again on every render, so it must stay last for a re-render to be a no-op.
  for (const c of appContainers) {
    warnings.push(...unreadableNoProxy(c));
    const trust = setTrustEnv(c);
    const replaced = setProxyEnv(c);
    if (replaced.length > 0) {
      warnings.push(
        `container ${c.name}: ${replaced.join(', ')} replaced by the Agentfence sidecar address (egress goes through the fence)`,
      );
    }
    if (trust.length > 0) {
      warnings.push(
        `container ${c.name}: ${trust.join(', ')} replaced by the Agentfence trust bundle (public roots + the pod's interception CA); a private CA for an upstream belongs in the policy rule's caBundle`,
      );
    }
    c.volumeMounts = [...(c.volumeMounts ?? []), { name: VOLUME_TRUST, mountPath: TRUST_DIR, readOnly: true }];
  }

  const resources = { ...config.resources, ...overrides.values.resources };
  const logLevel = overrides.values.logLevel ?? config.logLevel;
  // Inbound gates: callers reaching the pod land on the sidecar (webhook/inbound.ts).
  const gates = options.gates === false ? { ports: [], arg: '', warnings: [] } : assignGates(pod);
  warnings.push(...gates.warnings);
  const runtimeEnv = options.runtimeEnv === false ? [] : sidecarRuntimeEnv(resources.memoryLimit);
  const sidecar = sidecarContainer(config, resources, logLevel, gates.ports, gates.arg, runtimeEnv);
  spec.initContainers = [sidecar, ...(spec.initContainers ?? [])];
  spec.volumes = [
    ...(spec.volumes ?? []),
    {
      name: VOLUME_TOKEN,
      projected: {
        sources: [{ serviceAccountToken: { audience: OPERATOR_AUDIENCE, expirationSeconds: 600, path: 'token' } }],
        // Readable by the sidecar's UID: unless every container runs as one UID (never: app containers may not
        // use the sidecar's) or the pod sets fsGroup, the kubelet writes this file as root:root with this mode,
        // so 0440 made it unreadable (token_file_unreadable, pod stuck Init:0/1 — found on a real node). Only
        // the sidecar mounts this volume, so "other" here means no one else; with a pod fsGroup the kubelet
        // uses 0600 + group fsGroup instead, which the sidecar also reads (fsGroup is in every container's groups).
        defaultMode: 0o444,
      },
    },
    { name: VOLUME_CA, configMap: { name: CA_CONFIGMAP, items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
    { name: VOLUME_SCRATCH, emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } },
    // Memory-backed: the bundle is written by the sidecar at start and never touches the node's disk.
    { name: VOLUME_TRUST, emptyDir: { medium: 'Memory', sizeLimit: '4Mi' } },
  ];
  // Marks the pod as gated for the NetworkPolicies that still open pre-gate pods' app ports (they select its absence).
  if (options.gates === false) Reflect.deleteProperty(labels, LABEL_INBOUND_GATED);
  else labels[LABEL_INBOUND_GATED] = 'true';
  pod.metadata.labels = labels;
  pod.metadata.annotations = {
    ...pod.metadata.annotations,
    [ANNOTATION_INJECTED]: JSON.stringify({ version: config.version, config: configHash(config, overrides.raw) }),
  };
  return { allowed: true, pod, warnings };
}

/**
 * The ways out of the fence or into the sidecar that a pod spec can ask for. Run on the pod stripped of any
 * earlier injection, so what remains is the user's part: at admission, and again by the token exchange on the
 * live pod (webhook/fence.ts).
 */
function refuseUnfenceable(pod: Pod): (InjectResult & { allowed: false }) | undefined {
  const spec = pod.spec;
  if (spec.hostNetwork) {
    return refuse(
      'HostNetwork',
      'agent pods cannot use hostNetwork: the sidecar and NetworkPolicies could not fence the node network',
    );
  }
  if (spec.shareProcessNamespace) {
    return refuse(
      'ShareProcessNamespace',
      'agent pods cannot share a process namespace: the app could read the sidecar’s identity token',
    );
  }
  if (spec.hostPID) {
    return refuse(
      'HostPID',
      'agent pods cannot use hostPID: the app could read the sidecar’s memory and identity token',
    );
  }
  if (spec.hostIPC) {
    return refuse('HostIPC', 'agent pods cannot use hostIPC: the app would share memory segments with the whole node');
  }
  const hostPath = (spec.volumes ?? []).find((v) => v.hostPath !== undefined);
  if (hostPath) {
    return refuse(
      'HostPathVolume',
      `volume ${hostPath.name} is a hostPath: through the node's file system the app could reach the sidecar's token; use another volume type`,
    );
  }
  const minted = (spec.volumes ?? []).find(projectsOperatorToken);
  if (minted) {
    return refuse(
      'OperatorAudienceToken',
      `volume ${minted.name} projects a service-account token for audience ${OPERATOR_AUDIENCE}, which only the sidecar may hold: with it the app could obtain the agent's identity itself and bypass the sidecar; use another audience`,
    );
  }
  if ((spec.ephemeralContainers ?? []).length > 0) {
    return refuse(
      'EphemeralContainer',
      'agent pods cannot have ephemeral containers: they could attach to the sidecar; debug a copy of the pod instead',
    );
  }
  const appContainers = [...(spec.initContainers ?? []), ...spec.containers];
  const clash = appContainers.find((c) => c.name === SIDECAR_NAME);
  if (clash) return refuse('ContainerNameConflict', `a container is already named ${SIDECAR_NAME}; rename it`);
  for (const c of appContainers) {
    const uid = c.securityContext?.runAsUser ?? spec.securityContext?.runAsUser;
    if (uid === SIDECAR_UID) {
      return refuse(
        'SidecarUIDInUse',
        `container ${c.name} runs as UID ${SIDECAR_UID}, which is reserved for the sidecar; use another UID`,
      );
    }
    const added = (c.securityContext?.capabilities?.add ?? []).map((cap) => cap.toUpperCase().replace(/^CAP_/, ''));
    const forbidden = added.find((cap) => cap in FORBIDDEN_CAPABILITIES);
    if (forbidden) {
      return refuse(
        'ForbiddenCapability',
        `container ${c.name} adds ${forbidden}, which ${FORBIDDEN_CAPABILITIES[forbidden] ?? ''}; remove the capability`,
      );
    }
    if (c.securityContext?.privileged) {
      return refuse('PrivilegedContainer', `container ${c.name} is privileged, which could bypass the sidecar`);
    }
    const port = (c.ports ?? []).find((p) => p.containerPort !== undefined && SIDECAR_PORTS.includes(p.containerPort));
    if (port) {
      return refuse(
        'PortConflict',
        `container ${c.name} uses port ${port.containerPort ?? ''}, which the sidecar listens on (reserved: ${PROXY_PORT}, ${GATE_PORT_FIRST}–${GATE_PORT_FIRST + GATE_PORT_COUNT - 1} for inbound gates, ${ADMIN_PORT}); use another port`,
      );
    }
    const mount = (c.volumeMounts ?? []).find((m) => INJECTED_VOLUMES.includes(m.name));
    if (mount) {
      return refuse(
        'ReservedVolume',
        `container ${c.name} mounts ${mount.name}, a volume reserved for the sidecar; rename the volume`,
      );
    }
  }
  return undefined;
}

/**
 * A projected service-account token for the operator's audience is bound to this pod like the sidecar's own, so
 * the token exchange cannot tell them apart: only the injected volume may carry one. (Compared without case or
 * surrounding space, though the API server matches audiences exactly: no near-miss spelling is worth allowing.)
 */
function projectsOperatorToken(volume: Record<string, unknown>): boolean {
  const sources = (volume.projected as { sources?: unknown } | undefined)?.sources;
  if (!Array.isArray(sources)) return false;
  return sources.some((source: unknown) => {
    const audience = (source as { serviceAccountToken?: { audience?: unknown } } | null)?.serviceAccountToken?.audience;
    return typeof audience === 'string' && audience.trim().toLowerCase() === OPERATOR_AUDIENCE;
  });
}

function sidecarContainer(
  config: InjectorConfig,
  resources: InjectorConfig['resources'],
  logLevel: string,
  gatePorts: ContainerPort[],
  gateArg: string,
  runtimeEnv: EnvVar[],
): Container {
  const probe = (path: string, extra: Record<string, number>): Record<string, unknown> => ({
    httpGet: { path, port: ADMIN_PORT },
    ...extra,
  });
  return {
    name: SIDECAR_NAME,
    image: config.image,
    // A native sidecar: starts before the app containers, keeps running, and does not hold Jobs open.
    restartPolicy: 'Always',
    args: [
      'sidecar',
      `--controller=${config.controllerUrl}`,
      `--token-file=${TOKEN_DIR}/token`,
      `--ca-file=${CA_DIR}/ca.crt`,
      `--listen=127.0.0.1:${PROXY_PORT}`,
      `--admin-listen=0.0.0.0:${ADMIN_PORT}`,
      `--max-staleness=${config.maxStaleness}`,
      `--log-level=${logLevel}`,
      `--trust-bundle-dir=${TRUST_DIR}`,
      ...(gateArg ? [gateArg] : []),
    ],
    env: [
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      ...runtimeEnv,
    ],
    ports: [...gatePorts, { name: 'agentfence-adm', containerPort: ADMIN_PORT, protocol: 'TCP' }],
    // App containers start only after this passes: identity obtained, entitlements loaded, trust bundle written.
    startupProbe: probe('/readyz', { periodSeconds: 1, failureThreshold: 120 }),
    readinessProbe: probe('/readyz', { periodSeconds: 5 }),
    livenessProbe: probe('/healthz', { periodSeconds: 10, failureThreshold: 3 }),
    resources: {
      requests: { cpu: resources.cpuRequest, memory: resources.memoryRequest },
      limits: { memory: resources.memoryLimit },
    },
    securityContext: {
      runAsUser: SIDECAR_UID,
      runAsGroup: SIDECAR_UID,
      runAsNonRoot: true,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    volumeMounts: [
      { name: VOLUME_TOKEN, mountPath: TOKEN_DIR, readOnly: true },
      { name: VOLUME_CA, mountPath: CA_DIR, readOnly: true },
      { name: VOLUME_SCRATCH, mountPath: '/tmp' },
      { name: VOLUME_TRUST, mountPath: TRUST_DIR },
    ],
  };
}

/**
 * The trust-store variables belong to the fence like the proxy variables: a file path cannot be merged at
 * admission, so a different value is replaced (the caller warns).
 */
function setTrustEnv(c: Container): string[] {
  const env = [...(c.env ?? [])];
  const replaced: string[] = [];
  for (const ours of TRUST_ENV) {
    const i = env.findIndex((e) => e.name === ours.name);
    if (i < 0) env.push({ ...ours });
    else if (env[i]?.value !== ours.value || env[i]?.valueFrom !== undefined) {
      replaced.push(ours.name);
      env[i] = { ...ours };
    }
  }
  c.env = env;
  return replaced;
}

/**
 * HTTP(S)_PROXY belong to the fence: a different value is replaced (the caller warns; the old value is not
 * recorded, it may hold proxy credentials). NO_PROXY keeps every entry the user listed and gains loopback.
 */
function setProxyEnv(c: Container): string[] {
  const env = [...(c.env ?? [])];
  const replaced: string[] = [];
  for (const name of PROXY_VARS) {
    const i = env.findIndex((e) => e.name === name);
    const ours: EnvVar = { name, value: PROXY_URL };
    if (i < 0) env.push(ours);
    else if (env[i]?.value !== PROXY_URL || env[i].valueFrom !== undefined) {
      replaced.push(name);
      env[i] = ours;
    }
  }
  // Tools disagree on which spelling they read (curl prefers no_proxy), so both get the same list: every entry
  // the user wrote in either, then loopback.
  const userEntries: string[] = [];
  for (const name of NO_PROXY_VARS) {
    const value = env.find((e) => e.name === name)?.value ?? '';
    for (const entry of value.split(',').map((s) => s.trim()))
      if (entry && !userEntries.includes(entry)) userEntries.push(entry);
  }
  const merged = [...userEntries, ...NO_PROXY_OURS.filter((o) => !userEntries.includes(o))].join(',');
  for (const name of NO_PROXY_VARS) {
    const i = env.findIndex((e) => e.name === name);
    if (i < 0) env.push({ name, value: merged });
    else env[i] = { name, value: merged };
  }
  c.env = env;
  return replaced;
}

/**
 * NO_PROXY the webhook cannot read: a valueFrom (ConfigMap, Secret, field) or, without a literal NO_PROXY, an
 * envFrom source. Admission makes no API calls (dry-run safe), so these cannot be merged; the fence's literal
 * NO_PROXY replaces them and the user is told, naming the container.
 */
function unreadableNoProxy(c: Container): string[] {
  const warnings: string[] = [];
  const env = c.env ?? [];
  for (const name of NO_PROXY_VARS) {
    const entry = env.find((e) => e.name === name);
    if (entry?.valueFrom !== undefined) {
      warnings.push(
        `container ${c.name}: ${name} is set through valueFrom, which cannot be read at admission; it is replaced by ${NO_PROXY_OURS.join(',')} (set it as a literal value to keep your entries)`,
      );
    }
  }
  const literal = env.some((e) => (NO_PROXY_VARS as readonly string[]).includes(e.name));
  if (!literal && (c.envFrom ?? []).length > 0) {
    warnings.push(
      `container ${c.name}: envFrom cannot be read at admission; a NO_PROXY or no_proxy there is overridden by ${NO_PROXY_OURS.join(',')} (set it as a literal env value to keep your entries)`,
    );
  }
  return warnings;
}

/** Removes a previous injection so that rendering again gives the same pod. */
function strip(pod: Pod): Pod {
  if (!pod.metadata.annotations?.[ANNOTATION_INJECTED]) return pod;
  restoreGates(pod);
  const spec = pod.spec;
  const init = (spec.initContainers ?? []).filter((c) => c.name !== SIDECAR_NAME);
  if (init.length > 0) spec.initContainers = init;
  else delete spec.initContainers;
  const ours = new Set(INJECTED_VOLUMES);
  const volumes = (spec.volumes ?? []).filter((v) => !ours.has(v.name));
  if (volumes.length > 0) spec.volumes = volumes;
  else delete spec.volumes;
  for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
    // Our read-only trust mount comes out (rendered again below); the user's mounts stay.
    if (c.volumeMounts) {
      const mounts = c.volumeMounts.filter(
        (m) => !(m.name === VOLUME_TRUST && m.mountPath === TRUST_DIR && m.readOnly),
      );
      if (mounts.length > 0) c.volumeMounts = mounts;
      else delete c.volumeMounts;
    }
    if (!c.env) continue;
    // Proxy variables stay where they are (rendering again sets the same value in the same place); only our
    // NO_PROXY entries come out, to be appended again.
    const env = c.env
      .map((e) => {
        if (!(NO_PROXY_VARS as readonly string[]).includes(e.name) || e.value === undefined) return e;
        const rest = e.value.split(',').filter((s) => s && !NO_PROXY_OURS.includes(s));
        return rest.length > 0 ? { ...e, value: rest.join(',') } : undefined;
      })
      .filter((e): e is EnvVar => e !== undefined);
    if (env.length > 0) c.env = env;
    else delete c.env;
  }
  pod.metadata.annotations = Object.fromEntries(
    Object.entries(pod.metadata.annotations).filter(([key]) => key !== ANNOTATION_INJECTED),
  );
  return pod;
}

interface Overrides {
  raw: Record<string, string>;
  values: { resources: Partial<InjectorConfig['resources']>; logLevel?: string };
}

function readOverrides(annotations: Record<string, string>): Overrides | { error: string } {
  const raw: Record<string, string> = {};
  const values: Overrides['values'] = { resources: {} };
  const quantity = (key: string, value: string): string | undefined =>
    QUANTITY.test(value)
      ? undefined
      : `annotation ${key}: '${value}' is not a resource quantity like 100m, 64Mi or 1Gi`;
  for (const [field, key] of Object.entries(OVERRIDES) as [keyof typeof OVERRIDES, string][]) {
    const value = annotations[key];
    if (value === undefined) continue;
    raw[key] = value;
    if (field === 'logLevel') {
      if (!LOG_LEVELS.has(value))
        return { error: `annotation ${key}: '${value}' must be one of debug, info, warn, error` };
      values.logLevel = value;
      continue;
    }
    const problem = quantity(key, value);
    if (problem) return { error: problem };
    values.resources[field] = value;
  }
  // Any other agentfence.io/sidecar-* annotation is a typo or an attempt to configure what may not be: refuse.
  for (const key of Object.keys(annotations)) {
    if (key.startsWith('agentfence.io/sidecar-') && !(Object.values(OVERRIDES) as string[]).includes(key)) {
      return {
        error: `annotation ${key} is not a supported override (supported: ${Object.values(OVERRIDES).join(', ')})`,
      };
    }
  }
  return { raw, values };
}

/** Whether a pod asks for injection (the webhook's objectSelector already filters; this guards direct calls). */
export function wantsInjection(pod: Pod): boolean {
  return pod.metadata.labels?.[LABEL_INJECT] === 'true';
}
