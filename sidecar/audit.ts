/**
 * The audit stream: one JSON line per decision on stdout. Writes never block the data path: records are batched
 * per event-loop turn and serialized with the batch, after the responses of that turn are on their way (not on
 * each request's path); when stdout cannot keep up (backpressure beyond a bound) lines are dropped and counted
 * rather than buffered without limit. flush() writes what is pending at once (shutdown). Records carry no
 * credentials: callers pass only the fields below.
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
  let pending: AuditRecord[] = [];
  let scheduled = false;
  let blocked = false;
  let dropped = 0;
  const flush = (): void => {
    scheduled = false;
    if (pending.length === 0) return;
    let chunk = '';
    for (const record of pending) chunk += `${JSON.stringify(record)}\n`;
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
      // Callers hand over a fresh object per line and never touch it again: it is serialized at flush.
      pending.push(record);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
    dropped: () => dropped,
    flush,
  };
}
