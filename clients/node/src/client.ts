/**
 * Greenroom's TypeScript client: V2 inference (`inference.GRPCInferenceService`) and the
 * control API (`greenroom.v1`: Deployments, Feedback) over one @grpc/grpc-js channel.
 *
 *     const client = new GreenroomClient("127.0.0.1:8001");
 *     const result = await client.infer("iris", [float32Matrix("input", [[5.1, 3.5, 1.4, 0.2]])]);
 *     console.log(result.output("label").data, result.matrix("probabilities"));
 *     await client.sendFeedback("iris", [{ requestId: result.id, row: 0, label: "0" }]);
 *     client.close();
 *
 * Every method returns a promise; a failed call rejects with a GreenroomError carrying the
 * gRPC status code and the server's details.
 */
import * as grpc from "@grpc/grpc-js";

import { GreenroomError, toGreenroomError } from "./errors";
import type { Deployment__Output } from "./generated/greenroom/v1/Deployment";
import type { DeploymentsClient } from "./generated/greenroom/v1/Deployments";
import type { FeedbackClient } from "./generated/greenroom/v1/Feedback";
import type { FeedbackBatch } from "./generated/greenroom/v1/FeedbackBatch";
import type { GRPCInferenceServiceClient } from "./generated/inference/GRPCInferenceService";
import type { ModelInferRequest } from "./generated/inference/ModelInferRequest";
import type { ModelInferResponse__Output } from "./generated/inference/ModelInferResponse";
import type { ModelMetadataResponse__Output } from "./generated/inference/ModelMetadataResponse";
import type { ModelReadyResponse__Output } from "./generated/inference/ModelReadyResponse";
import { loadProtos } from "./proto";
import { checkTensor, decodeRaw, decodeTyped, encodeRaw, encodeTyped, isDatatype, toMatrix, type Datatype, type Tensor } from "./tensor";

export interface ClientOptions {
  /** Deadline of every call, in milliseconds (default 30 000); `infer` can override it. */
  timeoutMs?: number;
  /** Default: insecure (plaintext). */
  credentials?: grpc.ChannelCredentials;
  /** Extra channel options, e.g. `{"grpc.max_receive_message_length": 64 << 20}`. */
  channelOptions?: grpc.ChannelOptions;
  /** Folder holding inference/ and greenroom/v1/ .proto files (default: the repository's proto/). */
  protoDir?: string;
}

export interface InferOptions {
  /** Empty or unset: the deployment decides (primary or canary). */
  version?: string;
  /** Echoed in the result; the gateway makes one when unset. */
  id?: string;
  /** Names of the outputs wanted; unset: every output. */
  outputs?: string[];
  /** How inputs travel: `raw` (default, `raw_input_contents`) or `typed` (`contents`). */
  contents?: "raw" | "typed";
  timeoutMs?: number;
}

export interface FeedbackItem {
  requestId: string;
  /** Row within the request's batch; 0 for single-row requests. */
  row: number;
  /** The truth: a class label as text, or a number as text for regression. */
  label: string;
}

export interface FeedbackResult {
  accepted: number;
  matched: number;
  unmatched: number;
  duplicates: number;
}

export interface Deployment {
  model: string;
  primary: string;
  canary: { version: string; weight: number } | null;
  shadows: { version: string; fraction: number }[];
}

export interface TensorMetadata {
  name: string;
  datatype: string;
  shape: number[];
}

export interface ModelMetadata {
  name: string;
  versions: string[];
  platform: string;
  inputs: TensorMetadata[];
  outputs: TensorMetadata[];
}

/** The answer of `infer`: the version that answered, the request id and the outputs. */
export class InferResult {
  constructor(
    readonly modelName: string,
    readonly modelVersion: string,
    readonly id: string,
    readonly outputs: Tensor[],
  ) {}

  /** The output of that name; throws a RangeError when there is none. */
  output(name: string): Tensor {
    const found = this.outputs.find((t) => t.name === name);
    if (found === undefined) {
      const names = this.outputs.map((t) => t.name).join(", ");
      throw new RangeError(`no output '${name}' (outputs: ${names})`);
    }
    return found;
  }

  /** A 1-D or 2-D numeric output as rows of numbers. */
  matrix(name: string): number[][] {
    return toMatrix(this.output(name));
  }
}

/** Items are streamed in batches of this many. */
export const FEEDBACK_BATCH = 1000;

function toShape(shape: readonly string[], where: string): number[] {
  return shape.map((dim) => {
    const n = Number(dim);
    if (!Number.isSafeInteger(n)) throw new RangeError(`${where}: shape dimension ${dim} is out of range`);
    return n;
  });
}

function toCount(value: string | number): number {
  return Number(value);
}

/** Decodes a ModelInferResponse: raw outputs when the answer came raw, else typed ones. */
export function decodeResponse(response: ModelInferResponse__Output): InferResult {
  const raw = response.raw_output_contents;
  if (raw.length > 0 && raw.length !== response.outputs.length) {
    throw new RangeError(`${raw.length} raw output contents for ${response.outputs.length} outputs`);
  }
  const outputs = response.outputs.map((output, i): Tensor => {
    const where = `output '${output.name}'`;
    if (!isDatatype(output.datatype)) throw new RangeError(`${where}: unknown datatype '${output.datatype}'`);
    const datatype: Datatype = output.datatype;
    const shape = toShape(output.shape, where);
    return raw.length > 0
      ? decodeRaw(output.name, datatype, shape, raw[i]!)
      : decodeTyped(output.name, datatype, shape, output.contents);
  });
  return new InferResult(response.model_name, response.model_version, response.id, outputs);
}

