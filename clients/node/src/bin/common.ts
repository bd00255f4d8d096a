/** Shared by the example programs: option parsing and error reporting. */
import { parseArgs } from "node:util";

import { GreenroomError } from "../errors";

export type Options = Record<string, string | undefined>;

/** Parses `--name value` options; prints usage and exits 2 when a required one is missing. */
export function options(usage: string, names: string[], required: string[]): Options {
  try {
    const { values } = parseArgs({
      options: Object.fromEntries([...names, "help"].map((n) => [n, { type: n === "help" ? "boolean" : "string" }])),
      strict: true,
      allowPositionals: false,
    });
    if (values["help"]) {
      process.stdout.write(`usage: ${usage}\n`);
      process.exit(0);
    }
    const missing = required.filter((n) => values[n] === undefined);
    if (missing.length > 0) throw new Error(`missing ${missing.map((n) => `--${n}`).join(", ")}`);
    return values as Options;
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\nusage: ${usage}\n`);
    process.exit(2);
  }
}

/** Runs the program; a failure prints `error: ...` (with the gRPC status) and exits 1. */
export function run(main: () => Promise<void>): void {
  main().catch((error: unknown) => {
    const text = error instanceof GreenroomError ? `${error.codeName}: ${error.details}` : String((error as Error)?.message ?? error);
    process.stderr.write(`error: ${text}\n`);
    process.exitCode = 1;
  });
}
