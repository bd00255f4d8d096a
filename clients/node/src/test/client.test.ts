/** The client against an in-process grpc-js server built from the same .proto files. */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { GreenroomClient, GreenroomError, bytes, float32Matrix, int64 } from "../index";
import { loadProtos } from "../proto";
import type { FeedbackBatch__Output } from "../generated/greenroom/v1/FeedbackBatch";
import type { FeedbackResult } from "../generated/greenroom/v1/FeedbackResult";
import type { GetDeploymentRequest__Output } from "../generated/greenroom/v1/GetDeploymentRequest";
import type { Deployment } from "../generated/greenroom/v1/Deployment";
import type { ModelInferRequest__Output } from "../generated/inference/ModelInferRequest";
import type { ModelInferResponse } from "../generated/inference/ModelInferResponse";

let server: grpc.Server;
let client: GreenroomClient;

/** Echoes the inputs back as outputs, raw when they came raw, typed when typed. */
function modelInfer(
  call: grpc.ServerUnaryCall<ModelInferRequest__Output, ModelInferResponse>,
  callback: grpc.sendUnaryData<ModelInferResponse>,
): void {
  const r = call.request;
  if (r.model_name !== "echo") {
    callback({ code: grpc.status.NOT_FOUND, details: `unknown model '${r.model_name}'` });
    return;
  }
  callback(null, {
    model_name: r.model_name,
    model_version: r.model_version || "7",
    id: r.id || "made-up",
    outputs: r.inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape, contents: i.contents })),
    raw_output_contents: r.raw_input_contents,
  });
}

before(async () => {
  const protos = loadProtos();
  server = new grpc.Server();
  server.addService(protos.inference.GRPCInferenceService.service, { ModelInfer: modelInfer });
  server.addService(protos.greenroom.v1.Deployments.service, {
    GetDeployment: (call: grpc.ServerUnaryCall<GetDeploymentRequest__Output, Deployment>, cb: grpc.sendUnaryData<Deployment>) =>
      cb(null, { model: call.request.model, primary: "1", canary: { version: "3", weight: 0.1 }, shadows: [{ version: "2", fraction: 0.5 }] }),
  });
  server.addService(protos.greenroom.v1.Feedback.service, {
    StreamFeedback: (call: grpc.ServerReadableStream<FeedbackBatch__Output, FeedbackResult>, cb: grpc.sendUnaryData<FeedbackResult>) => {
      let accepted = 0;
      call.on("data", (batch: FeedbackBatch__Output) => {
        accepted += batch.items.length;
      });
      call.on("end", () => cb(null, { accepted, matched: accepted - 1, unmatched: 1, duplicates: 0 }));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  client = new GreenroomClient(`127.0.0.1:${port}`, { timeoutMs: 5000 });
});

after(() => {
  client.close();
  server.forceShutdown();
});

const INPUTS = [
  float32Matrix("x", [
    [1.5, 2],
    [3, -4],
  ]),
  int64("n", [2], [9007199254740993n, -1n]),
  bytes("s", [2], ["a", "héllo"]),
];

test("raw inputs come back raw, exact", async () => {
  const result = await client.infer("echo", INPUTS, { id: "r1", version: "2" });
  assert.deepEqual([result.id, result.modelName, result.modelVersion], ["r1", "echo", "2"]);
  assert.deepEqual(result.outputs, INPUTS);
  assert.deepEqual(result.matrix("x"), [
    [1.5, 2],
    [3, -4],
  ]);
});

test("typed inputs come back typed, exact", async () => {
  const result = await client.infer("echo", INPUTS, { contents: "typed" });
  assert.equal(result.id, "made-up");
  assert.deepEqual(result.outputs, INPUTS);
});

test("a failed call rejects with the status code and details", async () => {
  await assert.rejects(client.infer("nope", INPUTS), (error: unknown) => {
    assert.ok(error instanceof GreenroomError);
    assert.equal(error.code, grpc.status.NOT_FOUND);
    assert.equal(error.codeName, "NOT_FOUND");
    assert.equal(error.details, "unknown model 'nope'");
    return true;
  });
});

test("deployment and feedback", async () => {
  assert.deepEqual(await client.deployment("m"), {
    model: "m",
    primary: "1",
    canary: { version: "3", weight: 0.1 },
    shadows: [{ version: "2", fraction: 0.5 }],
  });
  const items = Array.from({ length: 2500 }, (_, i) => ({ requestId: `r${i}`, row: 0, label: "1" }));
  assert.deepEqual(await client.sendFeedback("m", items), { accepted: 2500, matched: 2499, unmatched: 1, duplicates: 0 });
});
