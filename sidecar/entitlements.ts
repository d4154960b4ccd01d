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
import { request } from 'node:https';
import { API_VERSION, AGENT_ENTITLEMENT } from '../lib/api/constants.ts';
import { agentEntitlementSpec } from '../lib/api/schema.ts';
import type { AgentEntitlement } from '../lib/api/types.generated.ts';
import { validateSchema } from '../lib/api/validate.ts';
import type { Logger } from '../lib/log.ts';

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

export function controllerEntitlements(options: {
  controllerUrl: string;
  caPem: string;
  token: () => string | undefined;
  logger: Logger;
  onSnapshot: (entitlement: AgentEntitlement) => void;
  onHeartbeat: () => void;
}): EntitlementSource & { ack(revision: string): Promise<void> } {
  let stopped = false;
  // Read through a function: stop() flips it while the loop awaits, which TypeScript's narrowing cannot see.
  const isStopped = (): boolean => stopped;
  let wake: (() => void) | undefined; // ends the reconnect wait at once on stop()
  let current: ReturnType<typeof request> | undefined;
  let failures = 0;
  const base = options.controllerUrl.replace(/\/$/, '');

  const connectOnce = (): Promise<void> =>
    new Promise((resolve) => {
      const token = options.token();
      if (!token) {
        resolve();
        return;
      }
      const req = request(
        `${base}/v1/entitlements/stream`,
        { ca: options.caPem, headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' } },
        (res) => {
          if (res.statusCode !== 200) {
            options.logger.warn('entitlement stream refused', { status: res.statusCode });
            res.resume();
            res.on('end', resolve);
            return;
          }
          failures = 0;
          let buffer = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            buffer += chunk;
            let end: number;
            while ((end = buffer.indexOf('\n\n')) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              const event = /^event: (.*)$/m.exec(block)?.[1];
              const data = /^data: (.*)$/m.exec(block)?.[1];
              if (event === 'heartbeat') options.onHeartbeat();
              else if (event === 'snapshot' && data) {
                try {
                  const { entitlement } = JSON.parse(data) as { entitlement: unknown };
                  options.onSnapshot(checkEntitlement(entitlement, 'controller snapshot'));
                } catch (err) {
                  options.logger.error('invalid snapshot from the controller; keeping the previous one', { err });
                }
              }
            }
          });
          res.on('end', resolve);
          res.on('error', () => resolve());
        },
      );
      req.on('error', (err) => {
        options.logger.warn('entitlement stream unreachable', { err });
        resolve();
      });
      req.end();
      current = req;
    });

  const loop = async (): Promise<void> => {
    while (!stopped) {
      await connectOnce();
      if (isStopped()) return;
      failures++;
      // The stream ends normally when the token that opened it expires: reconnect at once the first time.
      const delay = failures <= 1 ? 0 : Math.min(10_000, 250 * 2 ** Math.min(failures, 6));
      await new Promise<void>((r) => {
        const timer = setTimeout(r, delay);
        wake = () => {
          clearTimeout(timer);
          r();
        };
      });
    }
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
    ack(revision) {
      return new Promise((resolve) => {
        const token = options.token();
        if (!token) {
          resolve();
          return;
        }
        const body = JSON.stringify({ revision });
        const req = request(
          `${base}/v1/entitlements/ack`,
          {
            method: 'POST',
            ca: options.caPem,
            headers: {
              authorization: `Bearer ${token}`,
              'content-type': 'application/json',
              'content-length': Buffer.byteLength(body),
            },
          },
          (res) => {
            res.resume();
            res.on('end', () => resolve());
          },
        );
        req.on('error', (err) => {
          options.logger.warn('entitlement ack failed', { err });
          resolve();
        });
        req.end(body);
      });
    },
  };
}
