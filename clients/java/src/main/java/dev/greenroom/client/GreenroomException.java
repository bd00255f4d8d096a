package dev.greenroom.client;

import io.grpc.Status;

/**
 * A failed call: what the client was doing and the gRPC status that says why.
 *
 * <p>The status is the server's (NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for a
 * bad tensor, UNAVAILABLE when the gateway or a runner is down, DEADLINE_EXCEEDED,
 * RESOURCE_EXHAUSTED, ...), or INVALID_ARGUMENT made here when a tensor is wrong before it is sent.
 * The message reads {@code greenroom: infer iris: NOT_FOUND: model 'iris' is not in the
 * repository}.
 */
public class GreenroomException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final Status.Code code;
  private final String description;
  private final String operation;

  /**
   * An error with this status.
   *
   * @param operation what the client was doing ("infer iris"), or empty
   * @param code the gRPC status code
   * @param description the status message
   * @param cause the gRPC exception, or null
   */
  public GreenroomException(
      String operation, Status.Code code, String description, Throwable cause) {
    super(format(operation, code, description), cause);
    this.operation = operation == null ? "" : operation;
    this.code = code;
    this.description = description == null ? "" : description;
  }

  /** The error of a failed gRPC call (or of anything else, as the status grpc makes of it). */
  static GreenroomException of(String operation, Throwable error) {
    if (error instanceof GreenroomException e) {
      return e.operation.isEmpty() ? e.during(operation) : e;
    }
    Status status = Status.fromThrowable(error);
    return new GreenroomException(operation, status.getCode(), status.getDescription(), error);
  }

  /** INVALID_ARGUMENT made here: a tensor that cannot be sent or read. */
  static GreenroomException invalid(String message) {
    return new GreenroomException("", Status.Code.INVALID_ARGUMENT, message, null);
  }

  /** The same error, said of an operation. */
  GreenroomException during(String operation) {
    return new GreenroomException(operation, code, description, getCause());
  }

  private static String format(String operation, Status.Code code, String description) {
    StringBuilder text = new StringBuilder("greenroom: ");
    if (operation != null && !operation.isEmpty()) {
      text.append(operation).append(": ");
    }
    return text.append(code).append(": ").append(description == null ? "" : description).toString();
  }

  /** The gRPC status code: NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, ... */
  public Status.Code code() {
    return code;
  }

  /** The status message, as the server (or this client) wrote it. */
  public String description() {
    return description;
  }

  /** What the client was doing: "infer iris", "feedback churn", ...; may be empty. */
  public String operation() {
    return operation;
  }

  /** The status, for code that works with grpc-java's {@link Status}. */
  public Status status() {
    return code.toStatus().withDescription(description);
  }
}
