/**
 * Inbound gates at injection, without NET_ADMIN (pods run under restricted Pod Security, so no iptables
 * redirect): every TCP port an app container declares gets a sidecar listener (a gate) in front of it, and a
 * *named* port's name moves from the app container onto its gate. A Service whose targetPort is that name now
 * resolves to the gate with no edit; a Service that targets the number still reaches the app's port, which the
 * NetworkPolicies no longer open (the reconciler says so in a status condition naming the Service).
 *
 * Probes of the app container that named a moved port are rewritten to its number (the kubelet resolves a
 * probe's named port within the probe's own container, where the name no longer is). Both steps are undone by
 * `restoreGates` before re-rendering, so injection stays idempotent.
 */
import type { Container, ContainerPort, Pod } from '../lib/kube/pod.ts';
import {
  GATE_PORT_COUNT,
  GATE_PORT_FIRST,
  INBOUND_FLAG,
  SIDECAR_CONTAINER,
  formatGates,
  gatesOfPod,
  type Gate,
} from '../lib/inbound/gates.ts';

export interface GatePlan {
  gates: Gate[];
  /** The sidecar's ports: one per gate, carrying the moved name when the app port had one. */
  ports: ContainerPort[];
  /**
   * The sidecar argument recording the mapping: always present, `--inbound=` when there are no gates, so a pod
   * without ports is told apart from one injected before gates existed (lib/inbound/gates.ts).
   */
  arg: string;
  warnings: string[];
}

const isTcp = (p: ContainerPort): boolean => (p.protocol ?? 'TCP') === 'TCP';

/** Assigns gates to the app containers' TCP ports (mutating the pod: names moved, probes rewritten). */
export function assignGates(pod: Pod): GatePlan {
  const gates: Gate[] = [];
  const ports: ContainerPort[] = [];
  const warnings: string[] = [];
  for (const c of pod.spec.containers) {
    const moved = new Map<string, number>();
    for (const p of c.ports ?? []) {
      if (!isTcp(p) || p.containerPort === undefined) continue;
      if (gates.some((g) => g.port === p.containerPort)) continue;
      if (gates.length >= GATE_PORT_COUNT) {
        warnings.push(
          `container ${c.name}: port ${p.containerPort} gets no inbound gate (at most ${GATE_PORT_COUNT} app ports are gated); callers cannot reach it`,
        );
        continue;
      }
      const gate = GATE_PORT_FIRST + gates.length;
      gates.push({ gate, port: p.containerPort });
      ports.push({ ...(p.name ? { name: p.name } : {}), containerPort: gate, protocol: 'TCP' });
      if (p.name) {
        moved.set(p.name, p.containerPort);
        delete p.name;
      }
    }
    if (moved.size > 0) rewriteProbes(c, moved);
  }
  return { gates, ports, arg: `${INBOUND_FLAG}${formatGates(gates)}`, warnings };
}

function rewriteProbes(c: Container, moved: Map<string, number>): void {
  for (const key of ['livenessProbe', 'readinessProbe', 'startupProbe'] as const) {
    const probe = c[key] as Record<string, { port?: unknown } | undefined> | undefined;
    if (!probe) continue;
    for (const handler of ['httpGet', 'tcpSocket', 'grpc'] as const) {
      const action = probe[handler];
      if (action && typeof action.port === 'string' && moved.has(action.port)) action.port = moved.get(action.port);
    }
  }
}

/** Undoes assignGates on a pod rendered before: gate names go back to the app ports they came from. */
export function restoreGates(pod: Pod): void {
  const sidecar = pod.spec.initContainers?.find((c) => c.name === SIDECAR_CONTAINER);
  if (!sidecar) return;
  for (const { gate, port } of gatesOfPod(pod.spec)) {
    const name = sidecar.ports?.find((p) => p.containerPort === gate)?.name;
    if (!name) continue;
    for (const c of pod.spec.containers) {
      const appPort = (c.ports ?? []).find((p) => p.containerPort === port && isTcp(p) && p.name === undefined);
      if (appPort) {
        appPort.name = name;
        break;
      }
    }
  }
}
