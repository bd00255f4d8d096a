import assert from "node:assert/strict";
import { test } from "node:test";

import { feedbackFromCsv } from "../csv";
import { requestFromRest, resultToRest, stringify } from "../rest";
import { InferResult } from "../client";
import {
  bool,
  bytes,
  decodeRaw,
  decodeTyped,
  encodeRaw,
  encodeTyped,
  float32Matrix,
  fp64,
  fromHalf,
  int32,
  int64,
  makeTensor,
  toHalf,
  toMatrix,
  DATATYPES,
  type Tensor,
} from "../tensor";

const SAMPLES: Record<string, unknown[]> = {
  BOOL: [true, false, true, true],
  UINT8: [0, 1, 254, 255],
  UINT16: [0, 1, 65534, 65535],
  UINT32: [0, 1, 2 ** 32 - 2, 2 ** 32 - 1],
  UINT64: [0n, 1n, 2n ** 64n - 2n, 2n ** 64n - 1n],
  INT8: [-128, -1, 0, 127],
  INT16: [-32768, -1, 0, 32767],
  INT32: [-(2 ** 31), -1, 0, 2 ** 31 - 1],
  INT64: [-(2n ** 63n), -1n, 9007199254740993n, 2n ** 63n - 1n],
  FP16: [0, -2.5, 65504, 0.0001],
  FP32: [0, -1.5, 3.4e38, 1e-7],
  FP64: [0, -1.5, Math.PI, 1e-300],
  BYTES: ["", "héllo", "a,b", "\u0000x"],
};

test("raw encoding round-trips every datatype", () => {
  for (const datatype of DATATYPES) {
    const tensor = makeTensor("t", datatype, [2, 2], SAMPLES[datatype]!);
    const back = decodeRaw("t", datatype, [2, 2], encodeRaw(tensor));
    assert.deepEqual(back, tensor, datatype);
  }
});

test("typed contents round-trip every datatype but FP16", () => {
  for (const datatype of DATATYPES.filter((d) => d !== "FP16")) {
    const tensor = makeTensor("t", datatype, [4], SAMPLES[datatype]!);
    const contents = { ...decodeTypedDefaults(), ...encodeTyped(tensor) };
    assert.deepEqual(decodeTyped("t", datatype, [4], contents as never), tensor, datatype);
  }
  assert.throws(() => encodeTyped(makeTensor("h", "FP16", [1], [1])), /FP16 has no typed contents/);
});

function decodeTypedDefaults(): Record<string, unknown[]> {
  return Object.fromEntries(
    ["bool", "int", "int64", "uint", "uint64", "fp32", "fp64", "bytes"].map((k) => [`${k}_contents`, []]),
  );
}

test("raw bytes are little-endian, BOOL one byte, BYTES length-prefixed", () => {
  assert.deepEqual([...encodeRaw(makeTensor("f", "FP32", [1], [1]))], [0, 0, 0x80, 0x3f]);
  assert.deepEqual([...encodeRaw(fp64("d", [1], [1]))], [0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
  assert.deepEqual([...encodeRaw(int32("i", [1], [-2]))], [0xfe, 0xff, 0xff, 0xff]);
  assert.deepEqual([...encodeRaw(int64("l", [1], [258n]))], [2, 1, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...encodeRaw(bool("b", [3], [true, false, true]))], [1, 0, 1]);
  assert.deepEqual([...encodeRaw(bytes("s", [2], ["ab", ""]))], [2, 0, 0, 0, 0x61, 0x62, 0, 0, 0, 0]);
});

test("raw decoding copes with unaligned slices and refuses wrong sizes", () => {
  const raw = Buffer.concat([Buffer.from([9]), encodeRaw(fp64("d", [2], [1.25, -3]))]).subarray(1);
  assert.deepEqual([...decodeRaw("d", "FP64", [2], raw).data], [1.25, -3]);
  assert.throws(() => decodeRaw("d", "FP64", [3], raw), /output 'd': 16 bytes for 3 FP64 elements/);
  assert.throws(() => decodeRaw("s", "BYTES", [2], Buffer.from([5, 0, 0, 0, 1])), /overruns/);
});

test("shape and data must agree", () => {
  assert.throws(() => makeTensor("x", "FP32", [2, 3], [1, 2]), /input 'x': shape \[2,3\] holds 6 elements but data has 2/);
  assert.throws(() => makeTensor("x", "INT32", [1], [1.5]), /integers/);
  assert.throws(() => makeTensor("x", "FP32", [-1], []), /dimensions must be integers >= 0/);
});

test("FP16 conversion", () => {
  assert.equal(toHalf(1), 0x3c00);
  assert.equal(toHalf(-2), 0xc000);
  assert.equal(toHalf(65504), 0x7bff);
  assert.equal(toHalf(1e6), 0x7c00);
  assert.equal(fromHalf(0x3555), 0.333251953125);
  assert.equal(fromHalf(toHalf(5.960464477539063e-8)), 5.960464477539063e-8); // smallest subnormal
  assert.ok(Number.isNaN(fromHalf(toHalf(NaN))));
});

test("float32Matrix and toMatrix", () => {
  const m = float32Matrix("x", [
    [1, 2],
    [3, 4],
    [5, 6],
  ]);
  assert.deepEqual(m.shape, [3, 2]);
  assert.deepEqual(toMatrix(m), [
    [1, 2],
    [3, 4],
    [5, 6],
  ]);
  assert.throws(() => float32Matrix("x", [[1, 2], [3]]), /row 1 has 1 values/);
});

test("REST request and response forms", () => {
  const request = requestFromRest({
    id: "r1",
    inputs: [{ name: "x", shape: [2, 2], datatype: "FP32", data: [[1, 2], [3, 4]] }],
  });
  assert.equal(request.id, "r1");
  assert.deepEqual(request.inputs[0]!.data, new Float32Array([1, 2, 3, 4]));
  assert.throws(() => requestFromRest({ inputs: [{ name: "x", shape: [1], datatype: "FP33", data: [1] }] }), /unknown datatype "FP33"/);

  const outputs: Tensor[] = [int64("label", [2], [9007199254740993n, 0n]), bytes("text", [1], ["é"])];
  const text = stringify(resultToRest(new InferResult("m", "1", "r1", outputs)));
  assert.equal(
    text,
    '{"model_name":"m","model_version":"1","id":"r1","outputs":[' +
      '{"name":"label","shape":[2],"datatype":"INT64","data":[9007199254740993,0]},' +
      '{"name":"text","shape":[1],"datatype":"BYTES","data":["é"]}]}',
  );
});

test("feedback CSV", () => {
  const text = 'request_id,row,label\r\nr1,0,setosa\n"r,2",3,"say ""hi"""\n\n';
  assert.deepEqual(feedbackFromCsv(text), [
    { requestId: "r1", row: 0, label: "setosa" },
    { requestId: "r,2", row: 3, label: 'say "hi"' },
  ]);
  assert.throws(() => feedbackFromCsv("id,row,label\nr1,0,a\n"), /header must name request_id,row,label/);
  assert.throws(() => feedbackFromCsv("request_id,row,label\nr1,x,a\n"), /line 2: row "x"/);
});
