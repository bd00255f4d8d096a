package lgbm

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync/atomic"

	pb "github.com/greenroom-ml/greenroom/clients/go/gen/inference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Names the runner answers with.
const (
	ServerName      = "greenroom-runner-go"
	ServerVersion   = "0.1.0"
	Platform        = "lightgbm-go"
	InputName       = "input"
	InternalMessage = "internal error; see the runner log"
)

// Model states, as RepositoryIndex reports them.
const (
	StateLoading     = "LOADING"
	StateReady       = "READY"
	StateUnavailable = "UNAVAILABLE"
)

type tensorSpec struct {
	name     string
	datatype string
	shape    []int64
}

// serving is the loaded model and its signature, published in one atomic store.
type serving struct {
	model   *Model
	inputs  []tensorSpec
	outputs []tensorSpec
	classes string // JSON list of class labels, for the probabilities output
}

func newServing(m *Model) *serving {
	s := &serving{
		model:  m,
		inputs: []tensorSpec{{InputName, "FP32", []int64{-1, int64(m.NFeatures)}}},
	}
	if m.Task == Classification {
		s.outputs = []tensorSpec{
			{"label", "INT64", []int64{-1}},
			{"probabilities", "FP64", []int64{-1, int64(m.NClasses)}},
		}
		names := make([]string, m.NClasses)
		for i := range names {
			names[i] = strconv.Quote(strconv.Itoa(i))
		}
		s.classes = "[" + strings.Join(names, ", ") + "]" // as Python's json.dumps writes it
	} else {
		s.outputs = []tensorSpec{{"prediction", "FP64", []int64{-1}}}
	}
	return s
}

// Server is the V2 inference service for one model version.
type Server struct {
	pb.UnimplementedGRPCInferenceServiceServer
	Name    string
	Version string
	Log     *slog.Logger
	current atomic.Pointer[serving]
	state   atomic.Value // string
}

// NewServer answers for name and version; the model comes later, with SetModel.
func NewServer(name, version string, log *slog.Logger) *Server {
	s := &Server{Name: name, Version: version, Log: log}
	s.state.Store(StateLoading)
	return s
}

// SetModel makes the server answer with m.
func (s *Server) SetModel(m *Model) {
	s.current.Store(newServing(m))
	s.state.Store(StateReady)
}

// SetUnavailable records that the model failed to load.
func (s *Server) SetUnavailable() { s.state.Store(StateUnavailable) }

func (s *Server) ready(name, version string) (*serving, error) {
	if name != s.Name {
		return nil, status.Errorf(codes.NotFound, "model '%s' is not in the repository", name)
	}
	if version != "" && version != s.Version {
		return nil, status.Errorf(codes.NotFound, "model '%s' has no version '%s' (versions: %s)",
			name, version, s.Version)
	}
	sv := s.current.Load()
	if sv == nil {
		return nil, status.Errorf(codes.Unavailable, "model '%s' version '%s' is still loading",
			name, s.Version)
	}
	return sv, nil
}

func (s *Server) ServerLive(context.Context, *pb.ServerLiveRequest) (*pb.ServerLiveResponse, error) {
	return &pb.ServerLiveResponse{Live: true}, nil
}

func (s *Server) ServerReady(context.Context, *pb.ServerReadyRequest) (*pb.ServerReadyResponse, error) {
	return &pb.ServerReadyResponse{Ready: s.current.Load() != nil}, nil
}

func (s *Server) ModelReady(_ context.Context, r *pb.ModelReadyRequest) (*pb.ModelReadyResponse, error) {
	_, err := s.ready(r.Name, r.Version)
	if err != nil && status.Code(err) == codes.NotFound {
		return nil, err
	}
	return &pb.ModelReadyResponse{Ready: err == nil}, nil
}

func (s *Server) ServerMetadata(context.Context, *pb.ServerMetadataRequest) (*pb.ServerMetadataResponse, error) {
	return &pb.ServerMetadataResponse{Name: ServerName, Version: ServerVersion}, nil
}

