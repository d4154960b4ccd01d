/**
 * The audit stream: one JSON line per decision on stdout. Writes never block the data path: lines are batched
 * per event-loop turn, and when stdout cannot keep up (backpressure beyond a bound) lines are dropped and
 * counted rather than buffered without limit. Records carry no credentials: callers pass only the fields below.
 */
export interface AuditRecord {
  time: string;
  requestId: string;
  agent: string;
  pod: string;
  namespace: string;
  method: string;
  host: string;
  port: number;
  /** Path without query. */
  path: string;
  decision: 'allow' | 'deny' | 'would_deny';
  reason: string;
  policy: string;
  rule: string;
  revision: string;
  mode: string;
  status: number;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  /** CONNECT traffic: decrypted and judged per request ("inspected"), or a blind byte tunnel ("passthrough"). */
  tls?: 'inspected' | 'passthrough';
  /** The brokered credential set on the request, by name (`secret/key`); never its value. */
  credential?: string;
}

export interface AuditSink {
  write(record: AuditRecord): void;
  dropped(): number;
  flush(): void;
}

export function createAuditSink(out: NodeJS.WritableStream = process.stdout, maxPendingLines = 10_000): AuditSink {
  let pending: string[] = [];
  let scheduled = false;
  let blocked = false;
  let dropped = 0;
  const flush = (): void => {
    scheduled = false;
    if (pending.length === 0) return;
    const chunk = pending.join('');
    pending = [];
    blocked = !out.write(chunk);
    if (blocked) out.once('drain', () => (blocked = false));
  };
  return {
    write(record) {
      if (blocked && pending.length >= maxPendingLines) {
        dropped++;
        return;
      }
      pending.push(`${JSON.stringify(record)}\n`);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    dropped: () => dropped,
    flush,
  };
}