/** Builds the ModelInferRequest for `infer` (exported for tests). */
export function encodeRequest(model: string, inputs: readonly Tensor[], options: InferOptions = {}): ModelInferRequest {
  const typed = options.contents === "typed";
  for (const tensor of inputs) checkTensor(tensor);
  return {
    model_name: model,
    model_version: options.version ?? "",
    id: options.id ?? "",
    inputs: inputs.map((t) => ({
      name: t.name,
      datatype: t.datatype,
      shape: t.shape,
      ...(typed ? { contents: encodeTyped(t) } : {}),
    })),
    outputs: (options.outputs ?? []).map((name) => ({ name })),
    raw_input_contents: typed ? [] : inputs.map(encodeRaw),
  };
}

type Callback<T> = (error: grpc.ServiceError | null, value?: T) => void;

export class GreenroomClient {
  private readonly channel: grpc.Channel;
  private readonly inference: GRPCInferenceServiceClient;
  private readonly deployments: DeploymentsClient;
  private readonly feedback: FeedbackClient;
  private readonly timeoutMs: number;

  constructor(target: string, options: ClientOptions = {}) {
    const protos = loadProtos(options.protoDir);
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    this.channel = new grpc.Channel(target, credentials, {
      "grpc.max_receive_message_length": -1,
      ...options.channelOptions,
    });
    const shared = { channelOverride: this.channel };
    this.inference = new protos.inference.GRPCInferenceService(target, credentials, shared);
    this.deployments = new protos.greenroom.v1.Deployments(target, credentials, shared);
    this.feedback = new protos.greenroom.v1.Feedback(target, credentials, shared);
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  private callOptions(timeoutMs?: number): grpc.CallOptions {
    return { deadline: Date.now() + (timeoutMs ?? this.timeoutMs) };
  }

  private unary<T>(start: (options: grpc.CallOptions, callback: Callback<T>) => unknown, timeoutMs?: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      start(this.callOptions(timeoutMs), (error, value) => {
        if (error) reject(GreenroomError.fromServiceError(error));
        else resolve(value as T);
      });
    });
  }

  /** Runs the model on the inputs; inputs are sent raw (little-endian) unless `contents: "typed"`. */
  async infer(model: string, inputs: readonly Tensor[], options: InferOptions = {}): Promise<InferResult> {
    const request = encodeRequest(model, inputs, options);
    const response = await this.unary<ModelInferResponse__Output>(
      (o, cb) => this.inference.ModelInfer(request, o, cb),
      options.timeoutMs,
    );
    return decodeResponse(response);
  }

  async modelReady(model: string, version = ""): Promise<boolean> {
    const reply = await this.unary<ModelReadyResponse__Output>((o, cb) => this.inference.ModelReady({ name: model, version }, o, cb));
    return reply.ready;
  }

  async modelMetadata(model: string, version = ""): Promise<ModelMetadata> {
    const m = await this.unary<ModelMetadataResponse__Output>((o, cb) =>
      this.inference.ModelMetadata({ name: model, version }, o, cb),
    );
    const tensors = (list: typeof m.inputs): TensorMetadata[] =>
      list.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(Number) }));
    return { name: m.name, versions: m.versions, platform: m.platform, inputs: tensors(m.inputs), outputs: tensors(m.outputs) };
  }

  /** The model's deployment: primary, canary and shadows. */
  async deployment(model: string): Promise<Deployment> {
    const reply = await this.unary<Deployment__Output>((o, cb) => this.deployments.GetDeployment({ model }, o, cb));
    return {
      model: reply.model,
      primary: reply.primary,
      canary: reply.canary ? { version: reply.canary.version, weight: reply.canary.weight } : null,
      shadows: reply.shadows.map((s) => ({ version: s.version, fraction: s.fraction })),
    };
  }

  /** Ground truth joined to predictions by (request id, row); streamed in batches. */
  sendFeedback(model: string, items: Iterable<FeedbackItem>, timeoutMs?: number): Promise<FeedbackResult> {
    return new Promise<FeedbackResult>((resolve, reject) => {
      const call = this.feedback.StreamFeedback(this.callOptions(timeoutMs), (error, reply) => {
        if (error) reject(GreenroomError.fromServiceError(error));
        else
          resolve({
            accepted: toCount(reply!.accepted),
            matched: toCount(reply!.matched),
            unmatched: toCount(reply!.unmatched),
            duplicates: toCount(reply!.duplicates),
          });
      });
      const send = async (): Promise<void> => {
        let batch: FeedbackBatch = { model, items: [] };
        const flush = async (): Promise<void> => {
          if (!call.write(batch)) await new Promise((drained) => call.once("drain", drained));
          batch = { model, items: [] };
        };
        for (const item of items) {
          batch.items!.push({ request_id: item.requestId, row: item.row, label: item.label });
          if (batch.items!.length >= FEEDBACK_BATCH) await flush();
        }
        if (batch.items!.length > 0) await flush();
        call.end();
      };
      send().catch((error: unknown) => {
        call.cancel();
        reject(toGreenroomError(error));
      });
    });
  }

  close(): void {
    this.inference.close();
    this.deployments.close();
    this.feedback.close();
    this.channel.close();
  }
}
