// Package restjson reads and writes the JSON of the V2 REST protocol's inference request
// and response, for the example programs: {"id", "inputs": [{"name", "shape",
// "datatype", "data"}]} in, {"model_name", "model_version", "id", "outputs": [...]} out.
package restjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/greenroom-ml/greenroom/clients/go/greenroom"
)

// Request is an inference request: its id (may be empty) and its input tensors.
type Request struct {
	ID      string
	Inputs  []greenroom.Tensor
	Outputs []string // requested outputs; empty: all
}

type requestJSON struct {
	ID     string `json:"id"`
	Inputs []struct {
		Name     string          `json:"name"`
		Shape    []int64         `json:"shape"`
		Datatype string          `json:"datatype"`
		Data     json.RawMessage `json:"data"`
	} `json:"inputs"`
	Outputs []struct {
		Name string `json:"name"`
	} `json:"outputs"`
}

// ReadRequest parses a request; each input's data may be flat or nested (row-major).
func ReadRequest(r io.Reader) (Request, error) {
	var body requestJSON
	if err := json.NewDecoder(r).Decode(&body); err != nil {
		return Request{}, fmt.Errorf("request JSON: %w", err)
	}
	req := Request{ID: body.ID}
	for _, in := range body.Inputs {
		t, err := tensor(in.Name, in.Datatype, in.Shape, in.Data)
		if err != nil {
			return Request{}, fmt.Errorf("input '%s': %w", in.Name, err)
		}
		req.Inputs = append(req.Inputs, t)
	}
	for _, out := range body.Outputs {
		req.Outputs = append(req.Outputs, out.Name)
	}
	return req, nil
}

func tensor(name, datatype string, shape []int64, raw json.RawMessage) (greenroom.Tensor, error) {
	t := greenroom.Tensor{Name: name, Shape: shape, Datatype: datatype}
	if shape == nil {
		return t, fmt.Errorf("no shape")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // int64 and float64 values exactly as written
	var nested any
	if err := dec.Decode(&nested); err != nil {
		return t, fmt.Errorf("data: %w", err)
	}
	var flat []any
	flatten(nested, &flat)
	want, err := greenroom.Elements(shape)
	if err != nil {
		return t, err
	}
	if len(flat) != want {
		return t, fmt.Errorf("shape %v needs %d values, data has %d", shape, want, len(flat))
	}
	switch datatype {
	case "BOOL":
		t.Data, err = convert(flat, func(v any) (bool, error) {
			b, ok := v.(bool)
			if !ok {
				return false, fmt.Errorf("%v is not true or false", v)
			}
			return b, nil
		})
	case "BYTES":
		t.Data, err = convert(flat, func(v any) ([]byte, error) {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("%v is not a string", v)
			}
			return []byte(s), nil
		})
	case "INT8":
		t.Data, err = convert(flat, signed[int8](8))
	case "INT16":
		t.Data, err = convert(flat, signed[int16](16))
	case "INT32":
		t.Data, err = convert(flat, signed[int32](32))
	case "INT64":
		t.Data, err = convert(flat, signed[int64](64))
	case "UINT8":
		t.Data, err = convert(flat, unsigned[uint8](8))
	case "UINT16":
		t.Data, err = convert(flat, unsigned[uint16](16))
	case "UINT32":
		t.Data, err = convert(flat, unsigned[uint32](32))
	case "UINT64":
		t.Data, err = convert(flat, unsigned[uint64](64))
	case "FP16":
		t.Data, err = convert(flat, func(v any) (uint16, error) {
			f, err := float(v, 32)
			return greenroom.Float32ToHalf(float32(f)), err
		})
	case "FP32":
		t.Data, err = convert(flat, func(v any) (float32, error) {
			f, err := float(v, 32)
			return float32(f), err
		})
	case "FP64":
		t.Data, err = convert(flat, func(v any) (float64, error) { return float(v, 64) })
	default:
		return t, fmt.Errorf("unknown datatype %q", datatype)
	}
	return t, err
}

func flatten(v any, out *[]any) {
	if list, ok := v.([]any); ok {
		for _, item := range list {
			flatten(item, out)
		}
		return
	}
	*out = append(*out, v)
}

