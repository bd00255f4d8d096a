package greenroom

import (
	"encoding/binary"
	"fmt"
	"math"

	pb "github.com/greenroom-ml/greenroom/clients/go/gen/inference"
)

// Tensor is one named input or output: a flat, row-major slice of values and its shape.
//
// Data holds a slice whose Go type matches Datatype:
//
//	BOOL []bool      INT8 []int8     INT16 []int16    INT32 []int32    INT64 []int64
//	UINT8 []uint8    UINT16 []uint16 UINT32 []uint32  UINT64 []uint64
//	FP32 []float32   FP64 []float64  BYTES [][]byte   FP16 []uint16 (IEEE 754 half bits)
//
// On input, BYTES also accepts []string. NewTensor and Matrix fill Datatype from the
// slice's type; outputs always carry the types above.
type Tensor struct {
	Name     string
	Shape    []int64
	Datatype string
	Data     any
}

// Element is a Go type that maps to one V2 datatype (uint16 maps to UINT16; build FP16
// tensors by hand with Datatype "FP16").
type Element interface {
	bool | int8 | int16 | int32 | int64 | uint8 | uint16 | uint32 | uint64 |
		float32 | float64 | []byte
}

// Datatypes this package encodes and decodes: the V2 protocol's, with their element size
// in raw contents (0 for BYTES, whose elements carry their own length).
var itemSize = map[string]int{
	"BOOL": 1, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
	"UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
	"FP16": 2, "FP32": 4, "FP64": 8, "BYTES": 0,
}

// DatatypeOf is the V2 datatype of a slice of T.
func DatatypeOf[T Element]() string {
	var zero T
	switch any(zero).(type) {
	case bool:
		return "BOOL"
	case int8:
		return "INT8"
	case int16:
		return "INT16"
	case int32:
		return "INT32"
	case int64:
		return "INT64"
	case uint8:
		return "UINT8"
	case uint16:
		return "UINT16"
	case uint32:
		return "UINT32"
	case uint64:
		return "UINT64"
	case float32:
		return "FP32"
	case float64:
		return "FP64"
	default: // []byte
		return "BYTES"
	}
}

// NewTensor is a tensor of the given shape over flat, row-major data; its datatype
// follows T.
func NewTensor[T Element](name string, shape []int64, data []T) Tensor {
	return Tensor{Name: name, Shape: shape, Datatype: DatatypeOf[T](), Data: data}
}

// Matrix is a 2-D tensor [len(rows), len(rows[0])] from rows of equal length, for
// example a batch of float32 feature vectors.
func Matrix[T Element](name string, rows [][]T) (Tensor, error) {
	cols := 0
	if len(rows) > 0 {
		cols = len(rows[0])
	}
	flat := make([]T, 0, len(rows)*cols)
	for i, row := range rows {
		if len(row) != cols {
			return Tensor{}, invalidInput(name, "row %d has %d values; row 0 has %d", i, len(row), cols)
		}
		flat = append(flat, row...)
	}
	return NewTensor(name, []int64{int64(len(rows)), int64(cols)}, flat), nil
}

// Values is the tensor's flat data as []T, when T is the Go type of its datatype.
func Values[T Element](t Tensor) ([]T, error) {
	values, ok := t.Data.([]T)
	if !ok {
		var zero []T
		return nil, invalidInput(t.Name, "holds %s (%T), not %T", t.Datatype, t.Data, zero)
	}
	return values, nil
}

// Rows is a 2-D tensor's data as rows, sharing the flat slice's memory.
func Rows[T Element](t Tensor) ([][]T, error) {
	values, err := Values[T](t)
	if err != nil {
		return nil, err
	}
	if len(t.Shape) != 2 {
		return nil, invalidInput(t.Name, "has shape %v; Rows needs 2 dimensions", t.Shape)
	}
	n, m := int(t.Shape[0]), int(t.Shape[1])
	if n*m != len(values) {
		return nil, invalidInput(t.Name, "shape %v needs %d values, has %d", t.Shape, n*m, len(values))
	}
	rows := make([][]T, n)
	for i := range rows {
		rows[i] = values[i*m : (i+1)*m : (i+1)*m]
	}
	return rows, nil
}

// Elements is the number of values the shape holds.
func Elements(shape []int64) (int, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("shape %v has a negative dimension", shape)
		}
		n *= d
	}
	return int(n), nil
}

