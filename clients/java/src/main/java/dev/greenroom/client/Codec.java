package dev.greenroom.client;

import com.google.protobuf.ByteString;
import dev.greenroom.inference.InferTensorContents;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** Tensors to and from raw contents (little-endian bytes) and typed contents fields. */
final class Codec {
  private Codec() {}

  static byte[] encodeRaw(Tensor t) {
    Object data = t.data();
    if (t.datatype() == Datatype.BYTES) {
      byte[][] elements = (byte[][]) data;
      int size = 0;
      for (byte[] e : elements) {
        size = Math.addExact(size, 4 + e.length);
      }
      ByteBuffer out = ByteBuffer.allocate(size).order(ByteOrder.LITTLE_ENDIAN);
      for (byte[] e : elements) {
        out.putInt(e.length).put(e);
      }
      return out.array();
    }
    ByteBuffer out =
        ByteBuffer.allocate(t.size() * t.datatype().itemSize()).order(ByteOrder.LITTLE_ENDIAN);
    switch (t.datatype()) {
      case BOOL -> {
        for (boolean b : (boolean[]) data) {
          out.put((byte) (b ? 1 : 0));
        }
      }
      case INT8, UINT8 -> out.put((byte[]) data);
      case INT16, UINT16, FP16 -> out.asShortBuffer().put((short[]) data);
      case INT32, UINT32 -> out.asIntBuffer().put((int[]) data);
      case INT64, UINT64 -> out.asLongBuffer().put((long[]) data);
      case FP32 -> out.asFloatBuffer().put((float[]) data);
      case FP64 -> out.asDoubleBuffer().put((double[]) data);
      default -> throw new AssertionError(t.datatype());
    }
    return out.array();
  }

  static Tensor decodeRaw(String name, Datatype datatype, long[] shape, ByteBuffer raw) {
    int n = Tensor.elements(name, shape);
    ByteBuffer in = raw.slice().order(ByteOrder.LITTLE_ENDIAN);
    if (datatype == Datatype.BYTES) {
      return Tensor.trusted(name, datatype, shape.clone(), splitBytes(name, in, n));
    }
    long want = (long) n * datatype.itemSize();
    if (in.remaining() != want) {
      throw Tensor.invalid(
          name,
          "raw contents are %d bytes; shape %s x %s needs %d",
          in.remaining(),
          Arrays.toString(shape),
          datatype,
          want);
    }
    Object data =
        switch (datatype) {
          case BOOL -> {
            boolean[] v = new boolean[n];
            for (int i = 0; i < n; i++) {
              v[i] = in.get(i) != 0;
            }
            yield v;
          }
          case INT8, UINT8 -> {
            byte[] v = new byte[n];
            in.get(v);
            yield v;
          }
          case INT16, UINT16, FP16 -> {
            short[] v = new short[n];
            in.asShortBuffer().get(v);
            yield v;
          }
          case INT32, UINT32 -> {
            int[] v = new int[n];
            in.asIntBuffer().get(v);
            yield v;
          }
          case INT64, UINT64 -> {
            long[] v = new long[n];
            in.asLongBuffer().get(v);
            yield v;
          }
          case FP32 -> {
            float[] v = new float[n];
            in.asFloatBuffer().get(v);
            yield v;
          }
          case FP64 -> {
            double[] v = new double[n];
            in.asDoubleBuffer().get(v);
            yield v;
          }
          default -> throw new AssertionError(datatype);
        };
    return Tensor.trusted(name, datatype, shape.clone(), data);
  }

  private static byte[][] splitBytes(String name, ByteBuffer in, int n) {
    List<byte[]> out = new ArrayList<>(n);
    while (in.hasRemaining()) {
      if (in.remaining() < 4) {
        throw Tensor.invalid(name, "raw BYTES contents end inside a 4-byte length prefix");
      }
      long size = Integer.toUnsignedLong(in.getInt());
      if (size > in.remaining()) {
        throw Tensor.invalid(
            name,
            "raw BYTES element %d claims %d bytes; only %d remain",
            out.size(),
            size,
            in.remaining());
      }
      byte[] element = new byte[(int) size];
      in.get(element);
      out.add(element);
    }
    if (out.size() != n) {
      throw Tensor.invalid(
          name, "raw BYTES contents hold %d elements; shape needs %d", out.size(), n);
    }
    return out.toArray(new byte[0][]);
  }

