package greenroom

import (
	"context"
	"io"
	"net"
	"reflect"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	greenroomv1 "github.com/greenroom-ml/greenroom/clients/go/gen/greenroom/v1"
	pb "github.com/greenroom-ml/greenroom/clients/go/gen/inference"
)

// echo is a V2 server that answers each input as an output of the same name, raw when
// the request came raw and typed when it came typed, as Greenroom does.
type echo struct {
	pb.UnimplementedGRPCInferenceServiceServer
	greenroomv1.UnimplementedFeedbackServer
	greenroomv1.UnimplementedDeploymentsServer
}

func (echo) ModelInfer(_ context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	if req.ModelName != "echo" {
		return nil, status.Errorf(codes.NotFound, "unknown model '%s'", req.ModelName)
	}
	resp := &pb.ModelInferResponse{ModelName: req.ModelName, ModelVersion: "7", Id: req.Id,
		RawOutputContents: req.RawInputContents}
	for _, in := range req.Inputs {
		resp.Outputs = append(resp.Outputs, &pb.ModelInferResponse_InferOutputTensor{
			Name: in.Name, Datatype: in.Datatype, Shape: in.Shape, Contents: in.Contents})
	}
	return resp, nil
}

func (echo) StreamFeedback(stream grpc.ClientStreamingServer[greenroomv1.FeedbackBatch, greenroomv1.FeedbackResult]) error {
	var n int64
	for {
		batch, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&greenroomv1.FeedbackResult{Accepted: n, Unmatched: n})
		}
		if err != nil {
			return err
		}
		n += int64(len(batch.Items))
	}
}

func (echo) SendFeedback(_ context.Context, b *greenroomv1.FeedbackBatch) (*greenroomv1.FeedbackResult, error) {
	if b.Model != "echo" {
		return nil, status.Errorf(codes.NotFound, "unknown model '%s'", b.Model)
	}
	return &greenroomv1.FeedbackResult{Accepted: int64(len(b.Items)), Matched: 1, Duplicates: 2}, nil
}

func (echo) GetDeployment(_ context.Context, r *greenroomv1.GetDeploymentRequest) (*greenroomv1.Deployment, error) {
	return &greenroomv1.Deployment{Model: r.Model, Primary: "1",
		Canary:  &greenroomv1.Canary{Version: "3", Weight: 0.1},
		Shadows: []*greenroomv1.Shadow{{Version: "2", Fraction: 0.5}}}, nil
}

func newTestClient(t *testing.T) *Client {
	t.Helper()
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer()
	pb.RegisterGRPCInferenceServiceServer(server, echo{})
	greenroomv1.RegisterFeedbackServer(server, echo{})
	greenroomv1.RegisterDeploymentsServer(server, echo{})
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	client, err := Dial("passthrough:///bufnet", grpc.WithContextDialer(
		func(ctx context.Context, _ string) (net.Conn, error) { return listener.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestInferRawAndTyped(t *testing.T) {
	client := newTestClient(t)
	features, err := Matrix("x", [][]float32{{1, 2}, {3, 4}})
	if err != nil {
		t.Fatal(err)
	}
	inputs := []Tensor{features, NewTensor("ids", []int64{2}, []int64{-5, 1 << 40}),
		NewTensor("text", []int64{2}, [][]byte{[]byte("a"), []byte("bc")}),
		NewTensor("flag", []int64{2}, []bool{true, false})}
	for _, opts := range [][]InferOption{{WithID("r1")}, {WithID("r1"), WithTypedContents()}} {
		result, err := client.Infer(context.Background(), "echo", "", inputs, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if result.ID != "r1" || result.ModelVersion != "7" || result.ModelName != "echo" {
			t.Errorf("result header %+v", result)
		}
		if !reflect.DeepEqual(result.Outputs, inputs) {
			t.Errorf("outputs %#v, want %#v", result.Outputs, inputs)
		}
		out, ok := result.Output("x")
		if !ok {
			t.Fatal("no output x")
		}
		if rows, _ := Rows[float32](out); !reflect.DeepEqual(rows, [][]float32{{1, 2}, {3, 4}}) {
			t.Errorf("rows %v", rows)
		}
	}
}

func TestErrorsKeepStatus(t *testing.T) {
	client := newTestClient(t)
	_, err := client.Infer(context.Background(), "nope", "", []Tensor{NewTensor("x", []int64{1}, []float32{1})})
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "unknown model 'nope'" {
		t.Errorf("unknown model: %v (%v)", err, status.Code(err))
	}
	if err.Error() != "greenroom: infer nope: NotFound: unknown model 'nope'" {
		t.Errorf("error text %q", err.Error())
	}
	_, err = client.Infer(context.Background(), "echo", "", []Tensor{NewTensor("x", []int64{2}, []float32{1})})
	wantInvalid(t, err, "tensor 'x': shape [2] needs 2 values, data has 1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = client.Infer(ctx, "echo", "", nil)
	if status.Code(err) != codes.Canceled {
		t.Errorf("canceled call: %v", err)
	}
}

func TestFeedbackAndDeployment(t *testing.T) {
	client := newTestClient(t)
	ctx := context.Background()
	got, err := client.SendFeedback(ctx, "echo", []FeedbackItem{{RequestID: "r1", Label: "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got != (FeedbackResult{Accepted: 1, Matched: 1, Duplicates: 2}) {
		t.Errorf("feedback %+v", got)
	}
	many := make([]FeedbackItem, 2500)
	if got, err = client.SendFeedback(ctx, "echo", many); err != nil || got.Accepted != 2500 {
		t.Errorf("streamed feedback %+v, %v", got, err)
	}
	if _, err = client.SendFeedback(ctx, "nope", nil); status.Code(err) != codes.NotFound {
		t.Errorf("feedback for unknown model: %v", err)
	}
	d, err := client.Deployment(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	want := Deployment{Model: "echo", Primary: "1", Canary: &Canary{"3", 0.1}, Shadows: []Shadow{{"2", 0.5}}}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("deployment %+v", d)
	}
}