func metadata(specs []tensorSpec) []*pb.ModelMetadataResponse_TensorMetadata {
	out := make([]*pb.ModelMetadataResponse_TensorMetadata, len(specs))
	for i, t := range specs {
		out[i] = &pb.ModelMetadataResponse_TensorMetadata{Name: t.name, Datatype: t.datatype, Shape: t.shape}
	}
	return out
}

func (s *Server) ModelMetadata(_ context.Context, r *pb.ModelMetadataRequest) (*pb.ModelMetadataResponse, error) {
	sv, err := s.ready(r.Name, r.Version)
	if err != nil {
		return nil, err
	}
	return &pb.ModelMetadataResponse{
		Name:     s.Name,
		Versions: []string{s.Version},
		Platform: Platform,
		Inputs:   metadata(sv.inputs),
		Outputs:  metadata(sv.outputs),
	}, nil
}

func (s *Server) RepositoryIndex(_ context.Context, r *pb.RepositoryIndexRequest) (*pb.RepositoryIndexResponse, error) {
	if r.Ready && s.current.Load() == nil {
		return &pb.RepositoryIndexResponse{}, nil
	}
	entry := &pb.RepositoryIndexResponse_ModelIndex{Name: s.Name, Version: s.Version, State: s.state.Load().(string)}
	return &pb.RepositoryIndexResponse{Models: []*pb.RepositoryIndexResponse_ModelIndex{entry}}, nil
}

func (s *Server) ModelInfer(_ context.Context, r *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	return s.infer(r)
}

// ModelStreamInfer is Triton's form: requests answered in order, a failure as its message.
func (s *Server) ModelStreamInfer(stream grpc.BidiStreamingServer[pb.ModelInferRequest, pb.ModelStreamInferResponse]) error {
	for {
		r, err := stream.Recv()
		if err != nil {
			return nil // io.EOF or the client went away
		}
		answer := &pb.ModelStreamInferResponse{}
		if resp, err := s.infer(r); err != nil {
			answer.ErrorMessage = status.Convert(err).Message()
		} else {
			answer.InferResponse = resp
		}
		if err := stream.Send(answer); err != nil {
			return err
		}
	}
}

func fmtSpecs(specs []tensorSpec) string {
	parts := make([]string, len(specs))
	for i, t := range specs {
		parts[i] = fmt.Sprintf("%s (%s %s)", t.name, t.datatype, fmtShape(t.shape))
	}
	return strings.Join(parts, ", ")
}

func fmtShape(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func invalidInput(name, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "input '%s': %s", name, fmt.Sprintf(format, args...))
}

func shapeMatches(actual, declared []int64) bool {
	if len(actual) != len(declared) {
		return false
	}
	for i, d := range declared {
		if d != -1 && d != actual[i] {
			return false
		}
	}
	return true
}

