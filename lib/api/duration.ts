/** Parses the API's duration strings ('90s', '5m'), the form the CRD admits for tokenTTL. */
export function parseDurationSeconds(value: string): number {
  const match = /^([1-9][0-9]{0,3})(s|m)$/.exec(value);
  if (!match) throw new Error(`invalid duration '${value}': expected whole seconds or minutes like '90s' or '5m'`);
  return Number(match[1]) * (match[2] === 'm' ? 60 : 1);
}

export function formatDurationSeconds(seconds: number): string {
  return seconds % 60 === 0 ? `${seconds / 60}m` : `${seconds}s`;
}
