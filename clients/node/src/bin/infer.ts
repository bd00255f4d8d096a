#!/usr/bin/env node
/**
 * Sends a V2 REST-style request file over gRPC and prints the V2 REST-style response.
 *
 *     node dist/bin/infer.js --target 127.0.0.1:8001 --model iris [--version 1] --input request.json
 */
import { readFile } from "node:fs/promises";

import { GreenroomClient } from "../client";
import { requestFromRest, resultToRest, stringify } from "../rest";
import { options, run } from "./common";

const USAGE = "infer --target HOST:PORT --model NAME [--version V] --input FILE.json";

run(async () => {
  const args = options(USAGE, ["target", "model", "version", "input"], ["target", "model", "input"]);
  const request = requestFromRest(JSON.parse(await readFile(args["input"]!, "utf8")));
  const client = new GreenroomClient(args["target"]!);
  try {
    const result = await client.infer(args["model"]!, request.inputs, {
      ...(args["version"] !== undefined ? { version: args["version"] } : {}),
      ...(request.id !== undefined ? { id: request.id } : {}),
      ...(request.outputs !== undefined ? { outputs: request.outputs } : {}),
    });
    process.stdout.write(`${stringify(resultToRest(result))}\n`);
  } finally {
    client.close();
  }
});