// decodeInput checks the request against the signature and returns the input's rows as
// float64 (row-major) and the row count. The checks and messages follow the Python runner.
func decodeInput(r *pb.ModelInferRequest, sv *serving) ([]float64, int, error) {
	want := sv.inputs[0]
	raws := r.RawInputContents
	if len(raws) > 0 && len(raws) != len(r.Inputs) {
		return nil, 0, status.Errorf(codes.InvalidArgument,
			"raw contents hold %d entries for %d tensors; send one entry per tensor, in tensor order",
			len(raws), len(r.Inputs))
	}
	var tensor *pb.ModelInferRequest_InferInputTensor
	var raw []byte
	for i, t := range r.Inputs {
		if t.Name != want.name {
			return nil, 0, invalidInput(t.Name, "is not an input of this model; its inputs are: %s", fmtSpecs(sv.inputs))
		}
		if tensor != nil {
			return nil, 0, invalidInput(t.Name, "appears more than once")
		}
		if t.Datatype != want.datatype {
			return nil, 0, invalidInput(t.Name, "datatype %s does not match the model's %s", t.Datatype, want.datatype)
		}
		if !shapeMatches(t.Shape, want.shape) {
			return nil, 0, invalidInput(t.Name, "shape %s does not match the model's %s", fmtShape(t.Shape), fmtShape(want.shape))
		}
		tensor = t
		if len(raws) > 0 {
			raw = raws[i]
		}
	}
	if tensor == nil {
		return nil, 0, invalidInput(want.name, "is missing; the model takes: %s", fmtSpecs(sv.inputs))
	}
	for _, o := range r.Outputs {
		if !hasOutput(sv, o.Name) {
			names := make([]string, len(sv.outputs))
			for i, t := range sv.outputs {
				names[i] = t.name
			}
			return nil, 0, status.Errorf(codes.InvalidArgument,
				"output '%s' is not an output of this model; its outputs are: %s", o.Name, strings.Join(names, ", "))
		}
	}
	count := int64(1)
	for _, d := range tensor.Shape {
		if d < 0 {
			return nil, 0, invalidInput(tensor.Name, "shape %s has a negative dimension", fmtShape(tensor.Shape))
		}
		if d > 0 && count > math.MaxInt32/d {
			return nil, 0, invalidInput(tensor.Name, "shape %s is too large", fmtShape(tensor.Shape))
		}
		count *= d
	}
	nRows := int(tensor.Shape[0])
	values := make([]float64, count)
	if len(raws) > 0 {
		if tensor.Contents != nil {
			return nil, 0, invalidInput(tensor.Name, "has typed contents while raw contents are also set; use one")
		}
		if int64(len(raw)) != count*4 {
			return nil, 0, invalidInput(tensor.Name, "raw contents are %d bytes; shape %s x FP32 needs %d",
				len(raw), fmtShape(tensor.Shape), count*4)
		}
		for i := range values {
			values[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		}
		return values, nRows, nil
	}
	typed := tensor.GetContents().GetFp32Contents()
	if int64(len(typed)) != count {
		return nil, 0, invalidInput(tensor.Name, "shape %s needs %d values in contents.fp32_contents, got %d",
			fmtShape(tensor.Shape), count, len(typed))
	}
	for i, v := range typed {
		values[i] = float64(v)
	}
	return values, nRows, nil
}

func hasOutput(sv *serving, name string) bool {
	for _, t := range sv.outputs {
		if t.name == name {
			return true
		}
	}
	return false
}

func (s *Server) infer(r *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	sv, err := s.ready(r.ModelName, r.ModelVersion)
	if err != nil {
		return nil, err
	}
	rows, nRows, err := decodeInput(r, sv)
	if err != nil {
		return nil, err
	}
	values, labels, err := sv.model.Predict(rows, nRows)
	if err != nil {
		s.Log.Error("inference failed", "request_id", r.Id, "error", err.Error())
		return nil, status.Error(codes.Internal, InternalMessage)
	}
	wanted := make([]string, 0, len(sv.outputs))
	if len(r.Outputs) > 0 {
		for _, o := range r.Outputs {
			wanted = append(wanted, o.Name)
		}
	} else {
		for _, t := range sv.outputs {
			wanted = append(wanted, t.name)
		}
	}
	raw := len(r.RawInputContents) > 0
	resp := &pb.ModelInferResponse{ModelName: s.Name, ModelVersion: s.Version, Id: r.Id}
	for _, name := range wanted {
		out := &pb.ModelInferResponse_InferOutputTensor{Name: name}
		switch name {
		case "label":
			out.Datatype, out.Shape = "INT64", []int64{int64(nRows)}
			if raw {
				resp.RawOutputContents = append(resp.RawOutputContents, int64Bytes(labels))
			} else {
				out.Contents = &pb.InferTensorContents{Int64Contents: labels}
			}
		case "probabilities", "prediction":
			out.Datatype = "FP64"
			if name == "probabilities" {
				out.Shape = []int64{int64(nRows), int64(sv.model.NClasses)}
				out.Parameters = map[string]*pb.InferParameter{
					"classes": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: sv.classes}},
				}
			} else {
				out.Shape = []int64{int64(nRows)}
			}
			if raw {
				resp.RawOutputContents = append(resp.RawOutputContents, float64Bytes(values))
			} else {
				out.Contents = &pb.InferTensorContents{Fp64Contents: values}
			}
		}
		resp.Outputs = append(resp.Outputs, out)
	}
	return resp, nil
}

func int64Bytes(values []int64) []byte {
	b := make([]byte, 8*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
	}
	return b
}

func float64Bytes(values []float64) []byte {
	b := make([]byte, 8*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(v))
	}
	return b
}
