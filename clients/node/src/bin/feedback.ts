#!/usr/bin/env node
/**
 * Sends ground truth from a CSV file (header `request_id,row,label`) and prints the result.
 *
 *     node dist/bin/feedback.js --target 127.0.0.1:8001 --model iris --file labels.csv
 */
import { readFile } from "node:fs/promises";

import { GreenroomClient } from "../client";
import { feedbackFromCsv } from "../csv";
import { options, run } from "./common";

const USAGE = "feedback --target HOST:PORT --model NAME --file labels.csv";

run(async () => {
  const args = options(USAGE, ["target", "model", "file"], ["target", "model", "file"]);
  const items = feedbackFromCsv(await readFile(args["file"]!, "utf8"));
  const client = new GreenroomClient(args["target"]!);
  try {
    const result = await client.sendFeedback(args["model"]!, items);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    client.close();
  }
});
