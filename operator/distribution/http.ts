/**
 * HTTP surface of entitlement distribution (served next to the identity endpoints, over TLS):
 *   GET  /v1/entitlements/stream   Authorization: Bearer <agent identity token>  → SSE snapshots for that pod
 *   POST /v1/entitlements/ack      {"revision": "sha256:…"}                      → records what the sidecar enforces
 * The pod is taken from the verified token, never from the request, so a sidecar can only see and report its own.
 * A stream ends when the token that opened it expires; the sidecar reconnects with its refreshed token.
 */
import { Router, type Request, type Response } from 'express';
import type { Logger } from '../../lib/log.ts';
import type { AgentIdentity, AgentVerifier } from '../../lib/verify/index.ts';
import type { EntitlementHub, PodKey, StreamSink } from './hub.ts';

export interface DistributionOptions {
  hub: EntitlementHub;
  /** Verifies agent identity tokens (audience = the issuer URL). */
  verifier: AgentVerifier;
  onAck: (pod: PodKey, revision: string) => Promise<void>;
  /**
   * False until the entitlement cache has synced. Until then a stream would tell every sidecar "nothing allowed"
   * (no entitlement known yet) — a revocation of the whole fleet whenever a controller restarts under connected
   * sidecars. Answered 503; the sidecar keeps what it holds and retries with backoff.
   */
  ready?: () => boolean;
  logger: Logger;
  now?: () => number;
}

const REVISION = /^(sha256:[0-9a-f]{1,64})?$/;

/**
 * Thrown by `onAck` when the acknowledged revision was delivered before its object was written and the object
 * is not there yet, or the object changed while its status was written: expected moments after a large change,
 * answered 503 for the sidecar to retry, not logged as failures.
 */
export class AckNotRecordedYet extends Error {
  override readonly name = 'AckNotRecordedYet';
}

export function createDistributionRouter(options: DistributionOptions): Router {
  const router = Router();

  const authenticate = async (req: Request, res: Response): Promise<AgentIdentity | undefined> => {
    const token = /^Bearer\s+(\S+)$/i.exec(req.get('authorization') ?? '')?.[1];
    try {
      return await options.verifier.verify(token);
    } catch (err) {
      const reason = err instanceof Error && 'code' in err ? String((err as { code: unknown }).code) : 'invalid_token';
      res.status(401).json({ error: 'unauthorized', reason });
      return undefined;
    }
  };
  const podOf = (id: AgentIdentity): PodKey => ({ namespace: id.namespace, podName: id.pod.name, podUID: id.pod.uid });

  const unready = (res: Response): boolean => {
    if (options.ready?.() ?? true) return false;
    res
      .status(503)
      .setHeader('retry-after', '1')
      .json({ error: 'entitlements_unavailable', message: 'the entitlement cache is not synced yet' });
    return true;
  };

  router.get('/v1/entitlements/stream', (req, res) => {
    if (unready(res)) return;
    void authenticate(req, res).then((identity) => {
      if (!identity) return;
      res.writeHead(200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-store',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      res.flushHeaders();
      let closed = false;
      const sink: StreamSink = {
        send(event, data) {
          if (closed || res.destroyed) return false;
          res.write(`event: ${event}\ndata: ${data}\n\n`);
          return true;
        },
        close() {
          if (closed) return;
          closed = true;
          res.end();
        },
      };
      const pod = podOf(identity);
      const unsubscribe = options.hub.subscribe(pod, sink);
      const untilExpiry = identity.expiresAt.getTime() - (options.now?.() ?? Date.now());
      const expiry = setTimeout(() => sink.close(), Math.max(0, untilExpiry));
      expiry.unref();
      options.logger.debug('entitlement stream opened', { namespace: pod.namespace, pod: pod.podName });
      res.on('close', () => {
        closed = true;
        clearTimeout(expiry);
        unsubscribe();
        options.logger.debug('entitlement stream closed', { namespace: pod.namespace, pod: pod.podName });
      });
    });
  });

  router.post('/v1/entitlements/ack', (req, res) => {
    if (unready(res)) return;
    void authenticate(req, res).then(async (identity) => {
      if (!identity) return;
      const revision = (req.body as { revision?: unknown } | undefined)?.revision;
      if (typeof revision !== 'string' || !REVISION.test(revision)) {
        res.status(400).json({ error: 'invalid_request', message: 'revision must be "sha256:<hex>" or empty' });
        return;
      }
      try {
        await options.onAck(podOf(identity), revision);
        res.status(204).end();
      } catch (err) {
        if (err instanceof AckNotRecordedYet)
          options.logger.debug('entitlement ack waits for its object', { revision, namespace: identity.namespace });
        else options.logger.warn('entitlement ack not recorded', { err });
        res.status(503).json({ error: 'unavailable', message: 'could not record the revision; retry' });
      }
    });
  });

  return router;
}
