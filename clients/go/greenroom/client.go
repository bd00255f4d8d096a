// Package greenroom is a Go client for Greenroom, a model-serving gateway that speaks the
// Open Inference Protocol (KServe/Triton "V2") and a control API for deployments,
// feedback and evaluation.
//
//	client, err := greenroom.Dial("127.0.0.1:8001")
//	if err != nil { ... }
//	defer client.Close()
//	features, _ := greenroom.Matrix("input", [][]float32{{5.1, 3.5, 1.4, 0.2}})
//	result, err := client.Infer(ctx, "iris", "", []greenroom.Tensor{features})
//	labels, _ := greenroom.Values[int64](result.Outputs[0])
//
// Tensors travel as raw contents (little-endian bytes, one entry per tensor); answers are
// decoded whether the server sent them raw or typed. Every error is an *Error that keeps
// the gRPC status, so status.Code(err) tells NOT_FOUND from INVALID_ARGUMENT.
package greenroom

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	greenroomv1 "github.com/greenroom-ml/greenroom/clients/go/gen/greenroom/v1"
	pb "github.com/greenroom-ml/greenroom/clients/go/gen/inference"
)

// Client calls one Greenroom gateway (or any V2 server, for Infer). It is safe for
// concurrent use; make one per target and share it.
type Client struct {
	conn        *grpc.ClientConn
	inference   pb.GRPCInferenceServiceClient
	deployments greenroomv1.DeploymentsClient
	feedback    greenroomv1.FeedbackClient
	evaluation  greenroomv1.EvaluationClient
}

