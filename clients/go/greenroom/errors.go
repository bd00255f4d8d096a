package greenroom

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call: what the client was doing and the gRPC status that says why.
//
// The status is the server's (NOT_FOUND for an unknown model, INVALID_ARGUMENT for a bad
// tensor, UNAVAILABLE when a runner is down, ...), or INVALID_ARGUMENT made here when a
// tensor is wrong before it is sent. status.Code(err) and status.FromError(err) see it
// through any wrapping.
type Error struct {
	Op     string // "infer iris", "feedback churn", ...
	Status *status.Status
}

func (e *Error) Error() string {
	if e.Op == "" {
		return fmt.Sprintf("greenroom: %s: %s", e.Status.Code(), e.Status.Message())
	}
	return fmt.Sprintf("greenroom: %s: %s: %s", e.Op, e.Status.Code(), e.Status.Message())
}

// GRPCStatus lets the grpc/status package read the status of an *Error.
func (e *Error) GRPCStatus() *status.Status { return e.Status }

// Code is the status code.
func (e *Error) Code() codes.Code { return e.Status.Code() }

// Message is the status message.
func (e *Error) Message() string { return e.Status.Message() }

// callError wraps an error from a gRPC call, keeping its status (context errors become
// CANCELED or DEADLINE_EXCEEDED, as grpc reports them).
func callError(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Op == "" {
			return &Error{Op: op, Status: e.Status}
		}
		return err
	}
	return &Error{Op: op, Status: status.Convert(err)}
}

// invalidInput is an INVALID_ARGUMENT that names the tensor and says what is wrong.
func invalidInput(name, format string, args ...any) error {
	msg := fmt.Sprintf("tensor '%s': %s", name, fmt.Sprintf(format, args...))
	return &Error{Status: status.New(codes.InvalidArgument, msg)}
}