// length is the number of elements in t.Data, checked against the datatype.
func length(t Tensor) (int, error) {
	switch d := t.Data.(type) {
	case []bool:
		return check(t, len(d), "BOOL")
	case []int8:
		return check(t, len(d), "INT8")
	case []int16:
		return check(t, len(d), "INT16")
	case []int32:
		return check(t, len(d), "INT32")
	case []int64:
		return check(t, len(d), "INT64")
	case []uint8:
		return check(t, len(d), "UINT8")
	case []uint16:
		return check(t, len(d), "UINT16", "FP16")
	case []uint32:
		return check(t, len(d), "UINT32")
	case []uint64:
		return check(t, len(d), "UINT64")
	case []float32:
		return check(t, len(d), "FP32")
	case []float64:
		return check(t, len(d), "FP64")
	case [][]byte:
		return check(t, len(d), "BYTES")
	case []string:
		return check(t, len(d), "BYTES")
	default:
		return 0, invalidInput(t.Name, "data of type %T is not a supported slice", t.Data)
	}
}

func check(t Tensor, n int, datatypes ...string) (int, error) {
	for _, d := range datatypes {
		if t.Datatype == d {
			return n, nil
		}
	}
	return 0, invalidInput(t.Name, "datatype %s cannot hold data of type %T", t.Datatype, t.Data)
}

// validate checks that t's datatype is known and its data fills its shape.
func validate(t Tensor) error {
	if _, ok := itemSize[t.Datatype]; !ok {
		return invalidInput(t.Name, "unknown datatype %q", t.Datatype)
	}
	n, err := length(t)
	if err != nil {
		return err
	}
	want, err := Elements(t.Shape)
	if err != nil {
		return invalidInput(t.Name, "%v", err)
	}
	if n != want {
		return invalidInput(t.Name, "shape %v needs %d values, data has %d", t.Shape, want, n)
	}
	return nil
}

// EncodeRaw is t's data in the raw contents format: little-endian, row-major; each BYTES
// element a 4-byte little-endian length then its bytes; BOOL one byte.
func EncodeRaw(t Tensor) ([]byte, error) {
	if err := validate(t); err != nil {
		return nil, err
	}
	switch d := t.Data.(type) {
	case [][]byte:
		return appendBytes(d), nil
	case []string:
		elements := make([][]byte, len(d))
		for i, s := range d {
			elements[i] = []byte(s)
		}
		return appendBytes(elements), nil
	default:
		// encoding/binary copies slices of fixed-size numbers (and bools, one byte
		// each) in one pass, with no per-element reflection.
		raw, err := binary.Append(nil, binary.LittleEndian, d)
		if err != nil {
			return nil, invalidInput(t.Name, "%v", err)
		}
		return raw, nil
	}
}

func appendBytes(elements [][]byte) []byte {
	size := 0
	for _, e := range elements {
		size += 4 + len(e)
	}
	raw := make([]byte, 0, size)
	for _, e := range elements {
		raw = binary.LittleEndian.AppendUint32(raw, uint32(len(e)))
		raw = append(raw, e...)
	}
	return raw
}

// DecodeRaw is the tensor named name with the given datatype and shape, read from raw
// contents.
func DecodeRaw(name, datatype string, shape []int64, raw []byte) (Tensor, error) {
	t := Tensor{Name: name, Shape: shape, Datatype: datatype}
	size, ok := itemSize[datatype]
	if !ok {
		return t, invalidInput(name, "unknown datatype %q", datatype)
	}
	n, err := Elements(shape)
	if err != nil {
		return t, invalidInput(name, "%v", err)
	}
	if datatype == "BYTES" {
		t.Data, err = splitBytes(name, raw, n)
		return t, err
	}
	if len(raw) != n*size {
		return t, invalidInput(name, "raw contents are %d bytes; shape %v x %s needs %d",
			len(raw), shape, datatype, n*size)
	}
	switch datatype {
	case "BOOL":
		t.Data = make([]bool, n)
	case "INT8":
		t.Data = make([]int8, n)
	case "INT16":
		t.Data = make([]int16, n)
	case "INT32":
		t.Data = make([]int32, n)
	case "INT64":
		t.Data = make([]int64, n)
	case "UINT8":
		t.Data = make([]uint8, n)
	case "UINT16", "FP16":
		t.Data = make([]uint16, n)
	case "UINT32":
		t.Data = make([]uint32, n)
	case "UINT64":
		t.Data = make([]uint64, n)
	case "FP32":
		t.Data = make([]float32, n)
	case "FP64":
		t.Data = make([]float64, n)
	}
	if _, err := binary.Decode(raw, binary.LittleEndian, t.Data); err != nil {
		return t, invalidInput(name, "%v", err)
	}
	return t, nil
}

