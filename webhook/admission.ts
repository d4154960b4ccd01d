/**
 * AdmissionReview v1 for pods, as an express router (mounted on the controller's TLS server at /mutate-pods).
 * Everything it needs is in the request: no network calls, no writes, so dry-run requests behave exactly like
 * real ones. A refused pod's owner (ReplicaSet, Job…) gets a FailedCreate Event with our message from its own
 * controller, so the refusal is visible on the workload without the webhook having side effects.
 */
import express, { Router, type Request, type Response } from 'express';
import type { Registry } from 'prom-client';
import type { Logger } from '../lib/log.ts';
import { counter, histogram } from '../lib/metrics.ts';
import { inject, wantsInjection, type InjectorConfig, type Pod } from './inject.ts';
import { podPatch } from './patch.ts';

interface AdmissionRequest {
  uid: string;
  kind?: { group: string; version: string; kind: string };
  operation?: string;
  namespace?: string;
  name?: string;
  dryRun?: boolean;
  object?: unknown;
}

export interface AdmissionResponse {
  uid: string;
  allowed: boolean;
  status?: { code: number; reason: string; message: string };
  patchType?: 'JSONPatch';
  patch?: string;
  warnings?: string[];
}

/** The decision for one AdmissionRequest; pure apart from what `inject` reads. */
export function review(
  request: AdmissionRequest,
  config: InjectorConfig,
): { response: AdmissionResponse; result: string; reason: string } {
  const uid = request.uid;
  const pod = request.object;
  if (request.kind?.kind !== 'Pod' || !isPodShape(pod)) {
    return {
      response: {
        uid,
        allowed: false,
        status: { code: 400, reason: 'BadRequest', message: 'agentfence: expected a Pod with spec.containers' },
      },
      result: 'error',
      reason: 'NotAPod',
    };
  }
  if (!wantsInjection(pod)) return { response: { uid, allowed: true }, result: 'skipped', reason: 'NotLabelled' };
  const outcome = inject(pod, config);
  if (!outcome.allowed) {
    return {
      response: {
        uid,
        allowed: false,
        status: { code: 403, reason: 'Forbidden', message: `agentfence: ${outcome.message}` },
      },
      result: 'refused',
      reason: outcome.reason,
    };
  }
  const ops = podPatch(pod, outcome.pod);
  const response: AdmissionResponse = { uid, allowed: true };
  if (ops.length > 0) {
    response.patchType = 'JSONPatch';
    response.patch = Buffer.from(JSON.stringify(ops)).toString('base64');
  }
  if (outcome.warnings.length > 0) response.warnings = outcome.warnings;
  return { response, result: ops.length > 0 ? 'injected' : 'unchanged', reason: 'Injected' };
}

/** The API server's object is input like any other: check the shape we rely on before trusting the type. */
export function isPodShape(value: unknown): value is Pod {
  if (typeof value !== 'object' || value === null) return false;
  const { metadata, spec } = value as { metadata?: unknown; spec?: unknown };
  if (typeof metadata !== 'object' || metadata === null || typeof spec !== 'object' || spec === null) return false;
  const { containers, initContainers } = spec as { containers?: unknown; initContainers?: unknown };
  const named = (list: unknown): boolean =>
    Array.isArray(list) && list.every((c) => typeof (c as { name?: unknown } | null)?.name === 'string');
  return named(containers) && (initContainers === undefined || named(initContainers));
}

export function createAdmissionRouter(options: { config: InjectorConfig; logger: Logger; registry: Registry }): Router {
  const { config, logger, registry } = options;
  const admissions = counter(registry, {
    name: 'agentfence_webhook_admissions_total',
    help: 'Pod admission reviews, by result (injected, unchanged, skipped, refused, error) and reason.',
    labelNames: ['result', 'reason'],
  });
  const duration = histogram(registry, {
    name: 'agentfence_webhook_admission_duration_seconds',
    help: 'Time to answer one AdmissionReview.',
    labelNames: [],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
  });
  const router = Router();
  // The API server sends at most ~3 MiB; a larger body is refused by the parser with 413.
  router.use(express.json({ limit: '4mb' }));
  router.post('/', (req: Request, res: Response) => {
    const end = duration.startTimer();
    const body = req.body as { apiVersion?: unknown; kind?: unknown; request?: AdmissionRequest } | undefined;
    if (
      body?.apiVersion !== 'admission.k8s.io/v1' ||
      body.kind !== 'AdmissionReview' ||
      typeof body.request?.uid !== 'string'
    ) {
      admissions.inc({ result: 'error', reason: 'MalformedReview' });
      res.status(400).json({ error: 'expected an admission.k8s.io/v1 AdmissionReview with request.uid' });
      end();
      return;
    }
    const { response, result, reason } = review(body.request, config);
    admissions.inc({ result, reason });
    if (result === 'refused') {
      logger.info('pod refused', {
        namespace: body.request.namespace,
        name: body.request.name,
        reason,
        dryRun: body.request.dryRun === true,
      });
    }
    res.json({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response });
    end();
  });
  // Body-parser errors (too large, not JSON): a clear 4xx, never a stack trace.
  router.use((err: Error & { status?: number; type?: string }, _req: Request, res: Response, _next: unknown) => {
    admissions.inc({ result: 'error', reason: err.type === 'entity.too.large' ? 'TooLarge' : 'MalformedReview' });
    res
      .status(err.status ?? 400)
      .json({ error: err.type === 'entity.too.large' ? 'request body too large' : 'request body is not valid JSON' });
  });
  return router;
}