func convert[T any](flat []any, one func(any) (T, error)) ([]T, error) {
	out := make([]T, len(flat))
	for i, v := range flat {
		x, err := one(v)
		if err != nil {
			return nil, fmt.Errorf("value %d: %w", i, err)
		}
		out[i] = x
	}
	return out, nil
}

func signed[T int8 | int16 | int32 | int64](bits int) func(any) (T, error) {
	return func(v any) (T, error) {
		n, ok := v.(json.Number)
		if !ok {
			return 0, fmt.Errorf("%v is not a number", v)
		}
		i, err := strconv.ParseInt(n.String(), 10, bits)
		return T(i), err
	}
}

func unsigned[T uint8 | uint16 | uint32 | uint64](bits int) func(any) (T, error) {
	return func(v any) (T, error) {
		n, ok := v.(json.Number)
		if !ok {
			return 0, fmt.Errorf("%v is not a number", v)
		}
		i, err := strconv.ParseUint(n.String(), 10, bits)
		return T(i), err
	}
}

// float reads a number, or "NaN", "Infinity", "-Infinity" as strings.
func float(v any, bits int) (float64, error) {
	switch x := v.(type) {
	case json.Number:
		return strconv.ParseFloat(x.String(), bits)
	case string:
		switch x {
		case "NaN", "nan":
			return math.NaN(), nil
		case "Infinity", "inf":
			return math.Inf(1), nil
		case "-Infinity", "-inf":
			return math.Inf(-1), nil
		}
	}
	return 0, fmt.Errorf("%v is not a number", v)
}

// WriteResponse writes result as the V2 REST response, each output's data flat and
// row-major. Floats are written in the shortest form that reads back to the same value;
// NaN and infinities, which JSON cannot write as numbers, as "NaN", "Infinity" and
// "-Infinity" strings.
func WriteResponse(w io.Writer, result *greenroom.Result) error {
	type output struct {
		Name     string          `json:"name"`
		Shape    []int64         `json:"shape"`
		Datatype string          `json:"datatype"`
		Data     json.RawMessage `json:"data"`
	}
	body := struct {
		ModelName    string   `json:"model_name"`
		ModelVersion string   `json:"model_version"`
		ID           string   `json:"id"`
		Outputs      []output `json:"outputs"`
	}{result.ModelName, result.ModelVersion, result.ID, []output{}}
	for _, t := range result.Outputs {
		data, err := encodeData(t)
		if err != nil {
			return fmt.Errorf("output '%s': %w", t.Name, err)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		body.Outputs = append(body.Outputs, output{t.Name, shape, t.Datatype, data})
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(body)
}

func encodeData(t greenroom.Tensor) (json.RawMessage, error) {
	switch d := t.Data.(type) {
	case []float32:
		return floats(d, 32), nil
	case []float64:
		return floats(d, 64), nil
	case []uint16:
		if t.Datatype == "FP16" {
			f := make([]float32, len(d))
			for i, h := range d {
				f[i] = greenroom.HalfToFloat32(h)
			}
			return floats(f, 32), nil
		}
	case [][]byte:
		s := make([]string, len(d))
		for i, b := range d {
			s[i] = string(b)
		}
		return marshal(s)
	case []uint8:
		// json.Marshal would write a []uint8 as base64 text.
		n := make([]uint16, len(d))
		for i, v := range d {
			n[i] = uint16(v)
		}
		return marshal(n)
	}
	data, err := marshal(t.Data)
	if err == nil && string(data) == "null" { // no values: a nil slice
		data = []byte("[]")
	}
	return data, err
}

// marshal is json.Marshal without HTML escaping ("<" stays "<").
func marshal(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func floats[T float32 | float64](values []T, bits int) json.RawMessage {
	out := []byte{'['}
	for i, v := range values {
		if i > 0 {
			out = append(out, ',')
		}
		f := float64(v)
		switch {
		case math.IsNaN(f):
			out = append(out, `"NaN"`...)
		case math.IsInf(f, 1):
			out = append(out, `"Infinity"`...)
		case math.IsInf(f, -1):
			out = append(out, `"-Infinity"`...)
		default:
			out = strconv.AppendFloat(out, f, 'g', -1, bits)
		}
	}
	return append(out, ']')
}
