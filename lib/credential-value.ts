/**
 * What a brokered credential may be on the wire, checked where it is read (the controller, from the Secret) and
 * where it is used (the sidecar, from the stream): non-empty visible ASCII, spaces only inside. A CR or LF would
 * let a value write headers of its own; anything else non-ASCII is not portable in a header value.
 */
const HEADER_VALUE = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;

export function isCredentialValue(value: string): boolean {
  return value.length <= 16_384 && HEADER_VALUE.test(value);
}

/** The header value for a credential: `format` with its one `{value}` replaced (a `$` in the value stays literal). */
export function credentialHeaderValue(format: string, value: string): string {
  return format.replace('{value}', () => value);
}
