/**
 * Prometheus metrics for the sidecar without prom-client. The sidecar runs once per agent pod, so what it loads is
 * paid once per agent: prom-client (with its OpenTelemetry, tdigest and perf_hooks dependencies) costs ~17 MB of
 * resident memory; this module is a few kB. It implements only what the sidecar uses — counters, gauges (with an
 * optional collect hook) and histograms with fixed buckets — and writes the text exposition format 0.0.4 exactly
 * as prom-client does for the same observations (test/unit/prom-text.test.ts compares the two). The controller
 * keeps prom-client (lib/metrics.ts).
 */
import type { PerformanceEntry, PerformanceObserver as PerformanceObserverType } from 'node:perf_hooks';

/** What a /metrics endpoint needs of a registry (this one or prom-client's). */
export interface Exposition {
  readonly contentType: string;
  metrics(): Promise<string>;
}

type Labels<L extends string> = Partial<Record<L, string | number>>;

interface Family {
  readonly name: string;
  render(): string;
}

export class Registry implements Exposition {
  readonly contentType = 'text/plain; version=0.0.4; charset=utf-8';
  readonly #families = new Map<string, Family>();

  register(family: Family): void {
    if (this.#families.has(family.name)) throw new Error(`a metric named ${family.name} is already registered`);
    this.#families.set(family.name, family);
  }

  getSingleMetric(name: string): Family | undefined {
    return this.#families.get(name);
  }

  metrics(): Promise<string> {
    const parts: string[] = [];
    for (const family of this.#families.values()) parts.push(family.render());
    return Promise.resolve(parts.join('\n'));
  }
}

export interface MetricSpec<L extends string> {
  name: string;
  help: string;
  labelNames: readonly L[];
}

const escapeHelp = (s: string): string => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const escapeLabel = (s: string): string => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
const formatValue = (v: number): string =>
  v === Infinity ? '+Inf' : v === -Infinity ? '-Inf' : Number.isNaN(v) ? 'NaN' : String(v);

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** One labelled series: its label set in `{a="b",c="d"}` form ('' when unlabelled) and its value(s). */
abstract class Metric<L extends string, S> implements Family {
  readonly name: string;
  readonly #help: string;
  readonly #type: string;
  protected readonly labelNames: readonly L[];
  protected readonly series = new Map<string, S>();

  constructor(registry: Registry, spec: MetricSpec<L>, type: string) {
    if (!NAME.test(spec.name)) throw new Error(`invalid metric name ${spec.name}`);
    for (const l of spec.labelNames) {
      if (!LABEL.test(l) || l.startsWith('__') || l === 'le')
        throw new Error(`invalid label name ${l} on ${spec.name}`);
    }
    this.name = spec.name;
    this.#help = spec.help;
    this.#type = type;
    this.labelNames = spec.labelNames;
    registry.register(this);
  }

  /** The label set's text; every label must be one of the metric's, as prom-client requires. */
  protected key(labels: Labels<L> | undefined): string {
    if (!labels) return '';
    let text = '';
    for (const [name, value] of Object.entries(labels) as [L, string | number | undefined][]) {
      if (value === undefined) continue;
      if (!this.labelNames.includes(name)) throw new Error(`label ${name} is not a label of ${this.name}`);
      text += `${text ? ',' : ''}${name}="${escapeLabel(String(value))}"`;
    }
    return text;
  }

  protected abstract lines(): string[];

  /** Called before rendering (gauges with a collect hook). */
  protected collect(): void {}

  render(): string {
    this.collect();
    const head = `# HELP ${this.name} ${escapeHelp(this.#help)}\n# TYPE ${this.name} ${this.#type}\n`;
    const body = this.lines();
    return head + (body.length > 0 ? `${body.join('\n')}\n` : '');
  }
}

const withBraces = (key: string): string => (key ? `{${key}}` : '');

export class Counter<L extends string = string> extends Metric<L, { value: number }> {
  constructor(registry: Registry, spec: MetricSpec<L>) {
    super(registry, spec, 'counter');
    // An unlabelled counter is exported at 0 from the start (as prom-client does).
    if (spec.labelNames.length === 0) this.series.set('', { value: 0 });
  }

  inc(labelsOrValue?: Labels<L> | number, value?: number): void {
    if (typeof labelsOrValue === 'number' || labelsOrValue === undefined) this.#add('', labelsOrValue ?? 1);
    else this.#add(this.key(labelsOrValue), value ?? 1);
  }

  /** The series for one label set, resolved once (the hot path keeps it). */
  labels(labels: Labels<L>): { inc(value?: number): void } {
    const key = this.key(labels);
    return { inc: (value = 1) => this.#add(key, value) };
  }

  #add(key: string, value: number): void {
    if (!(value >= 0)) throw new Error(`a counter only goes up (${this.name} by ${value})`);
    const s = this.series.get(key);
    if (s) s.value += value;
    else this.series.set(key, { value });
  }

  protected lines(): string[] {
    return [...this.series].map(([key, s]) => `${this.name}${withBraces(key)} ${formatValue(s.value)}`);
  }
}

export class Gauge<L extends string = string> extends Metric<L, { value: number }> {
  readonly #collect: ((this: Gauge<L>) => void) | undefined;

  constructor(
    registry: Registry,
    spec: MetricSpec<L> & { collect?: (this: Gauge<L>) => void },
    /** 'counter' for a value read at scrape time from a monotonic source (CPU time), as prom-client types it. */
    type: 'gauge' | 'counter' = 'gauge',
  ) {
    super(registry, spec, type);
    this.#collect = spec.collect;
    if (spec.labelNames.length === 0) this.series.set('', { value: 0 });
  }

  set(labelsOrValue: Labels<L> | number, value?: number): void {
    if (typeof labelsOrValue === 'number') this.#put('', labelsOrValue);
    else this.#put(this.key(labelsOrValue), value ?? 0);
  }

  inc(value = 1): void {
    this.#put('', (this.series.get('')?.value ?? 0) + value);
  }

  dec(value = 1): void {
    this.inc(-value);
  }

  reset(): void {
    this.series.clear();
  }

  #put(key: string, value: number): void {
    const s = this.series.get(key);
    if (s) s.value = value;
    else this.series.set(key, { value });
  }

  protected override collect(): void {
    this.#collect?.call(this);
  }

  protected lines(): string[] {
    return [...this.series].map(([key, s]) => `${this.name}${withBraces(key)} ${formatValue(s.value)}`);
  }
}

export class Histogram<L extends string = string> extends Metric<
  L,
  { counts: Float64Array; sum: number; count: number }
> {
  readonly #buckets: readonly number[];

  constructor(registry: Registry, spec: MetricSpec<L> & { buckets: readonly number[] }) {
    super(registry, spec, 'histogram');
    const sorted = [...spec.buckets].sort((a, b) => a - b);
    if (sorted.length === 0 || sorted.some((b, i) => !Number.isFinite(b) || (i > 0 && b === sorted[i - 1]))) {
      throw new Error(`${spec.name} needs distinct finite buckets`);
    }
    this.#buckets = sorted;
  }

  observe(labelsOrValue: Labels<L> | number, value?: number): void {
    if (typeof labelsOrValue === 'number') this.#observe(this.#series(''), labelsOrValue);
    else this.#observe(this.#series(this.key(labelsOrValue)), value ?? 0);
  }

  /** The series for one label set, resolved once; like prom-client, it is exported from its first observation. */
  labels(labels: Labels<L>): { observe(value: number): void } {
    const key = this.key(labels);
    return { observe: (value) => this.#observe(this.#series(key), value) };
  }

  #series(key: string): { counts: Float64Array; sum: number; count: number } {
    let s = this.series.get(key);
    if (!s) {
      s = { counts: new Float64Array(this.#buckets.length), sum: 0, count: 0 };
      this.series.set(key, s);
    }
    return s;
  }

  #observe(s: { counts: Float64Array; sum: number; count: number }, value: number): void {
    s.sum += value;
    s.count++;
    // Only the first bucket the value fits is counted; rendering accumulates.
    const b = this.#buckets;
    for (let i = 0; i < b.length; i++) {
      if (value <= (b[i] as number)) {
        s.counts[i] = (s.counts[i] ?? 0) + 1;
        return;
      }
    }
  }

  protected lines(): string[] {
    const out: string[] = [];
    for (const [key, s] of this.series) {
      const rest = key ? `,${key}` : '';
      let cumulative = 0;
      for (let i = 0; i < this.#buckets.length; i++) {
        cumulative += s.counts[i] as number;
        out.push(`${this.name}_bucket{le="${formatValue(this.#buckets[i] as number)}"${rest}} ${cumulative}`);
      }
      out.push(`${this.name}_bucket{le="+Inf"${rest}} ${s.count}`);
      out.push(`${this.name}_sum${withBraces(key)} ${formatValue(s.sum)}`);
      out.push(`${this.name}_count${withBraces(key)} ${s.count}`);
    }
    return out;
  }
}

export function createRegistry(options: { defaultMetrics?: boolean } = {}): Registry {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) processMetrics(registry);
  return registry;
}

export function counter<L extends string>(registry: Registry, spec: MetricSpec<L>): Counter<L> {
  const existing = registry.getSingleMetric(spec.name);
  return existing instanceof Counter ? (existing as Counter<L>) : new Counter(registry, spec);
}

export function gauge<L extends string>(
  registry: Registry,
  spec: MetricSpec<L> & { collect?: (this: Gauge<L>) => void },
): Gauge<L> {
  const existing = registry.getSingleMetric(spec.name);
  return existing instanceof Gauge ? (existing as Gauge<L>) : new Gauge(registry, spec);
}

export function histogram<L extends string>(
  registry: Registry,
  spec: MetricSpec<L> & { buckets: readonly number[] },
): Histogram<L> {
  const existing = registry.getSingleMetric(spec.name);
  return existing instanceof Histogram ? (existing as Histogram<L>) : new Histogram(registry, spec);
}

/** GC pause buckets: fine below a millisecond, where a proxy's added latency budget lives. */
const GC_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1];
const GC_KINDS: Record<number, string> = { 1: 'minor', 2: 'major', 4: 'incremental', 8: 'weakcb' };

