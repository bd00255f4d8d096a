package restjson

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/greenroom-ml/greenroom/clients/go/greenroom"
)

func TestReadRequest(t *testing.T) {
	req, err := ReadRequest(strings.NewReader(`{"id": "r1", "inputs": [
		{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1.5, 2], [3, 4e-3]]},
		{"name": "big", "shape": [1], "datatype": "INT64", "data": [9007199254740993]},
		{"name": "d", "shape": [2], "datatype": "FP64", "data": [0.1, "NaN"]},
		{"name": "s", "shape": [1, 1], "datatype": "BYTES", "data": [["héllo"]]},
		{"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]},
		{"name": "h", "shape": [1], "datatype": "FP16", "data": [1.0]}],
		"parameters": {}}`))
	if err != nil {
		t.Fatal(err)
	}
	if req.ID != "r1" || len(req.Inputs) != 6 {
		t.Fatalf("request %+v", req)
	}
	want := []any{[]float32{1.5, 2, 3, 4e-3}, []int64{9007199254740993}, nil,
		[][]byte{[]byte("héllo")}, []bool{true, false}, []uint16{0x3c00}}
	for i, in := range req.Inputs {
		if i == 2 {
			d := in.Data.([]float64)
			if d[0] != 0.1 || !math.IsNaN(d[1]) {
				t.Errorf("FP64 %v", d)
			}
			continue
		}
		if !reflect.DeepEqual(in.Data, want[i]) {
			t.Errorf("input %s: %#v, want %#v", in.Name, in.Data, want[i])
		}
	}
}

func TestReadRequestErrors(t *testing.T) {
	for body, message := range map[string]string{
		`{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}`: "input 'x': shape [3] needs 3 values, data has 2",
		`{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}`: `input 'x': value 0: strconv.ParseInt: parsing "1.5": invalid syntax`,
		`{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}`:  `input 'x': value 0: strconv.ParseInt: parsing "300": value out of range`,
		`{"inputs": [{"name": "x", "shape": [1], "datatype": "FP9", "data": [1]}]}`:     `input 'x': unknown datatype "FP9"`,
	} {
		_, err := ReadRequest(strings.NewReader(body))
		if err == nil || err.Error() != message {
			t.Errorf("%s: error %v, want %s", body, err, message)
		}
	}
}

func TestWriteResponse(t *testing.T) {
	var out bytes.Buffer
	err := WriteResponse(&out, &greenroom.Result{ModelName: "m", ModelVersion: "1", ID: "r", Outputs: []greenroom.Tensor{
		greenroom.NewTensor("label", []int64{2}, []int64{0, 2}),
		greenroom.NewTensor("p", []int64{1, 3}, []float64{0.1, 1.0 / 3, math.Inf(1)}),
		greenroom.NewTensor("f", []int64{1}, []float32{0.1}),
		greenroom.NewTensor("u", []int64{2}, []uint8{1, 255}),
		greenroom.NewTensor("s", []int64{1}, [][]byte{[]byte("a<b")}),
		greenroom.NewTensor("e", []int64{0}, []int32(nil)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"model_name":"m","model_version":"1","id":"r","outputs":[` +
		`{"name":"label","shape":[2],"datatype":"INT64","data":[0,2]},` +
		`{"name":"p","shape":[1,3],"datatype":"FP64","data":[0.1,0.3333333333333333,"Infinity"]},` +
		`{"name":"f","shape":[1],"datatype":"FP32","data":[0.1]},` +
		`{"name":"u","shape":[2],"datatype":"UINT8","data":[1,255]},` +
		`{"name":"s","shape":[1],"datatype":"BYTES","data":["a<b"]},` +
		`{"name":"e","shape":[0],"datatype":"INT32","data":[]}]}` + "\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
