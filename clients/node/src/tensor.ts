/**
 * Tensors of the Open Inference Protocol (V2) and their two wire forms.
 *
 * A tensor's data is flat and row-major, held in the JavaScript type that fits its
 * datatype (`Float32Array` for FP32, `BigInt64Array` for INT64, `Buffer[]` for BYTES...).
 * On the wire it is either raw (`raw_input_contents` / `raw_output_contents`: little-endian
 * bytes, BYTES elements each a 4-byte little-endian length then the bytes, BOOL one byte)
 * or typed (`InferTensorContents`, one repeated field per datatype; FP16 has none).
 */
import { endianness } from "node:os";

import type { InferTensorContents, InferTensorContents__Output } from "./generated/inference/InferTensorContents";

/** The JavaScript type of a tensor's flat data, per V2 datatype. FP16 holds IEEE half bits. */
export interface DataByType {
  BOOL: boolean[];
  UINT8: Uint8Array;
  UINT16: Uint16Array;
  UINT32: Uint32Array;
  UINT64: BigUint64Array;
  INT8: Int8Array;
  INT16: Int16Array;
  INT32: Int32Array;
  INT64: BigInt64Array;
  FP16: Uint16Array;
  FP32: Float32Array;
  FP64: Float64Array;
  BYTES: Buffer[];
}

export type Datatype = keyof DataByType;

/** One tensor whose `data` type follows its `datatype` (a discriminated union). */
export type TensorOf<D extends Datatype> = {
  name: string;
  datatype: D;
  shape: number[];
  data: DataByType[D];
};

export type Tensor = { [D in Datatype]: TensorOf<D> }[Datatype];

type NumericArray =
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | Int8Array
  | Int16Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array;

const TYPED_ARRAYS = {
  UINT8: Uint8Array,
  UINT16: Uint16Array,
  UINT32: Uint32Array,
  UINT64: BigUint64Array,
  INT8: Int8Array,
  INT16: Int16Array,
  INT32: Int32Array,
  INT64: BigInt64Array,
  FP16: Uint16Array,
  FP32: Float32Array,
  FP64: Float64Array,
} as const;

export const DATATYPES: readonly Datatype[] = [
  "BOOL",
  "UINT8",
  "UINT16",
  "UINT32",
  "UINT64",
  "INT8",
  "INT16",
  "INT32",
  "INT64",
  "FP16",
  "FP32",
  "FP64",
  "BYTES",
];

export function isDatatype(value: string): value is Datatype {
  return (DATATYPES as readonly string[]).includes(value);
}

const LITTLE_ENDIAN = endianness() === "LE";

/** Number of elements a shape holds (1 for a scalar's empty shape). */
export function elementCount(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new RangeError(`shape ${JSON.stringify(shape)}: dimensions must be integers >= 0`);
    }
    count *= dim;
  }
  return count;
}

/** Throws a RangeError unless the tensor's data holds exactly the elements its shape says. */
export function checkTensor(tensor: Tensor): void {
  const expected = elementCount(tensor.shape);
  if (tensor.data.length !== expected) {
    throw new RangeError(
      `input '${tensor.name}': shape ${JSON.stringify(tensor.shape)} holds ${expected} ` +
        `elements but data has ${tensor.data.length}`,
    );
  }
}

// ---------------------------------------------------------------------------------------
// Building tensors

function toBigInts<A extends BigInt64Array | BigUint64Array>(
  Ctor: { from(values: Iterable<bigint>): A },
  values: ArrayLike<number | bigint | string>,
  what: string,
): A {
  return Ctor.from(
    Array.from(values, (v) => {
      if (typeof v === "bigint") return v;
      if (typeof v === "number" && Number.isInteger(v)) return BigInt(v);
      if (typeof v === "string" && /^-?\d+$/.test(v)) return BigInt(v);
      throw new TypeError(`${what}: ${String(v)} is not an integer`);
    }),
  );
}

function toNumbers(values: ArrayLike<unknown>, what: string): number[] {
  return Array.from(values, (v) => {
    if (typeof v !== "number") throw new TypeError(`${what}: ${JSON.stringify(v)} is not a number`);
    return v;
  });
}