func splitBytes(name string, raw []byte, n int) ([][]byte, error) {
	out := make([][]byte, 0, n)
	for offset := 0; offset < len(raw); {
		if offset+4 > len(raw) {
			return nil, invalidInput(name, "raw BYTES contents end inside a 4-byte length prefix")
		}
		size := int(binary.LittleEndian.Uint32(raw[offset:]))
		offset += 4
		if size > len(raw)-offset {
			return nil, invalidInput(name, "raw BYTES element %d claims %d bytes; only %d remain",
				len(out), size, len(raw)-offset)
		}
		out = append(out, raw[offset:offset+size:offset+size])
		offset += size
	}
	if len(out) != n {
		return nil, invalidInput(name, "raw BYTES contents hold %d elements; shape needs %d", len(out), n)
	}
	return out, nil
}

// encodeTyped is t's data in the typed contents field of its datatype. FP16 has none.
func encodeTyped(t Tensor) (*pb.InferTensorContents, error) {
	if err := validate(t); err != nil {
		return nil, err
	}
	c := &pb.InferTensorContents{}
	switch d := t.Data.(type) {
	case []bool:
		c.BoolContents = d
	case []int8:
		c.IntContents = widen[int8, int32](d)
	case []int16:
		c.IntContents = widen[int16, int32](d)
	case []int32:
		c.IntContents = d
	case []int64:
		c.Int64Contents = d
	case []uint8:
		c.UintContents = widen[uint8, uint32](d)
	case []uint16:
		if t.Datatype == "FP16" {
			return nil, invalidInput(t.Name, "FP16 has no typed contents; send it raw")
		}
		c.UintContents = widen[uint16, uint32](d)
	case []uint32:
		c.UintContents = d
	case []uint64:
		c.Uint64Contents = d
	case []float32:
		c.Fp32Contents = d
	case []float64:
		c.Fp64Contents = d
	case [][]byte:
		c.BytesContents = d
	case []string:
		c.BytesContents = make([][]byte, len(d))
		for i, s := range d {
			c.BytesContents[i] = []byte(s)
		}
	}
	return c, nil
}

type integer interface {
	~int8 | ~int16 | ~int32 | ~int64 | ~uint8 | ~uint16 | ~uint32 | ~uint64
}

func widen[S, D integer](s []S) []D {
	d := make([]D, len(s))
	for i, v := range s {
		d[i] = D(v)
	}
	return d
}

// DecodeTyped is the tensor named name read from typed contents.
func DecodeTyped(name, datatype string, shape []int64, c *pb.InferTensorContents) (Tensor, error) {
	t := Tensor{Name: name, Shape: shape, Datatype: datatype}
	if c == nil {
		c = &pb.InferTensorContents{}
	}
	switch datatype {
	case "BOOL":
		t.Data = c.BoolContents
	case "INT8":
		t.Data = widen[int32, int8](c.IntContents)
	case "INT16":
		t.Data = widen[int32, int16](c.IntContents)
	case "INT32":
		t.Data = c.IntContents
	case "INT64":
		t.Data = c.Int64Contents
	case "UINT8":
		t.Data = widen[uint32, uint8](c.UintContents)
	case "UINT16":
		t.Data = widen[uint32, uint16](c.UintContents)
	case "UINT32":
		t.Data = c.UintContents
	case "UINT64":
		t.Data = c.Uint64Contents
	case "FP32":
		t.Data = c.Fp32Contents
	case "FP64":
		t.Data = c.Fp64Contents
	case "BYTES":
		t.Data = c.BytesContents
	case "FP16":
		return t, invalidInput(name, "FP16 has no typed contents")
	default:
		return t, invalidInput(name, "unknown datatype %q", datatype)
	}
	// A nil slice of the right type: an empty repeated field still decodes to []T.
	if err := validate(t); err != nil {
		return t, err
	}
	return t, nil
}

// HalfToFloat32 is the float32 value of IEEE 754 half-precision bits.
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // Inf, NaN
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	case exp == 0 && frac == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: frac x 2^-24
		v := float32(frac) / (1 << 24)
		if sign != 0 {
			v = -v
		}
		return v
	default:
		return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
	}
}

// Float32ToHalf is the IEEE 754 half-precision bits nearest to f (ties to even).
func Float32ToHalf(f float32) uint16 {
	bits := math.Float32bits(f)
	sign := uint16(bits>>16) & 0x8000
	exp := int32(bits>>23) & 0xff
	frac := bits & 0x7fffff
	if exp == 0xff { // Inf, NaN (kept quiet)
		if frac != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		// Subnormal half: shift the full mantissa (with its implicit 1) into place.
		m := frac | 0x800000
		shift := uint32(14 - e)
		half := m >> shift
		rest := m & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rest > mid || (rest == mid && half&1 == 1) {
			half++
		}
		return sign | uint16(half)
	}
	half := uint32(e)<<10 | frac>>13
	rest := frac & 0x1fff
	if rest > 0x1000 || (rest == 0x1000 && half&1 == 1) {
		half++ // may carry into the exponent, up to Inf: that is the right rounding
	}
	return sign | uint16(half)
}
