/**
 * Is this live pod fenced — does its current spec carry the sidecar exactly as we inject it? The token exchange
 * asks before it issues an identity, so a pod that gained the inject label or the injection annotation after
 * creation, had its sidecar swapped, or was created around the webhook gets no identity.
 *
 * There is one definition of "as injected": the webhook's own pure render. The pod is rendered again with this
 * controller's injector configuration (which strips the earlier injection first, exactly as a reinvocation
 * does) and the result must equal the live pod. The annotation's config hash is recomputed, never trusted.
 * Only fields the API server fills in by default are normalized, and the two fields a live pod may legitimately
 * change without touching the fence are ignored: `imagePullPolicy` and `resources` (in-place resize).
 */
import { ANNOTATION_INJECTED } from '../lib/api/constants.ts';
import { deepEqual } from '../lib/kube/json.ts';
import { isPodShape } from './admission.ts';
import {
  INJECTED_VOLUMES,
  SIDECAR_NAME,
  SIDECAR_RUNTIME_ENV,
  inject,
  type Container,
  type InjectorConfig,
  type Pod,
} from './inject.ts';
import { podPatch } from './patch.ts';
import { injectedBeforeGates } from '../lib/inbound/gates.ts';

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Fields of a container the API server defaults when they are absent. */
const PROBE_DEFAULTS = { timeoutSeconds: 1, periodSeconds: 10, successThreshold: 1, failureThreshold: 3 };

function normalizeContainer(container: Container): Json {
  const c: Json = structuredClone(container);
  delete c.imagePullPolicy;
  delete c.resources;
  if (c.terminationMessagePath === '/dev/termination-log') delete c.terminationMessagePath;
  if (c.terminationMessagePolicy === 'File') delete c.terminationMessagePolicy;
  for (const key of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    const probe = c[key];
    if (!isObject(probe)) continue;
    c[key] = { ...PROBE_DEFAULTS, ...probe };
    const httpGet = (c[key] as Json).httpGet;
    if (isObject(httpGet)) (c[key] as Json).httpGet = { scheme: 'HTTP', ...httpGet };
  }
  if (Array.isArray(c.ports)) c.ports = c.ports.map((p: unknown) => (isObject(p) ? { protocol: 'TCP', ...p } : p));
  if (Array.isArray(c.env)) {
    c.env = c.env.map((e: unknown) => {
      if (!isObject(e) || !isObject(e.valueFrom) || !isObject(e.valueFrom.fieldRef)) return e;
      return { ...e, valueFrom: { ...e.valueFrom, fieldRef: { apiVersion: 'v1', ...e.valueFrom.fieldRef } } };
    });
  }
  return c;
}

function normalizeVolume(volume: Json): Json {
  const v = structuredClone(volume);
  for (const source of ['configMap', 'secret', 'projected']) {
    const s = v[source];
    if (isObject(s) && s.defaultMode === undefined) v[source] = { ...s, defaultMode: 0o644 };
  }
  return v;
}

