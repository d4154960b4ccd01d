/**
 * Where the sidecar's entitlements come from:
 *  - static mode: a file holding one AgentEntitlement (YAML or JSON, exactly as `agentfence render` or
 *    `kubectl get ae -o yaml` prints it), validated against the CRD schema, re-read when it changes; a bad new
 *    file keeps the previous snapshot and says why;
 *  - controller mode: the controller's Server-Sent Events stream of full snapshots for this pod, authenticated
 *    by the agent identity token, with an acknowledgement of every applied revision.
 */
import { readFile } from 'node:fs/promises';
import { watch, watchFile, unwatchFile, type FSWatcher } from 'node:fs';
import { API_VERSION, AGENT_ENTITLEMENT } from '../lib/api/constants.ts';
import { agentEntitlementSpec } from '../lib/api/schema.ts';
import type { AgentEntitlement } from '../lib/api/types.generated.ts';
import { validateSchema } from '../lib/api/validate.ts';
import type { Logger } from '../lib/log.ts';
import type { ClientRequest } from 'node:http';
import { parseDeliveredCredentials, type DeliveredCredential } from './credentials.ts';

/** Parses and validates one AgentEntitlement; errors name the source and the field. */
export async function parseEntitlement(text: string, source: string): Promise<AgentEntitlement> {
  let doc: unknown;
  try {
    // JSON needs no YAML parser; the yaml module (~12 MB resident) is loaded only for YAML files.
    doc = /^\s*[{[]/.test(text) ? JSON.parse(text) : (await import('yaml')).parse(text);
  } catch (err) {
    throw new Error(`${source}: not valid YAML or JSON: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  }
  return checkEntitlement(doc, source);
}

export function checkEntitlement(doc: unknown, source: string): AgentEntitlement {
  if (typeof doc !== 'object' || doc === null) throw new Error(`${source}: expected an AgentEntitlement object`);
  const { apiVersion, kind, spec, metadata } = doc as Record<string, unknown>;
  if (apiVersion !== API_VERSION || kind !== AGENT_ENTITLEMENT.kind) {
    throw new Error(
      `${source}: expected apiVersion ${API_VERSION} and kind ${AGENT_ENTITLEMENT.kind}, got ${String(apiVersion)} ${String(kind)}`,
    );
  }
  const errors = validateSchema(agentEntitlementSpec, spec, 'spec');
  if (errors.length > 0) throw new Error(`${source}: ${errors.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
  return {
    apiVersion: API_VERSION,
    kind: 'AgentEntitlement',
    metadata: metadata ?? {},
    spec: spec as AgentEntitlement['spec'],
  };
}

/**
 * node:https (and with it tls) only in controller mode: a static-mode sidecar never pays its ~7 MB resident.
 */
const https = (): typeof import('node:https') => process.getBuiltinModule('node:https');

export interface EntitlementSource {
  start(): Promise<void>;
  stop(): void;
}

export function staticEntitlements(options: {
  file: string;
  logger: Logger;
  onSnapshot: (entitlement: AgentEntitlement) => void;
  onReloadFailure: (error: string) => void;
}): EntitlementSource {
  let lastText: string | undefined;
  let watcher: FSWatcher | undefined;
  const load = async (initial: boolean): Promise<void> => {
    let text: string;
    try {
      text = await readFile(options.file, 'utf8');
    } catch (err) {
      const message = `cannot read ${options.file}: ${err instanceof Error ? err.message : String(err)}`;
      if (initial) throw new Error(message, { cause: err });
      options.onReloadFailure(message);
      return;
    }
    if (text === lastText) return;
    try {
      const entitlement = await parseEntitlement(text, options.file);
      lastText = text;
      options.onSnapshot(entitlement);
      options.logger.info('entitlements loaded', {
        file: options.file,
        revision: entitlement.spec.revision,
        rules: entitlement.spec.egress?.length ?? 0,
      });
    } catch (err) {
      if (initial) throw err;
      options.onReloadFailure(err instanceof Error ? err.message : String(err));
      options.logger.error('entitlement file rejected; keeping the previous snapshot', { file: options.file, err });
    }
  };
  const reload = (): void => void load(false);
  return {
    async start() {
      await load(true);
      // fs.watch is immediate where it works; polling covers editors that replace files and network filesystems.
      try {
        watcher = watch(options.file, reload);
      } catch {
        watcher = undefined;
      }
      watchFile(options.file, { interval: 1000 }, reload);
    },
    stop() {
      watcher?.close();
      unwatchFile(options.file);
    },
  };
}

/** Why the entitlement stream was (re)opened or dropped; counted in a metric and shown in /status. */
export type StreamEvent = 'connected' | 'refused' | 'unreachable' | 'ended' | 'stale' | 'revision_mismatch';

export interface ControllerStreamState {
  connected: boolean;
  /** Consecutive failed or stale connections (0 while a stream is healthy). */
  failures: number;
  lastEvent: StreamEvent | undefined;
  /** The revision whose acknowledgement has not reached the controller yet, if any. */
  unacknowledged: string | undefined;
}

export function controllerEntitlements(options: {
  controllerUrl: string;
  caPem: string;
  token: () => string | undefined;
  logger: Logger;
  /** A snapshot, with the values of the credentials its rules name (only this pod's; see operator/distribution/hub.ts). */
  onSnapshot: (entitlement: AgentEntitlement, credentials: DeliveredCredential[]) => void;
  /** A heartbeat confirming that `revision`, the last snapshot this stream delivered, is still current. */
  onHeartbeat: (revision: string) => void;
  /**
   * How long a stream may stay silent before it is considered stale when the controller does not announce its
   * heartbeat interval; an announced interval gives 2 × interval + 1 s (never more than this). Default 30 s.
   */
  staleStreamMs?: number;
  onStreamEvent?: (event: StreamEvent) => void;
  /** Acknowledgement retry delays, doubling from min to max. */
  ackRetry?: { minMs: number; maxMs: number };
}): EntitlementSource & { ack(revision: string): Promise<void>; state(): ControllerStreamState } {
  let stopped = false;
  // Read through a function: stop() flips it while the loop awaits, which TypeScript's narrowing cannot see.
  const isStopped = (): boolean => stopped;
  let wake: (() => void) | undefined; // ends the reconnect wait at once on stop()
  let current: ClientRequest | undefined;
  let failures = 0;
  let connected = false;
  let lastEvent: StreamEvent | undefined;
  const base = options.controllerUrl.replace(/\/$/, '');
  const maxSilenceMs = options.staleStreamMs ?? 30_000;
  const event = (e: StreamEvent): void => {
    lastEvent = e;
    options.onStreamEvent?.(e);
  };

  const connectOnce = (): Promise<void> =>
    new Promise((resolve) => {
      const token = options.token();
      if (!token) {
        resolve();
        return;
      }
      let finished = false;
      const finish = (why: StreamEvent | undefined): void => {
        if (finished) return;
        finished = true;
        clearTimeout(watchdog);
        connected = false;
        if (why) event(why);
        resolve();
      };
      // The watchdog covers connecting (a paused replica accepts TCP but never answers TLS) and silence after:
      // each event re-arms it. Without it a stalled stream would hold the sidecar until its token expired.
      let silenceMs = maxSilenceMs;
      let watchdog: NodeJS.Timeout | undefined;
      const arm = (): void => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => {
          options.logger.warn('entitlement stream stale: reconnecting', { silentMs: silenceMs });
          req.destroy();
          finish('stale');
        }, silenceMs);
        watchdog.unref();
      };
      let streamRevision: string | undefined; // the last snapshot this connection delivered and we applied
      const req = https().request(
        `${base}/v1/entitlements/stream`,
        { ca: options.caPem, headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' } },
        (res) => {
          if (res.statusCode !== 200) {
            options.logger.warn('entitlement stream refused', { status: res.statusCode });
            res.resume();
            res.on('end', () => finish('refused'));
            res.on('error', () => finish('refused'));
            return;
          }
          failures = 0;
          connected = true;
          event('connected');
          arm();
          let buffer = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            arm();
            buffer += chunk;
            let end: number;
            while ((end = buffer.indexOf('\n\n')) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              const name = /^event: (.*)$/m.exec(block)?.[1];
              const data = /^data: (.*)$/m.exec(block)?.[1];
              if (!data || (name !== 'heartbeat' && name !== 'snapshot')) continue;
              let parsed: { revision?: unknown; entitlement?: unknown; heartbeatMs?: unknown; credentials?: unknown };
              try {
                parsed = JSON.parse(data) as typeof parsed;
              } catch (err) {
                options.logger.error('invalid event from the controller; ignoring it', { event: name, err });
                continue;
              }
              const announced = parsed.heartbeatMs;
              if (typeof announced === 'number' && Number.isFinite(announced) && announced > 0) {
                silenceMs = Math.min(maxSilenceMs, 2 * announced + 1000);
                arm();
              }
              if (name === 'heartbeat') {
                if (parsed.revision === streamRevision) options.onHeartbeat(streamRevision ?? '');
                else {
                  // The controller believes we hold something else: only a fresh snapshot can settle it.
                  options.logger.warn('heartbeat names another revision than the last snapshot: reconnecting', {
                    heartbeat: String(parsed.revision),
                    snapshot: streamRevision ?? '',
                  });
                  req.destroy();
                  finish('revision_mismatch');
                  return;
                }
              } else {
                try {
                  const entitlement = checkEntitlement(parsed.entitlement, 'controller snapshot');
                  let credentials: DeliveredCredential[] = [];
                  try {
                    credentials = parseDeliveredCredentials(parsed.credentials);
                  } catch (err) {
                    // The grants still apply; rules with credentials refuse their requests (credential_unavailable).
                    options.logger.error('invalid credentials in a snapshot; using none', { err });
                  }
                  options.onSnapshot(entitlement, credentials);
                  streamRevision = entitlement.spec.revision;
                } catch (err) {
                  options.logger.error('invalid snapshot from the controller; keeping the previous one', { err });
                }
              }
            }
          });
          res.on('end', () => finish('ended'));
          res.on('error', () => finish('ended'));
        },
      );
      arm();
      req.on('error', (err) => {
        if (!finished) options.logger.warn('entitlement stream unreachable', { err });
        finish('unreachable');
      });
      req.end();
      current = req;
    });

  const loop = async (): Promise<void> => {
    while (!stopped) {
      await connectOnce();
      if (isStopped()) return;
      failures++;
      // The stream ends normally when the token that opened it expires: reconnect at once the first time; then
      // back off (with jitter, so sidecars of a recovering replica do not return in lockstep).
      const delay =
        failures <= 1 ? 0 : Math.min(10_000, 250 * 2 ** Math.min(failures, 6)) * (0.8 + Math.random() * 0.4);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, delay);
        wake = () => {
          clearTimeout(timer);
          r();
        };
      });
    }
  };

  // Acknowledgements: the latest applied revision is retried with backoff until the controller records it
  // (a lost ack would leave status out of sync forever); a newer revision supersedes an older pending one.
  let pendingAck: string | undefined;
  let acking: Promise<void> | undefined;
  const ackOnce = (revision: string): Promise<boolean> =>
    new Promise((resolve) => {
      const token = options.token();
      if (!token) {
        resolve(false);
        return;
      }
      const body = JSON.stringify({ revision });
      const req = https().request(
        `${base}/v1/entitlements/ack`,
        {
          method: 'POST',
          ca: options.caPem,
          timeout: 10_000,
          headers: {
            authorization: `Bearer ${token}`,
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
          },
        },
        (res) => {
          res.resume();
          const ok = (res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 300;
          // 4xx other than 401 (an expired token is renewed) will not get better by retrying.
          const final = ok || ((res.statusCode ?? 0) >= 400 && (res.statusCode ?? 0) < 500 && res.statusCode !== 401);
          if (!ok) options.logger.warn('entitlement ack refused', { status: res.statusCode, revision });
          res.on('end', () => resolve(final));
          res.on('error', () => resolve(false));
        },
      );
      req.on('timeout', () => req.destroy(new Error('ack timed out')));
      req.on('error', (err) => {
        options.logger.warn('entitlement ack failed', { err, revision });
        resolve(false);
      });
      req.end(body);
    });
  const ackLoop = async (): Promise<void> => {
    const { minMs, maxMs } = options.ackRetry ?? { minMs: 500, maxMs: 15_000 };
    let attempt = 0;
    while (pendingAck !== undefined && !isStopped()) {
      const revision = pendingAck;
      if (await ackOnce(revision)) {
        if (pendingAck === revision) pendingAck = undefined;
        attempt = 0;
        continue;
      }
      if (pendingAck !== revision) continue; // superseded: send the newer one at once
      const delay = Math.min(maxMs, minMs * 2 ** Math.min(attempt++, 16));
      await new Promise<void>((r) => setTimeout(r, delay).unref());
    }
  };

  const kickAcks = (): Promise<void> => {
    acking ??= ackLoop().finally(() => {
      acking = undefined;
      if (pendingAck !== undefined && !isStopped()) void kickAcks(); // an ack that arrived as the loop ended
    });
    return acking;
  };

  return {
    start() {
      void loop();
      return Promise.resolve();
    },
    stop() {
      stopped = true;
      current?.destroy();
      wake?.();
    },
    state: () => ({ connected, failures, lastEvent, unacknowledged: pendingAck }),
    ack(revision) {
      pendingAck = revision;
      return kickAcks();
    },
  };
}
