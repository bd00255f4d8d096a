export * from "./client";
export * from "./errors";
export * from "./tensor";
export { defaultProtoDir, loadProtos } from "./proto";
export { requestFromRest, resultToRest, stringify, tensorFromRest, tensorToRest } from "./rest";
export type { RestRequest, RestResponse, RestTensor } from "./rest";
