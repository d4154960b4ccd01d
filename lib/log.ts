/**
 * Structured logging: one JSON object per line, a constant message plus fields (never interpolated data).
 * Operational logs go to stderr so that stdout stays clean for the sidecar's audit stream.
 * Field names that look like credentials are redacted, whatever a caller passes.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Record<string, unknown>;

const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const SECRET_FIELD = /token|authorization|password|passwd|secret|private|credential|cookie|^key$|keyPem|keyData/i;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  level?: LogLevel;
  fields?: LogFields;
  write?: (line: string) => void;
}

export function isLogLevel(value: string): value is LogLevel {
  return value in LEVELS;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const min = LEVELS[options.level ?? 'info'];
  const write = options.write ?? ((line: string) => process.stderr.write(line));
  const make = (bound: LogFields): Logger => {
    const emit = (level: LogLevel, msg: string, fields?: LogFields): void => {
      if (LEVELS[level] < min) return;
      const record: LogFields = { time: new Date().toISOString(), level, msg };
      for (const source of [bound, fields]) {
        if (!source) continue;
        for (const [k, v] of Object.entries(source)) record[k] = SECRET_FIELD.test(k) ? '[redacted]' : serialize(v);
      }
      write(`${JSON.stringify(record)}\n`);
    };
    return {
      debug: (m, f) => emit('debug', m, f),
      info: (m, f) => emit('info', m, f),
      warn: (m, f) => emit('warn', m, f),
      error: (m, f) => emit('error', m, f),
      child: (f) => make({ ...bound, ...f }),
    };
  };
  return make(options.fields ?? {});
}

function serialize(value: unknown): unknown {
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}

/** A logger that drops everything; for tests and library callers that pass none. */
export const silentLogger: Logger = createLogger({ write: () => undefined });