// Dial makes a client for target ("host:port", or any gRPC target name). The connection
// is plaintext unless opts say otherwise (for example grpc.WithTransportCredentials);
// it is made lazily, so an unreachable server shows up as UNAVAILABLE on the first call.
func Dial(target string, opts ...grpc.DialOption) (*Client, error) {
	all := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(target, all...)
	if err != nil {
		return nil, callError("dial "+target, err)
	}
	return &Client{
		conn:        conn,
		inference:   pb.NewGRPCInferenceServiceClient(conn),
		deployments: greenroomv1.NewDeploymentsClient(conn),
		feedback:    greenroomv1.NewFeedbackClient(conn),
		evaluation:  greenroomv1.NewEvaluationClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Inference is the generated V2 stub, for the RPCs this wrapper does not cover.
func (c *Client) Inference() pb.GRPCInferenceServiceClient { return c.inference }

// Deployments is the generated greenroom.v1 Deployments stub.
func (c *Client) Deployments() greenroomv1.DeploymentsClient { return c.deployments }

// Feedback is the generated greenroom.v1 Feedback stub.
func (c *Client) Feedback() greenroomv1.FeedbackClient { return c.feedback }

// Evaluation is the generated greenroom.v1 Evaluation stub.
func (c *Client) Evaluation() greenroomv1.EvaluationClient { return c.evaluation }

// Result is a model's answer.
type Result struct {
	ModelName    string
	ModelVersion string // the version that answered
	ID           string // the request id: the caller's, or one the gateway made
	Outputs      []Tensor
}

// Output is the output tensor called name.
func (r *Result) Output(name string) (Tensor, bool) {
	for _, t := range r.Outputs {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// InferOption changes one Infer call.
type InferOption func(*inferOptions)

type inferOptions struct {
	id      string
	outputs []string
	typed   bool
}

// WithID sets the request id, which the answer echoes and feedback refers to.
func WithID(id string) InferOption { return func(o *inferOptions) { o.id = id } }

// WithOutputs asks for these outputs only (default: all of the model's).
func WithOutputs(names ...string) InferOption {
	return func(o *inferOptions) { o.outputs = names }
}

// WithTypedContents sends the inputs in typed contents fields instead of raw bytes.
func WithTypedContents() InferOption { return func(o *inferOptions) { o.typed = true } }

// Infer asks model for a prediction on inputs (in the model's input order). An empty
// version lets the deployment choose (primary, or canary by weight).
func (c *Client) Infer(ctx context.Context, model, version string, inputs []Tensor, opts ...InferOption) (*Result, error) {
	op := "infer " + model
	var o inferOptions
	for _, opt := range opts {
		opt(&o)
	}
	req, err := buildRequest(model, version, inputs, o)
	if err != nil {
		return nil, callError(op, err)
	}
	resp, err := c.inference.ModelInfer(ctx, req)
	if err != nil {
		return nil, callError(op, err)
	}
	result, err := decodeResponse(resp)
	if err != nil {
		// The server's answer does not hold what it says: not the caller's fault.
		return nil, &Error{Op: op, Status: status.New(codes.Internal, "bad answer: "+status.Convert(err).Message())}
	}
	return result, nil
}

func buildRequest(model, version string, inputs []Tensor, o inferOptions) (*pb.ModelInferRequest, error) {
	req := &pb.ModelInferRequest{ModelName: model, ModelVersion: version, Id: o.id}
	for _, t := range inputs {
		in := &pb.ModelInferRequest_InferInputTensor{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape}
		if o.typed {
			contents, err := encodeTyped(t)
			if err != nil {
				return nil, err
			}
			in.Contents = contents
		} else {
			raw, err := EncodeRaw(t)
			if err != nil {
				return nil, err
			}
			req.RawInputContents = append(req.RawInputContents, raw)
		}
		req.Inputs = append(req.Inputs, in)
	}
	for _, name := range o.outputs {
		req.Outputs = append(req.Outputs, &pb.ModelInferRequest_InferRequestedOutputTensor{Name: name})
	}
	return req, nil
}

func decodeResponse(resp *pb.ModelInferResponse) (*Result, error) {
	result := &Result{ModelName: resp.ModelName, ModelVersion: resp.ModelVersion, ID: resp.Id}
	raws := resp.RawOutputContents
	if len(raws) > 0 && len(raws) != len(resp.Outputs) {
		return nil, fmt.Errorf("answer has %d raw contents for %d outputs", len(raws), len(resp.Outputs))
	}
	for i, out := range resp.Outputs {
		var t Tensor
		var err error
		if len(raws) > 0 {
			t, err = DecodeRaw(out.Name, out.Datatype, out.Shape, raws[i])
		} else {
			t, err = DecodeTyped(out.Name, out.Datatype, out.Shape, out.Contents)
		}
		if err != nil {
			return nil, err
		}
		result.Outputs = append(result.Outputs, t)
	}
	return result, nil
}

// ModelReady says whether a model (version; empty: any) is ready to answer.
func (c *Client) ModelReady(ctx context.Context, model, version string) (bool, error) {
	resp, err := c.inference.ModelReady(ctx, &pb.ModelReadyRequest{Name: model, Version: version})
	if err != nil {
		return false, callError("model ready "+model, err)
	}
	return resp.Ready, nil
}

// FeedbackItem is the truth for one row of one earlier request.
type FeedbackItem struct {
	RequestID string
	Row       int64  // row within the request's batch; 0 for single-row requests
	Label     string // a class label as text, or a number as text for regression
}

// FeedbackResult counts what the gateway did with the items.
type FeedbackResult struct {
	Accepted   int64 `json:"accepted"`
	Matched    int64 `json:"matched"`    // joined to a prediction in the ledger
	Unmatched  int64 `json:"unmatched"`  // no prediction yet: kept, joined when it arrives
	Duplicates int64 `json:"duplicates"` // replaced an earlier truth for the same row
}

// feedbackBatch is the most items sent in one message; more go as a stream of batches.
const feedbackBatch = 1000

// SendFeedback sends ground truth for model's earlier predictions.
func (c *Client) SendFeedback(ctx context.Context, model string, items []FeedbackItem) (FeedbackResult, error) {
	op := "feedback " + model
	batch := func(items []FeedbackItem) *greenroomv1.FeedbackBatch {
		b := &greenroomv1.FeedbackBatch{Model: model, Items: make([]*greenroomv1.FeedbackItem, len(items))}
		for i, it := range items {
			b.Items[i] = &greenroomv1.FeedbackItem{RequestId: it.RequestID, Row: it.Row, Label: it.Label}
		}
		return b
	}
	var resp *greenroomv1.FeedbackResult
	var err error
	if len(items) <= feedbackBatch {
		resp, err = c.feedback.SendFeedback(ctx, batch(items))
	} else {
		resp, err = c.streamFeedback(ctx, items, batch)
	}
	if err != nil {
		return FeedbackResult{}, callError(op, err)
	}
	return FeedbackResult{
		Accepted: resp.Accepted, Matched: resp.Matched,
		Unmatched: resp.Unmatched, Duplicates: resp.Duplicates,
	}, nil
}

func (c *Client) streamFeedback(ctx context.Context, items []FeedbackItem,
	batch func([]FeedbackItem) *greenroomv1.FeedbackBatch) (*greenroomv1.FeedbackResult, error) {
	stream, err := c.feedback.StreamFeedback(ctx)
	if err != nil {
		return nil, err
	}
	for start := 0; start < len(items); start += feedbackBatch {
		end := min(start+feedbackBatch, len(items))
		if err := stream.Send(batch(items[start:end])); err != nil {
			// The server ended the stream; CloseAndRecv says why.
			break
		}
	}
	return stream.CloseAndRecv()
}

// Canary is a version that answers a share of the requests that name no version.
type Canary struct {
	Version string  `json:"version"`
	Weight  float64 `json:"weight"`
}

// Shadow is a version that sees a sampled copy of live traffic.
type Shadow struct {
	Version  string  `json:"version"`
	Fraction float64 `json:"fraction"`
}

// Deployment says which versions of a model answer, and which watch.
type Deployment struct {
	Model   string   `json:"model"`
	Primary string   `json:"primary"`
	Canary  *Canary  `json:"canary"`
	Shadows []Shadow `json:"shadows"`
}

// Deployment is model's current deployment.
func (c *Client) Deployment(ctx context.Context, model string) (Deployment, error) {
	d, err := c.deployments.GetDeployment(ctx, &greenroomv1.GetDeploymentRequest{Model: model})
	if err != nil {
		return Deployment{}, callError("deployment "+model, err)
	}
	out := Deployment{Model: d.Model, Primary: d.Primary, Shadows: []Shadow{}}
	if d.Canary != nil {
		out.Canary = &Canary{Version: d.Canary.Version, Weight: d.Canary.Weight}
	}
	for _, s := range d.Shadows {
		out.Shadows = append(out.Shadows, Shadow{Version: s.Version, Fraction: s.Fraction})
	}
	return out, nil
}
