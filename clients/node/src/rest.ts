/**
 * The V2 REST JSON forms of a request and a response, as the example programs read and
 * print them: `{"id", "inputs": [{"name", "shape", "datatype", "data"}]}` and
 * `{"model_name", "model_version", "id", "outputs": [...]}` with flat, row-major data.
 */
import type { InferResult } from "./client";
import { isDatatype, makeTensor, values, type Tensor } from "./tensor";

export interface RestTensor {
  name: string;
  shape: number[];
  datatype: string;
  data: unknown[];
}

export interface RestRequest {
  id?: string;
  inputs: RestTensor[];
  outputs?: { name: string }[];
}

export interface RestResponse {
  model_name: string;
  model_version: string;
  id: string;
  outputs: { name: string; shape: number[]; datatype: string; data: (number | bigint | boolean | string)[] }[];
}

function flatten(data: unknown): unknown[] {
  return Array.isArray(data) ? data.flatMap(flatten) : [data];
}

/** A tensor from its REST form; `data` may be flat or nested. */
export function tensorFromRest(input: RestTensor): Tensor {
  if (typeof input.name !== "string") throw new TypeError("every input needs a string 'name'");
  if (!Array.isArray(input.shape)) throw new TypeError(`input '${input.name}': 'shape' must be a list`);
  if (typeof input.datatype !== "string" || !isDatatype(input.datatype)) {
    throw new TypeError(`input '${input.name}': unknown datatype ${JSON.stringify(input.datatype)}`);
  }
  return makeTensor(input.name, input.datatype, input.shape, flatten(input.data));
}

/** Parses a REST request (already JSON-decoded) into tensors and its id. */
export function requestFromRest(body: unknown): { id: string | undefined; inputs: Tensor[]; outputs: string[] | undefined } {
  if (typeof body !== "object" || body === null || !Array.isArray((body as RestRequest).inputs)) {
    throw new TypeError("the request must be a JSON object with an 'inputs' list");
  }
  const request = body as RestRequest;
  if (request.id !== undefined && typeof request.id !== "string") throw new TypeError("'id' must be a string");
  return {
    id: request.id,
    inputs: request.inputs.map(tensorFromRest),
    outputs: request.outputs?.map((o) => o.name),
  };
}

/** A tensor in REST form: BYTES as UTF-8 text, FP16 as numbers, 64-bit integers exact. */
export function tensorToRest(tensor: Tensor): RestResponse["outputs"][number] {
  const data = values(tensor).map((v) => (Buffer.isBuffer(v) ? v.toString("utf8") : v));
  return { name: tensor.name, shape: tensor.shape, datatype: tensor.datatype, data };
}

export function resultToRest(result: InferResult): RestResponse {
  return {
    model_name: result.modelName,
    model_version: result.modelVersion,
    id: result.id,
    outputs: result.outputs.map(tensorToRest),
  };
}

/** JSON text like JSON.stringify, with bigints written as exact integer literals. */
export function stringify(value: unknown): string {
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return `[${value.map(stringify).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const fields = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${stringify(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}