/**
 * A tensor from plain values: numbers (or bigints / digit strings for the 64-bit integers),
 * booleans for BOOL, strings (UTF-8) or byte arrays for BYTES, numbers for FP16.
 */
export function makeTensor(name: string, datatype: Datatype, shape: readonly number[], values: ArrayLike<unknown>): Tensor {
  const what = `tensor '${name}' (${datatype})`;
  const dims = [...shape];
  let tensor: Tensor;
  switch (datatype) {
    case "BOOL":
      tensor = {
        name,
        datatype,
        shape: dims,
        data: Array.from(values, (v) => {
          if (typeof v === "boolean") return v;
          if (v === 0 || v === 1) return v === 1;
          throw new TypeError(`${what}: ${JSON.stringify(v)} is not a boolean`);
        }),
      };
      break;
    case "BYTES":
      tensor = {
        name,
        datatype,
        shape: dims,
        data: Array.from(values, (v) => {
          if (typeof v === "string") return Buffer.from(v, "utf8");
          if (v instanceof Uint8Array) return Buffer.from(v);
          throw new TypeError(`${what}: ${JSON.stringify(v)} is neither a string nor bytes`);
        }),
      };
      break;
    case "INT64":
      tensor = { name, datatype, shape: dims, data: toBigInts(BigInt64Array, values as ArrayLike<number | bigint | string>, what) };
      break;
    case "UINT64":
      tensor = { name, datatype, shape: dims, data: toBigInts(BigUint64Array, values as ArrayLike<number | bigint | string>, what) };
      break;
    case "FP16":
      tensor = { name, datatype, shape: dims, data: Uint16Array.from(toNumbers(values, what), toHalf) };
      break;
    default: {
      const numbers = toNumbers(values, what);
      if (datatype !== "FP32" && datatype !== "FP64" && !numbers.every(Number.isInteger)) {
        throw new TypeError(`${what}: values must be integers`);
      }
      tensor = { name, datatype, shape: dims, data: TYPED_ARRAYS[datatype].from(numbers) } as Tensor;
    }
  }
  checkTensor(tensor);
  return tensor;
}

export function fp32(name: string, shape: readonly number[], values: ArrayLike<number>): TensorOf<"FP32"> {
  return makeTensor(name, "FP32", shape, values) as TensorOf<"FP32">;
}

export function fp64(name: string, shape: readonly number[], values: ArrayLike<number>): TensorOf<"FP64"> {
  return makeTensor(name, "FP64", shape, values) as TensorOf<"FP64">;
}

export function int32(name: string, shape: readonly number[], values: ArrayLike<number>): TensorOf<"INT32"> {
  return makeTensor(name, "INT32", shape, values) as TensorOf<"INT32">;
}

export function int64(name: string, shape: readonly number[], values: ArrayLike<number | bigint>): TensorOf<"INT64"> {
  return makeTensor(name, "INT64", shape, values) as TensorOf<"INT64">;
}

export function bool(name: string, shape: readonly number[], values: ArrayLike<boolean>): TensorOf<"BOOL"> {
  return makeTensor(name, "BOOL", shape, values) as TensorOf<"BOOL">;
}

export function bytes(name: string, shape: readonly number[], values: ArrayLike<string | Uint8Array>): TensorOf<"BYTES"> {
  return makeTensor(name, "BYTES", shape, values) as TensorOf<"BYTES">;
}

/** A typed 2-D FP32 tensor `[rows.length, columns]` from rows of numbers. */
export function float32Matrix(name: string, rows: readonly (readonly number[])[]): TensorOf<"FP32"> {
  const columns = rows.length > 0 ? rows[0]!.length : 0;
  const data = new Float32Array(rows.length * columns);
  rows.forEach((row, i) => {
    if (row.length !== columns) {
      throw new RangeError(`tensor '${name}': row ${i} has ${row.length} values, row 0 has ${columns}`);
    }
    data.set(row, i * columns);
  });
  return { name, datatype: "FP32", shape: [rows.length, columns], data };
}

