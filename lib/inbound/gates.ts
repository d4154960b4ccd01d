/**
 * The sidecar's inbound gates: one listener per app port, in front of it. The webhook assigns them (a named app
 * port's name moves onto its gate, so a Service whose targetPort names the port now lands on the gate), records
 * the mapping in the sidecar's `--inbound` argument (container specs are immutable, so the mapping cannot change
 * under a running pod), the sidecar listens on them, and the compiler reads them to open only gates at L3.
 */

/** The first gate port; gates are consecutive from here. */
export const GATE_PORT_FIRST = 15006;
/** At most this many app ports get a gate (15006–15017; 15020 is the admin port). */
export const GATE_PORT_COUNT = 12;
export const INBOUND_FLAG = '--inbound=';
/** The injected sidecar's container name (webhook/inject.ts re-exports it). */
export const SIDECAR_CONTAINER = 'agentfence-sidecar';

export interface Gate {
  /** The sidecar's listener. */
  gate: number;
  /** The app's port on 127.0.0.1 that the gate forwards to. */
  port: number;
}

export function isGatePort(port: number): boolean {
  return port >= GATE_PORT_FIRST && port < GATE_PORT_FIRST + GATE_PORT_COUNT;
}

/** `15006:8080,15007:9090` */
export function formatGates(gates: readonly Gate[]): string {
  return gates.map((g) => `${g.gate}:${g.port}`).join(',');
}

/** The gates of an `--inbound` value, or an error naming the bad entry. */
export function parseGates(value: string): Gate[] | { error: string } {
  if (value.trim() === '') return [];
  const gates: Gate[] = [];
  for (const entry of value.split(',')) {
    const m = /^(\d{1,5}):(\d{1,5})$/.exec(entry.trim());
    const gate = Number(m?.[1]);
    const port = Number(m?.[2]);
    if (!m || !isGatePort(gate) || port < 1 || port > 65535 || isGatePort(port)) {
      return {
        error: `--inbound entry '${entry}' must be GATE:PORT with GATE in ${GATE_PORT_FIRST}–${GATE_PORT_FIRST + GATE_PORT_COUNT - 1} and PORT an app port`,
      };
    }
    if (gates.some((g) => g.gate === gate || g.port === port))
      return { error: `--inbound entry '${entry}' repeats a gate or port` };
    gates.push({ gate, port });
  }
  return gates;
}

type PodSpecView = { initContainers?: { name: string; args?: unknown }[] } | undefined;

/** The `--inbound=` argument of a pod's sidecar, if it has a sidecar carrying one. */
function inboundArg(spec: PodSpecView): string | undefined {
  const sidecar = spec?.initContainers?.find((c) => c.name === SIDECAR_CONTAINER);
  const args = Array.isArray(sidecar?.args) ? (sidecar.args as unknown[]) : [];
  return args.find((a): a is string => typeof a === 'string' && a.startsWith(INBOUND_FLAG));
}

/**
 * A pod not injected with inbound gates: its sidecar (if any) has no `--inbound` argument — injected before gates
 * existed. The webhook now always renders the argument, empty when the pod declares no TCP port, so "no gates"
 * never means "pre-gate": a pod without ports is gated and has nothing to open. Such pods never carry
 * LABEL_INBOUND_GATED, so the NetworkPolicies that still open their app ports cannot select a gated pod.
 */
export function injectedBeforeGates(spec: PodSpecView): boolean {
  return inboundArg(spec) === undefined;
}

/** The gates recorded in a pod's sidecar container (none when the pod has no sidecar or no gates). */
export function gatesOfPod(spec: PodSpecView): Gate[] {
  const arg = inboundArg(spec);
  if (arg === undefined) return [];
  const parsed = parseGates(arg.slice(INBOUND_FLAG.length));
  return Array.isArray(parsed) ? parsed : [];
}
