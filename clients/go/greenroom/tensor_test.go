package greenroom

import (
	"bytes"
	"math"
	"reflect"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func roundTrip(t *testing.T, in Tensor) {
	t.Helper()
	raw, err := EncodeRaw(in)
	if err != nil {
		t.Fatalf("%s: encode raw: %v", in.Datatype, err)
	}
	out, err := DecodeRaw(in.Name, in.Datatype, in.Shape, raw)
	if err != nil {
		t.Fatalf("%s: decode raw: %v", in.Datatype, err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("%s raw: sent %#v, got back %#v", in.Datatype, in, out)
	}
	if in.Datatype == "FP16" {
		return
	}
	contents, err := encodeTyped(in)
	if err != nil {
		t.Fatalf("%s: encode typed: %v", in.Datatype, err)
	}
	out, err = DecodeTyped(in.Name, in.Datatype, in.Shape, contents)
	if err != nil {
		t.Fatalf("%s: decode typed: %v", in.Datatype, err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("%s typed: sent %#v, got back %#v", in.Datatype, in, out)
	}
}

func TestRoundTrips(t *testing.T) {
	shape := []int64{2, 2}
	roundTrip(t, NewTensor("b", shape, []bool{true, false, false, true}))
	roundTrip(t, NewTensor("i8", shape, []int8{-128, -1, 0, 127}))
	roundTrip(t, NewTensor("i16", shape, []int16{-32768, -1, 0, 32767}))
	roundTrip(t, NewTensor("i32", shape, []int32{math.MinInt32, -1, 0, math.MaxInt32}))
	roundTrip(t, NewTensor("i64", shape, []int64{math.MinInt64, -1, 0, math.MaxInt64}))
	roundTrip(t, NewTensor("u8", shape, []uint8{0, 1, 200, 255}))
	roundTrip(t, NewTensor("u16", shape, []uint16{0, 1, 40000, 65535}))
	roundTrip(t, NewTensor("u32", shape, []uint32{0, 1, 1 << 31, math.MaxUint32}))
	roundTrip(t, NewTensor("u64", shape, []uint64{0, 1, 1 << 63, math.MaxUint64}))
	roundTrip(t, NewTensor("f32", shape, []float32{-1.5, 0, float32(math.Pi), math.MaxFloat32}))
	roundTrip(t, NewTensor("f64", shape, []float64{-1.5, 0, math.Pi, math.SmallestNonzeroFloat64}))
	roundTrip(t, NewTensor("s", []int64{3}, [][]byte{[]byte("héllo"), {}, {0, 255}}))
	roundTrip(t, Tensor{Name: "h", Shape: []int64{3}, Datatype: "FP16", Data: []uint16{0x3c00, 0xc000, 0x7bff}})
	roundTrip(t, NewTensor("empty", []int64{0, 4}, []float32{}))
}

func TestRawIsLittleEndian(t *testing.T) {
	cases := []struct {
		t    Tensor
		want []byte
	}{
		{NewTensor("f", []int64{1}, []float32{1}), []byte{0, 0, 0x80, 0x3f}},
		{NewTensor("d", []int64{1}, []float64{-2}), []byte{0, 0, 0, 0, 0, 0, 0, 0xc0}},
		{NewTensor("i", []int64{2}, []int32{1, -1}), []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}},
		{NewTensor("l", []int64{1}, []int64{258}), []byte{2, 1, 0, 0, 0, 0, 0, 0}},
		{NewTensor("b", []int64{3}, []bool{true, false, true}), []byte{1, 0, 1}},
		{Tensor{Name: "s", Shape: []int64{2}, Datatype: "BYTES", Data: []string{"ab", ""}},
			[]byte{2, 0, 0, 0, 'a', 'b', 0, 0, 0, 0}},
	}
	for _, c := range cases {
		raw, err := EncodeRaw(c.t)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, c.want) {
			t.Errorf("%s: raw %v, want %v", c.t.Name, raw, c.want)
		}
	}
}

func wantInvalid(t *testing.T, err error, message string) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("error %v: code %v, want INVALID_ARGUMENT", err, status.Code(err))
	}
	if got := status.Convert(err).Message(); got != message {
		t.Errorf("message %q, want %q", got, message)
	}
}

func TestBadTensors(t *testing.T) {
	_, err := EncodeRaw(NewTensor("x", []int64{2, 3}, []float32{1, 2}))
	wantInvalid(t, err, "tensor 'x': shape [2 3] needs 6 values, data has 2")
	_, err = EncodeRaw(Tensor{Name: "x", Shape: []int64{1}, Datatype: "FP32", Data: []float64{1}})
	wantInvalid(t, err, "tensor 'x': datatype FP32 cannot hold data of type []float64")
	_, err = EncodeRaw(Tensor{Name: "x", Shape: []int64{1}, Datatype: "FP8", Data: []float64{1}})
	wantInvalid(t, err, `tensor 'x': unknown datatype "FP8"`)
	_, err = DecodeRaw("y", "FP64", []int64{2}, make([]byte, 12))
	wantInvalid(t, err, "tensor 'y': raw contents are 12 bytes; shape [2] x FP64 needs 16")
	_, err = DecodeRaw("s", "BYTES", []int64{1}, []byte{9, 0, 0, 0, 'a'})
	wantInvalid(t, err, "tensor 's': raw BYTES element 0 claims 9 bytes; only 1 remain")
	_, err = DecodeRaw("s", "BYTES", []int64{2}, []byte{1, 0, 0, 0, 'a'})
	wantInvalid(t, err, "tensor 's': raw BYTES contents hold 1 elements; shape needs 2")
	_, err = Matrix("m", [][]float32{{1, 2}, {3}})
	wantInvalid(t, err, "tensor 'm': row 1 has 1 values; row 0 has 2")
}

func TestMatrixAndRows(t *testing.T) {
	m, err := Matrix("x", [][]float32{{1, 2, 3}, {4, 5, 6}})
	if err != nil {
		t.Fatal(err)
	}
	if m.Datatype != "FP32" || !reflect.DeepEqual(m.Shape, []int64{2, 3}) {
		t.Fatalf("matrix %+v", m)
	}
	rows, err := Rows[float32](m)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rows, [][]float32{{1, 2, 3}, {4, 5, 6}}) {
		t.Errorf("rows %v", rows)
	}
	if _, err := Rows[float64](m); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Rows of the wrong type: %v", err)
	}
}

func TestHalfPrecision(t *testing.T) {
	// Every half value survives half -> float32 -> half (NaNs stay NaN).
	for h := 0; h < 1<<16; h++ {
		f := HalfToFloat32(uint16(h))
		back := Float32ToHalf(f)
		if math.IsNaN(float64(f)) {
			if back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("%#04x: NaN came back as %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("%#04x -> %v -> %#04x", h, f, back)
		}
	}
	cases := map[float32]uint16{
		1: 0x3c00, -2: 0xc000, 65504: 0x7bff, 65520: 0x7c00, 1e-8: 0,
		5.960464477539063e-08: 0x0001, // the smallest subnormal
		1.0009765625:          0x3c01,
		1.00048828125:         0x3c00, // halfway: ties to even
		1.00146484375:         0x3c02, // halfway: ties to even
	}
	for f, want := range cases {
		if got := Float32ToHalf(f); got != want {
			t.Errorf("Float32ToHalf(%v) = %#04x, want %#04x", f, got, want)
		}
	}
}