/** Plain JavaScript values of a tensor's data: numbers, bigints, booleans or Buffers. */
export function values(tensor: Tensor): (number | bigint | boolean | Buffer)[] {
  if (tensor.datatype === "FP16") return Array.from(tensor.data, fromHalf);
  return Array.from(tensor.data as ArrayLike<number | bigint | boolean | Buffer>);
}

/** The rows of a 2-D numeric tensor (or a 1-D one as a single column), as numbers. */
export function toMatrix(tensor: Tensor): number[][] {
  if (tensor.datatype === "BYTES" || tensor.datatype === "BOOL") {
    throw new TypeError(`tensor '${tensor.name}' is ${tensor.datatype}, not numeric`);
  }
  const [rows, columns = 1, ...rest] = tensor.shape;
  if (rows === undefined || rest.length > 0) {
    throw new RangeError(`tensor '${tensor.name}' has shape ${JSON.stringify(tensor.shape)}, not 1-D or 2-D`);
  }
  const flat = values(tensor).map(Number);
  return Array.from({ length: rows }, (_, i) => flat.slice(i * columns, (i + 1) * columns));
}

// ---------------------------------------------------------------------------------------
// FP16

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE 754 half-precision bits of a number, rounded to nearest even. */
export function toHalf(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // inf, NaN
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow to infinity
  if (e <= 0) {
    if (e < -10) return sign; // underflow to zero
    mantissa |= 0x800000;
    const shift = 14 - e;
    let half = mantissa >>> shift;
    const remainder = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (remainder > halfway || (remainder === halfway && (half & 1))) half += 1;
    return sign | half;
  }
  let half = (e << 10) | (mantissa >>> 13);
  const remainder = mantissa & 0x1fff;
  if (remainder > 0x1000 || (remainder === 0x1000 && (half & 1))) half += 1; // may carry into exponent: correct
  return sign | half;
}