  static InferTensorContents encodeTyped(Tensor t) {
    InferTensorContents.Builder c = InferTensorContents.newBuilder();
    Object data = t.data();
    switch (t.datatype()) {
      case BOOL -> {
        for (boolean b : (boolean[]) data) {
          c.addBoolContents(b);
        }
      }
      case INT8 -> {
        for (byte v : (byte[]) data) {
          c.addIntContents(v);
        }
      }
      case INT16 -> {
        for (short v : (short[]) data) {
          c.addIntContents(v);
        }
      }
      case INT32 -> {
        for (int v : (int[]) data) {
          c.addIntContents(v);
        }
      }
      case INT64 -> {
        for (long v : (long[]) data) {
          c.addInt64Contents(v);
        }
      }
      case UINT8 -> {
        for (byte v : (byte[]) data) {
          c.addUintContents(Byte.toUnsignedInt(v));
        }
      }
      case UINT16 -> {
        for (short v : (short[]) data) {
          c.addUintContents(Short.toUnsignedInt(v));
        }
      }
      case UINT32 -> {
        for (int v : (int[]) data) {
          c.addUintContents(v);
        }
      }
      case UINT64 -> {
        for (long v : (long[]) data) {
          c.addUint64Contents(v);
        }
      }
      case FP32 -> {
        for (float v : (float[]) data) {
          c.addFp32Contents(v);
        }
      }
      case FP64 -> {
        for (double v : (double[]) data) {
          c.addFp64Contents(v);
        }
      }
      case BYTES -> {
        for (byte[] v : (byte[][]) data) {
          c.addBytesContents(ByteString.copyFrom(v));
        }
      }
      case FP16 -> throw Tensor.invalid(t.name(), "FP16 has no typed contents; send it raw");
      default -> throw new AssertionError(t.datatype());
    }
    return c.build();
  }

  static Tensor decodeTyped(String name, Datatype datatype, long[] shape, InferTensorContents c) {
    Object data =
        switch (datatype) {
          case BOOL -> {
            boolean[] v = new boolean[c.getBoolContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getBoolContents(i);
            }
            yield v;
          }
          case INT8 -> {
            byte[] v = new byte[c.getIntContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = (byte) c.getIntContents(i);
            }
            yield v;
          }
          case INT16 -> {
            short[] v = new short[c.getIntContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = (short) c.getIntContents(i);
            }
            yield v;
          }
          case INT32 -> {
            int[] v = new int[c.getIntContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getIntContents(i);
            }
            yield v;
          }
          case INT64 -> {
            long[] v = new long[c.getInt64ContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getInt64Contents(i);
            }
            yield v;
          }
          case UINT8 -> {
            byte[] v = new byte[c.getUintContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = (byte) c.getUintContents(i);
            }
            yield v;
          }
          case UINT16 -> {
            short[] v = new short[c.getUintContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = (short) c.getUintContents(i);
            }
            yield v;
          }
          case UINT32 -> {
            int[] v = new int[c.getUintContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getUintContents(i);
            }
            yield v;
          }
          case UINT64 -> {
            long[] v = new long[c.getUint64ContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getUint64Contents(i);
            }
            yield v;
          }
          case FP32 -> {
            float[] v = new float[c.getFp32ContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getFp32Contents(i);
            }
            yield v;
          }
          case FP64 -> {
            double[] v = new double[c.getFp64ContentsCount()];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getFp64Contents(i);
            }
            yield v;
          }
          case BYTES -> {
            byte[][] v = new byte[c.getBytesContentsCount()][];
            for (int i = 0; i < v.length; i++) {
              v[i] = c.getBytesContents(i).toByteArray();
            }
            yield v;
          }
          case FP16 -> throw Tensor.invalid(name, "FP16 has no typed contents");
        };
    return Tensor.of(name, datatype, shape, data);
  }
}
