/**
 * Metrics live in a private prom-client Registry per process (never the global default registry), so tests and
 * embedders can create as many as they like. Several modules register the same metric family on one registry
 * (every work queue exports `workqueue_depth{name}`), hence the get-or-create helpers.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface RegistryOptions {
  /** Process metrics (CPU, memory, event-loop lag); on by default, off in most tests. */
  defaultMetrics?: boolean;
}

export function createRegistry(options: RegistryOptions = {}): Registry {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  return registry;
}

interface MetricSpec<L extends string> {
  name: string;
  help: string;
  labelNames: readonly L[];
}

export function counter<L extends string>(registry: Registry, spec: MetricSpec<L>): Counter<L> {
  const existing = registry.getSingleMetric(spec.name);
  if (existing instanceof Counter) return existing;
  return new Counter({ ...spec, registers: [registry] });
}

export function gauge<L extends string>(registry: Registry, spec: MetricSpec<L>): Gauge<L> {
  const existing = registry.getSingleMetric(spec.name);
  if (existing instanceof Gauge) return existing;
  return new Gauge({ ...spec, registers: [registry] });
}

export function histogram<L extends string>(
  registry: Registry,
  spec: MetricSpec<L> & { buckets?: number[] },
): Histogram<L> {
  const existing = registry.getSingleMetric(spec.name);
  if (existing instanceof Histogram) return existing;
  return new Histogram({ ...spec, registers: [registry] });
}

/** Buckets from 1 ms to ~1 min, wide enough for both queue waits and reconcile durations. */
export const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