/** The number that IEEE 754 half-precision bits stand for. */
export function fromHalf(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

// ---------------------------------------------------------------------------------------
// Raw form

function littleEndian(view: NumericArray): Buffer {
  const buffer = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
  if (LITTLE_ENDIAN || view.BYTES_PER_ELEMENT === 1) return buffer;
  const copy = Buffer.from(buffer);
  if (view.BYTES_PER_ELEMENT === 2) return copy.swap16();
  if (view.BYTES_PER_ELEMENT === 4) return copy.swap32();
  return copy.swap64();
}

/** A tensor's data as one raw entry: little-endian, row-major. */
export function encodeRaw(tensor: Tensor): Buffer {
  switch (tensor.datatype) {
    case "BOOL":
      return Buffer.from(tensor.data.map((b) => (b ? 1 : 0)));
    case "BYTES": {
      const parts: Buffer[] = [];
      for (const element of tensor.data) {
        const length = Buffer.alloc(4);
        length.writeUInt32LE(element.length);
        parts.push(length, element);
      }
      return Buffer.concat(parts);
    }
    default:
      return littleEndian(tensor.data);
  }
}

function splitBytes(raw: Buffer, count: number, where: string): Buffer[] {
  const elements: Buffer[] = [];
  let offset = 0;
  while (offset < raw.length) {
    if (offset + 4 > raw.length) throw new RangeError(`${where}: truncated BYTES length prefix`);
    const length = raw.readUInt32LE(offset);
    offset += 4;
    if (offset + length > raw.length) throw new RangeError(`${where}: BYTES element overruns the data`);
    elements.push(Buffer.from(raw.subarray(offset, offset + length)));
    offset += length;
  }
  if (elements.length !== count) {
    throw new RangeError(`${where}: ${elements.length} BYTES elements, shape says ${count}`);
  }
  return elements;
}

/** Decodes one raw entry into a tensor of the given datatype and shape. */
export function decodeRaw(name: string, datatype: Datatype, shape: number[], raw: Buffer): Tensor {
  const where = `output '${name}'`;
  const count = elementCount(shape);
  if (datatype === "BYTES") return { name, datatype, shape, data: splitBytes(raw, count, where) };
  if (datatype === "BOOL") {
    if (raw.length !== count) throw new RangeError(`${where}: ${raw.length} bytes for ${count} BOOL elements`);
    return { name, datatype, shape, data: Array.from(raw, (b) => b !== 0) };
  }
  const Ctor = TYPED_ARRAYS[datatype];
  if (raw.length !== count * Ctor.BYTES_PER_ELEMENT) {
    throw new RangeError(`${where}: ${raw.length} bytes for ${count} ${datatype} elements`);
  }
  // Copy: the received slice need not be aligned to the element size.
  const copy = Buffer.alloc(raw.length);
  raw.copy(copy);
  if (!LITTLE_ENDIAN) {
    if (Ctor.BYTES_PER_ELEMENT === 2) copy.swap16();
    else if (Ctor.BYTES_PER_ELEMENT === 4) copy.swap32();
    else if (Ctor.BYTES_PER_ELEMENT === 8) copy.swap64();
  }
  const data = new Ctor(copy.buffer, copy.byteOffset, count);
  return { name, datatype, shape, data } as Tensor;
}

// ---------------------------------------------------------------------------------------
// Typed form

/** A tensor's data as `InferTensorContents`; FP16 has no typed field and throws. */
export function encodeTyped(tensor: Tensor): InferTensorContents {
  switch (tensor.datatype) {
    case "BOOL":
      return { bool_contents: tensor.data };
    case "BYTES":
      return { bytes_contents: tensor.data };
    case "INT8":
    case "INT16":
    case "INT32":
      return { int_contents: Array.from(tensor.data) };
    case "UINT8":
    case "UINT16":
    case "UINT32":
      return { uint_contents: Array.from(tensor.data) };
    case "INT64":
      return { int64_contents: Array.from(tensor.data, String) };
    case "UINT64":
      return { uint64_contents: Array.from(tensor.data, String) };
    case "FP32":
      return { fp32_contents: Array.from(tensor.data) };
    case "FP64":
      return { fp64_contents: Array.from(tensor.data) };
    case "FP16":
      throw new TypeError(`input '${tensor.name}': FP16 has no typed contents field; send it raw`);
  }
}

/** Decodes typed contents into a tensor of the given datatype and shape. */
export function decodeTyped(name: string, datatype: Datatype, shape: number[], contents: InferTensorContents__Output | null): Tensor {
  const c: InferTensorContents__Output = contents ?? {
    bool_contents: [],
    int_contents: [],
    int64_contents: [],
    uint_contents: [],
    uint64_contents: [],
    fp32_contents: [],
    fp64_contents: [],
    bytes_contents: [],
  };
  let tensor: Tensor;
  switch (datatype) {
    case "BOOL":
      tensor = { name, datatype, shape, data: [...c.bool_contents] };
      break;
    case "BYTES":
      tensor = { name, datatype, shape, data: c.bytes_contents.map((b) => Buffer.from(b)) };
      break;
    case "INT8":
    case "INT16":
    case "INT32":
      tensor = { name, datatype, shape, data: TYPED_ARRAYS[datatype].from(c.int_contents) } as Tensor;
      break;
    case "UINT8":
    case "UINT16":
    case "UINT32":
      tensor = { name, datatype, shape, data: TYPED_ARRAYS[datatype].from(c.uint_contents) } as Tensor;
      break;
    case "INT64":
      tensor = { name, datatype, shape, data: BigInt64Array.from(c.int64_contents, BigInt) };
      break;
    case "UINT64":
      tensor = { name, datatype, shape, data: BigUint64Array.from(c.uint64_contents, BigInt) };
      break;
    case "FP32":
      tensor = { name, datatype, shape, data: Float32Array.from(c.fp32_contents) };
      break;
    case "FP64":
      tensor = { name, datatype, shape, data: Float64Array.from(c.fp64_contents) };
      break;
    case "FP16":
      throw new RangeError(`output '${name}': FP16 came typed, which the protocol cannot carry`);
  }
  const expected = elementCount(shape);
  if (tensor.data.length !== expected) {
    throw new RangeError(`output '${name}': ${tensor.data.length} ${datatype} elements, shape says ${expected}`);
  }
  return tensor;
}
