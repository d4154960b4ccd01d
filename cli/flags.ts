/** Flag value parsers shared by every subcommand; each error names the flag and the value it got. */
export function parseListen(flag: string, value: string): { host: string; port: number } {
  const match = /^(\[[0-9a-fA-F:]+\]|[^:[\]]+):(\d{1,5})$/.exec(value);
  const port = Number(match?.[2]);
  if (!match?.[1] || !Number.isInteger(port) || port > 65535) {
    throw new Error(`${flag} must be HOST:PORT, like 127.0.0.1:15001 or [::1]:15001 (got '${value}')`);
  }
  return { host: match[1].replace(/^\[|\]$/g, ''), port };
}

/** '60s', '5m', '1h' or a bare number of seconds. */
export function parseDurationFlag(flag: string, value: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(value);
  if (!match) throw new Error(`${flag} must be a duration like 30s, 5m or 1h (got '${value}')`);
  const n = Number(match[1]);
  switch (match[2]) {
    case 'ms':
      return n / 1000;
    case 'm':
      return n * 60;
    case 'h':
      return n * 3600;
    default:
      return n;
  }
}
