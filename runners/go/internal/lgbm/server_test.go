package lgbm

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"testing"

	pb "github.com/greenroom-ml/greenroom/clients/go/gen/inference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func testServer(t *testing.T) *Server {
	t.Helper()
	m, err := Load(filepath.Join("testdata", "multiclass.txt"), 1)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer("m", "1", slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.SetModel(m)
	return s
}

func fp32Raw(values []float32) []byte {
	b := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func TestInferRawAndTyped(t *testing.T) {
	s := testServer(t)
	values := []float32{0.1, 0.2, 0.3, -1, 2, 0.5}
	input := &pb.ModelInferRequest_InferInputTensor{Name: "input", Datatype: "FP32", Shape: []int64{2, 3}}
	raw, err := s.ModelInfer(context.Background(), &pb.ModelInferRequest{
		ModelName: "m", Id: "x", Inputs: []*pb.ModelInferRequest_InferInputTensor{input},
		RawInputContents: [][]byte{fp32Raw(values)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if raw.Id != "x" || len(raw.RawOutputContents) != 2 || len(raw.RawOutputContents[1]) != 2*3*8 {
		t.Fatalf("raw answer: %v", raw)
	}
	typedInput := &pb.ModelInferRequest_InferInputTensor{Name: "input", Datatype: "FP32", Shape: []int64{2, 3},
		Contents: &pb.InferTensorContents{Fp32Contents: values}}
	typed, err := s.ModelInfer(context.Background(), &pb.ModelInferRequest{
		ModelName: "m", ModelVersion: "1", Inputs: []*pb.ModelInferRequest_InferInputTensor{typedInput},
		Outputs: []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "probabilities"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(typed.Outputs) != 1 || len(typed.RawOutputContents) != 0 {
		t.Fatalf("typed answer: %v", typed)
	}
	probs := typed.Outputs[0].Contents.Fp64Contents
	for i, p := range probs {
		want := math.Float64frombits(binary.LittleEndian.Uint64(raw.RawOutputContents[1][8*i:]))
		if p != want {
			t.Errorf("probability %d: typed %v, raw %v", i, p, want)
		}
	}
	if got := typed.Outputs[0].Parameters["classes"].GetStringParam(); got != `["0", "1", "2"]` {
		t.Errorf("classes %q", got)
	}
}

func TestInferErrors(t *testing.T) {
	s := testServer(t)
	input := func(name, datatype string, shape ...int64) *pb.ModelInferRequest_InferInputTensor {
		return &pb.ModelInferRequest_InferInputTensor{Name: name, Datatype: datatype, Shape: shape}
	}
	cases := []struct {
		request *pb.ModelInferRequest
		code    codes.Code
		message string
	}{
		{&pb.ModelInferRequest{ModelName: "other"}, codes.NotFound, "model 'other' is not in the repository"},
		{&pb.ModelInferRequest{ModelName: "m", ModelVersion: "2"}, codes.NotFound,
			"model 'm' has no version '2' (versions: 1)"},
		{&pb.ModelInferRequest{ModelName: "m"}, codes.InvalidArgument,
			"input 'input': is missing; the model takes: input (FP32 [-1, 3])"},
		{&pb.ModelInferRequest{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{
			input("input", "FP32", -2, 3)}}, codes.InvalidArgument,
			"input 'input': shape [-2, 3] has a negative dimension"},
		{&pb.ModelInferRequest{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{
			input("input", "FP32", 1, 3), input("input", "FP32", 1, 3)}}, codes.InvalidArgument,
			"input 'input': appears more than once"},
		{&pb.ModelInferRequest{ModelName: "m", Inputs: []*pb.ModelInferRequest_InferInputTensor{
			input("input", "FP32", 1, 3)}, RawInputContents: [][]byte{{}, {}}}, codes.InvalidArgument,
			"raw contents hold 2 entries for 1 tensors; send one entry per tensor, in tensor order"},
	}
	for _, c := range cases {
		_, err := s.ModelInfer(context.Background(), c.request)
		st := status.Convert(err)
		if st.Code() != c.code || st.Message() != c.message {
			t.Errorf("got %v %q, want %v %q", st.Code(), st.Message(), c.code, c.message)
		}
	}
}

func TestLoadingAnswersUnavailable(t *testing.T) {
	s := NewServer("m", "1", slog.New(slog.NewTextHandler(io.Discard, nil)))
	_, err := s.ModelMetadata(context.Background(), &pb.ModelMetadataRequest{Name: "m"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v", err)
	}
	ready, err := s.ModelReady(context.Background(), &pb.ModelReadyRequest{Name: "m"})
	if err != nil || ready.Ready {
		t.Fatalf("got %v %v", ready, err)
	}
	index, _ := s.RepositoryIndex(context.Background(), &pb.RepositoryIndexRequest{})
	if index.Models[0].State != StateLoading {
		t.Fatalf("state %v", index.Models[0].State)
	}
}
