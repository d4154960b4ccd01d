/** The API's duration strings ('90s', '5m'): the only form the CRD admits for tokenTTL. */
const DURATION = /^([1-9][0-9]{0,3})(s|m)$/;

/** Seconds, or undefined for anything the CRD would not admit. */
export function parseDurationSeconds(value: string | undefined): number | undefined {
  const match = value === undefined ? null : DURATION.exec(value);
  return match ? Number(match[1]) * (match[2] === 'm' ? 60 : 1) : undefined;
}

export function formatDurationSeconds(seconds: number): string {
  return seconds % 60 === 0 ? `${seconds / 60}m` : `${seconds}s`;
}