/** Undefined when the pod is fenced; otherwise what is wrong, in words (no values from the pod). */
export function fenceProblem(live: unknown, config: InjectorConfig): string | undefined {
  if (!isPodShape(live)) return 'the pod has no readable spec';
  const annotation = live.metadata.annotations?.[ANNOTATION_INJECTED];
  if (annotation === undefined) return 'the pod carries no injection annotation';
  // A pod injected before inbound gates existed has a sidecar without `--inbound`: it is judged as that version
  // rendered it (its app ports stay open at L3, as they were), so upgrading the controller does not take the
  // identity of running pods away. The webhook itself always injects gates now, so no new pod can take this path.
  const legacy = injectedBeforeGates(live.spec);
  // Likewise a sidecar injected before it had runtime settings (none of NODE_OPTIONS, GLIBC_TUNABLES) is judged
  // without them: they bound its memory, not the fence. Any present must be exactly the rendered ones (a preload
  // in NODE_OPTIONS would run code in the sidecar).
  const liveEnv = (live.spec.initContainers ?? []).find((c) => c.name === SIDECAR_NAME)?.env ?? [];
  const runtimeEnv = liveEnv.some((e) => SIDECAR_RUNTIME_ENV.includes(e.name));
  const rendered = inject(live, config, {
    ...(legacy ? { gates: false } : {}),
    ...(runtimeEnv ? {} : { runtimeEnv: false }),
  });
  if (!rendered.allowed) return `the pod could not be injected as it is now: ${rendered.message}`;
  const expected = rendered.pod;
  if (expected.metadata.annotations?.[ANNOTATION_INJECTED] !== annotation) {
    return `the injection annotation does not match this controller's injection configuration (the pod was injected with another configuration, or the annotation was written by hand)`;
  }
  const liveSidecars = (live.spec.initContainers ?? []).filter((c) => c.name === SIDECAR_NAME);
  if (liveSidecars.length !== 1 || live.spec.initContainers?.[0]?.name !== SIDECAR_NAME) {
    return `the pod does not carry exactly one ${SIDECAR_NAME}, first among its init containers`;
  }
  const expectedSidecar = expected.spec.initContainers?.[0];
  const liveSidecar = liveSidecars[0];
  if (!expectedSidecar || !liveSidecar) return `the pod has no ${SIDECAR_NAME}`;
  const want = normalizeContainer(expectedSidecar);
  const have = normalizeContainer(liveSidecar);
  const differs = [...new Set([...Object.keys(want), ...Object.keys(have)])]
    .filter((k) => !deepEqual(want[k], have[k]))
    .sort();
  if (differs.length > 0)
    return `the ${SIDECAR_NAME} container differs from the injected one in: ${differs.join(', ')}`;

  // Our volumes, compared with the server's defaults applied; then the rest of the pod must be what the render
  // gives (proxy environment in every container, volumes in place, labels), with the checked parts taken as equal.
  const view: Pod = structuredClone(live);
  view.spec.initContainers = [expectedSidecar, ...(view.spec.initContainers ?? []).slice(1)];
  const expectedVolumes = new Map((expected.spec.volumes ?? []).map((v) => [v.name, v]));
  const badVolumes: string[] = [];
  view.spec.volumes = (view.spec.volumes ?? []).map((v) => {
    if (!INJECTED_VOLUMES.includes(v.name)) return v;
    const want = expectedVolumes.get(v.name);
    if (want && deepEqual(normalizeVolume(want), normalizeVolume(v))) return want;
    badVolumes.push(v.name);
    return v;
  });
  if (badVolumes.length > 0) return `volume ${badVolumes.join(', ')} differs from the injected one`;
  const rest = podPatch(view, expected).map((op) => op.path.slice(1).replaceAll('/', '.'));
  if (rest.length > 0) return `the pod differs from its injection in: ${rest.join(', ')}`;
  return undefined;
}

/**
 * fenceProblem with a memo per pod revision (uid + resourceVersion): a pod's spec changes only with its
 * resourceVersion, and its sidecar asks for tokens again and again. Bounded; objects without both fields are
 * checked every time. `accepted` are earlier injector configurations whose pods still count as fenced (during a
 * rollout of a new sidecar image); the problem reported is the one against the current configuration.
 */
export function fenceChecker(
  config: InjectorConfig,
  accepted: readonly InjectorConfig[] = [],
  maxEntries = 20_000,
): (pod: unknown) => string | undefined {
  const check = (pod: unknown): string | undefined => {
    const problem = fenceProblem(pod, config);
    return problem === undefined || accepted.some((c) => fenceProblem(pod, c) === undefined) ? undefined : problem;
  };
  const verdicts = new Map<string, string | undefined>();
  return (pod) => {
    const meta = isObject(pod) && isObject(pod.metadata) ? pod.metadata : undefined;
    const key =
      typeof meta?.uid === 'string' && typeof meta.resourceVersion === 'string'
        ? `${meta.uid}/${meta.resourceVersion}`
        : undefined;
    if (key !== undefined && verdicts.has(key)) return verdicts.get(key);
    const verdict = check(pod);
    if (key !== undefined) {
      if (verdicts.size >= maxEntries) verdicts.delete(verdicts.keys().next().value ?? '');
      verdicts.set(key, verdict);
    }
    return verdict;
  };
}
