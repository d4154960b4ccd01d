/** An error with a stable, machine-readable code (what API answers and metrics carry); the message is for people. */
export class CodedError<C extends string = string> extends Error {
  readonly code: C;
  constructor(code: C, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}