/**
 * The process metrics of prom-client's default set that matter for a sidecar (same names, types and labels):
 * CPU, resident memory, heap, start time, and GC pauses by kind.
 */
function processMetrics(registry: Registry): void {
  const start = Math.round(Date.now() / 1000 - process.uptime());
  const cpuTotal = (name: string, help: string, pick: (u: NodeJS.CpuUsage) => number): void => {
    const collect = function (this: Gauge<never>): void {
      this.set(pick(process.cpuUsage()) / 1e6);
    };
    new Gauge(registry, { name, help, labelNames: [], collect }, 'counter');
  };
  cpuTotal('process_cpu_user_seconds_total', 'Total user CPU time spent in seconds.', (u) => u.user);
  cpuTotal('process_cpu_system_seconds_total', 'Total system CPU time spent in seconds.', (u) => u.system);
  cpuTotal('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds.', (u) => u.user + u.system);
  new Gauge(registry, {
    name: 'process_start_time_seconds',
    help: 'Start time of the process since unix epoch in seconds.',
    labelNames: [],
    collect() {
      this.set(start);
    },
  });
  new Gauge(registry, {
    name: 'process_resident_memory_bytes',
    help: 'Resident memory size in bytes.',
    labelNames: [],
    collect() {
      this.set(process.memoryUsage.rss());
    },
  });
  const heap = (name: string, help: string, pick: (m: NodeJS.MemoryUsage) => number): void => {
    new Gauge(registry, {
      name,
      help,
      labelNames: [],
      collect() {
        this.set(pick(process.memoryUsage()));
      },
    });
  };
  heap('nodejs_heap_size_total_bytes', 'Process heap size from Node.js in bytes.', (m) => m.heapTotal);
  heap('nodejs_heap_size_used_bytes', 'Process heap size used from Node.js in bytes.', (m) => m.heapUsed);
  heap('nodejs_external_memory_bytes', 'Node.js external memory size in bytes.', (m) => m.external);
  const gc = new Histogram(registry, {
    name: 'nodejs_gc_duration_seconds',
    help: 'Garbage collection duration by kind, one of major, minor, incremental or weakcb.',
    labelNames: ['kind'],
    buckets: GC_BUCKETS,
  });
  const bound = new Map<string, { observe(v: number): void }>();
  // perf_hooks through getBuiltinModule: loaded here, at the first registry with process metrics, not by importers.
  const { PerformanceObserver } = process.getBuiltinModule('node:perf_hooks');
  const observer: PerformanceObserverType = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const detail = (entry as PerformanceEntry & { detail?: { kind?: number } }).detail;
      const kind = GC_KINDS[detail?.kind ?? 0] ?? 'unknown';
      let series = bound.get(kind);
      if (!series) bound.set(kind, (series = gc.labels({ kind })));
      series.observe(entry.duration / 1000);
    }
  });
  observer.observe({ entryTypes: ['gc'] });
}
