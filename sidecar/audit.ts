/**
 * The audit stream: one JSON line per decision on stdout. Writes never block the data path: lines are batched
 * per event-loop turn, and when stdout cannot keep up (backpressure beyond a bound) lines are dropped and
 * counted rather than buffered without limit. Records carry no credentials: callers pass only the fields below.
 */
export interface AuditRecord {
  time: string;
  requestId: string;
  /** Absent: egress. `inbound`: a call into this agent, judged at its gate. */
  direction?: 'inbound';
  agent: string;
  /** Inbound: the verified caller (SPIFFE ID, or the user's sub) — absent when none was verified. */
  caller?: string;
  /** Inbound, users: the issuer of the caller's token. */
  callerIssuer?: string;
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
    const full = !out.write(chunk);
    // One drain listener at a time: flushing again while blocked must not stack listeners (one per turn).
    if (full && !blocked) {
      blocked = true;
      out.once('drain', () => (blocked = false));
    }
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
