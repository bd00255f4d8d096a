/** The repository's .proto files, loaded at run time with @grpc/proto-loader. */
import { existsSync } from "node:fs";
import { resolve } from "node:path";

import { loadPackageDefinition } from "@grpc/grpc-js";
import { loadSync, type Options } from "@grpc/proto-loader";

import type { ProtoGrpcType as ControlGrpcType } from "./generated/control";
import type { ProtoGrpcType as InferenceGrpcType } from "./generated/grpc_service";

/** The same options `npm run generate` gives proto-loader-gen-types: the types match. */
export const LOADER_OPTIONS: Options = {
  keepCase: true,
  longs: String, // int64 arrives as a decimal string: exact; shapes become Numbers here
  enums: String,
  defaults: true,
  oneofs: true,
};

export const PROTO_FILES = ["inference/grpc_service.proto", "greenroom/v1/control.proto"];

export type Protos = InferenceGrpcType & ControlGrpcType;

/** `$GREENROOM_PROTO_DIR`, else the repository's proto/ (dist/ is three levels below). */
export function defaultProtoDir(): string {
  return process.env["GREENROOM_PROTO_DIR"] ?? resolve(__dirname, "..", "..", "..", "proto");
}

const loaded = new Map<string, Protos>();

export function loadProtos(protoDir: string = defaultProtoDir()): Protos {
  let protos = loaded.get(protoDir);
  if (protos === undefined) {
    if (!existsSync(resolve(protoDir, PROTO_FILES[0]!))) {
      throw new Error(`no ${PROTO_FILES[0]} under ${protoDir}: set protoDir or GREENROOM_PROTO_DIR`);
    }
    const definition = loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
    protos = loadPackageDefinition(definition) as unknown as Protos;
    loaded.set(protoDir, protos);
  }
  return protos;
}
