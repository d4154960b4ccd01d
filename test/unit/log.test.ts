import { describe, expect, it } from 'vitest';
import { createLogger } from '../../lib/log.ts';

function capture(level?: 'debug' | 'info' | 'warn' | 'error') {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({
    level,
    write: (l) => lines.push(JSON.parse(l) as Record<string, unknown>),
    fields: { component: 'c' },
  });
  return { logger, lines };
}

describe('structured logger', () => {
  it('writes one JSON object per line with a constant message and fields', () => {
    const { logger, lines } = capture();
    logger.child({ namespace: 'ns' }).info('reconciled', { name: 'p', durationMs: 3 });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 'info',
      msg: 'reconciled',
      component: 'c',
      namespace: 'ns',
      name: 'p',
      durationMs: 3,
    });
    expect(typeof lines[0]?.time).toBe('string');
  });

  it('drops records below the configured level', () => {
    const { logger, lines } = capture('warn');
    logger.debug('a');
    logger.info('b');
    logger.warn('c');
    logger.error('d');
    expect(lines.map((l) => l.msg)).toEqual(['c', 'd']);
  });

  it('redacts fields that look like credentials, even when bound on a child', () => {
    const { logger, lines } = capture();
    logger
      .child({ token: 'eyJhbGciOi.secret' })
      .info('exchange', { authorization: 'Bearer x', apiKey: 'k', clientSecret: 's', keyPem: 'p', user: 'u' });
    const text = JSON.stringify(lines[0]);
    expect(text).not.toContain('eyJhbGciOi');
    expect(text).not.toContain('Bearer x');
    expect(lines[0]).toMatchObject({
      token: '[redacted]',
      authorization: '[redacted]',
      clientSecret: '[redacted]',
      keyPem: '[redacted]',
      user: 'u',
    });
  });

  it('serializes errors to name and message', () => {
    const { logger, lines } = capture();
    logger.error('failed', { err: new TypeError('boom') });
    expect(lines[0]?.err).toEqual({ name: 'TypeError', message: 'boom' });
  });
});
