/** Errors of a Greenroom call: the gRPC status code and the server's details. */
import { status, type ServiceError } from "@grpc/grpc-js";

/**
 * A failed call. `code` is the gRPC status (`grpc.status.NOT_FOUND`...), `codeName` its
 * name, `details` the server's message (which says which input and why, for a bad tensor).
 */
export class GreenroomError extends Error {
  readonly code: status;
  readonly codeName: string;
  readonly details: string;

  constructor(code: status, details: string, options?: { cause?: unknown }) {
    const codeName = status[code] ?? `CODE_${code}`;
    super(`${codeName}: ${details}`, options);
    this.name = "GreenroomError";
    this.code = code;
    this.codeName = codeName;
    this.details = details;
  }

  static fromServiceError(error: ServiceError): GreenroomError {
    return new GreenroomError(error.code, error.details, { cause: error });
  }
}

/** A rejected gRPC call as a GreenroomError; anything else unchanged. */
export function toGreenroomError(error: unknown): unknown {
  if (error instanceof GreenroomError) return error;
  if (error instanceof Error && typeof (error as Partial<ServiceError>).code === "number" && "details" in error) {
    return GreenroomError.fromServiceError(error as ServiceError);
  }
  return error;
}
