/**
 * The identity issuer's HTTP surface (served over TLS by every controller replica):
 *   POST /v1/identity                      Authorization: Bearer <projected SA token>  → agent identity token
 *   POST /v1/token   {"audience": "..."}   Authorization: Bearer <agent identity token> → token for that audience
 *   GET  /.well-known/openid-configuration, /.well-known/jwks.json
 * Every refusal is JSON {error, message} with a stable code; no token ever appears in a response or a log.
 */
import express, { type Express, type Request, type Response } from 'express';
import type { Logger } from '../../lib/log.ts';
import { Refusal, type ExchangeResult, type IdentityExchange } from './exchange.ts';
import { openIdConfiguration } from './issuer.ts';
import { publicJwks, type KeySet } from './keys.ts';

export interface IdentityAppOptions {
  exchange: IdentityExchange;
  issuerUrl: string;
  keys: () => KeySet;
  logger: Logger;
  onResult?: (endpoint: 'identity' | 'token', result: string) => void;
}

export function createIdentityApp(options: IdentityAppOptions): Express {
  const app = express();
  app.disable('x-powered-by');
  app.use(express.json({ limit: '16kb' }));

  const bearer = (req: Request): string | undefined => /^Bearer\s+(\S+)$/i.exec(req.get('authorization') ?? '')?.[1];

  const respond = (endpoint: 'identity' | 'token', res: Response, work: Promise<ExchangeResult>): void => {
    work
      .then((result) => {
        options.onResult?.(endpoint, 'issued');
        res.setHeader('cache-control', 'no-store');
        res.json({
          token: result.token,
          expiresAt: result.expiresAt,
          issuedAt: result.issuedAt,
          refreshAfterSeconds: result.refreshAfterSeconds,
          spiffeID: result.spiffeID,
          revision: result.revision,
        });
      })
      .catch((err: unknown) => {
        const refusal = err instanceof Refusal ? err : new Refusal('review_unavailable', 'internal error');
        if (!(err instanceof Refusal)) options.logger.error('identity request failed', { endpoint, err });
        else options.logger.info('identity request refused', { endpoint, reason: refusal.code });
        options.onResult?.(endpoint, refusal.code);
        if (refusal.status === 429 || refusal.status === 503) res.setHeader('retry-after', '1');
        res.status(refusal.status).json({ error: refusal.code, message: refusal.message });
      });
  };

  app.post('/v1/identity', (req, res) => {
    respond('identity', res, options.exchange.exchange(bearer(req), req.socket.remoteAddress));
  });
  app.post('/v1/token', (req, res) => {
    const body = req.body as { audience?: unknown } | undefined;
    respond('token', res, options.exchange.tokenFor(bearer(req), body?.audience));
  });
  app.get('/.well-known/openid-configuration', (_req, res) => {
    res.setHeader('cache-control', 'public, max-age=300');
    res.json(openIdConfiguration(options.issuerUrl));
  });
  app.get('/.well-known/jwks.json', (_req, res) => {
    res.setHeader('cache-control', 'public, max-age=60');
    res.json(publicJwks(options.keys()));
  });
  // Malformed JSON bodies and the like: a clear error, never a stack trace.
  app.use((err: Error & { status?: number; type?: string }, _req: Request, res: Response, _next: unknown) => {
    res.status(err.status ?? 400).json({ error: 'invalid_request', message: err.type ?? 'bad request' });
  });
  return app;
}
