package dev.greenroom.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.greenroom.inference.InferTensorContents;
import io.grpc.Status;
import java.util.HexFormat;
import java.util.List;
import org.junit.jupiter.api.Test;

class TensorTest {
  private static final long[] TWO = {2};

  static List<Tensor> everyDatatype() {
    return List.of(
        Tensor.of("b", TWO, new boolean[] {true, false}),
        Tensor.of("i8", Datatype.INT8, TWO, new byte[] {-128, 127}),
        Tensor.of("i16", Datatype.INT16, TWO, new short[] {-32768, 32767}),
        Tensor.of("i32", TWO, new int[] {Integer.MIN_VALUE, 7}),
        Tensor.of("i64", TWO, new long[] {Long.MIN_VALUE, 9007199254740993L}),
        Tensor.of("u8", Datatype.UINT8, TWO, new byte[] {0, (byte) 255}),
        Tensor.of("u16", Datatype.UINT16, TWO, new short[] {1, (short) 65535}),
        Tensor.of("u32", Datatype.UINT32, TWO, new int[] {1, -1}),
        Tensor.of("u64", Datatype.UINT64, TWO, new long[] {1, -1}),
        Tensor.of(
            "f16", Datatype.FP16, TWO, new short[] {Half.fromFloat(1.5f), Half.fromFloat(-2f)}),
        Tensor.of("f32", TWO, new float[] {0.1f, Float.NaN}),
        Tensor.of("f64", TWO, new double[] {0.1, Double.NEGATIVE_INFINITY}),
        Tensor.of("s", new long[] {1, 2}, "héllo", ""));
  }

  static void assertSame(Tensor want, Tensor got) {
    assertEquals(want.name(), got.name());
    assertEquals(want.datatype(), got.datatype());
    assertArrayEquals(want.shape(), got.shape());
    Object w = want.data();
    Object g = got.data();
    switch (want.datatype()) {
      case BOOL -> assertArrayEquals((boolean[]) w, (boolean[]) g);
      case INT8, UINT8 -> assertArrayEquals((byte[]) w, (byte[]) g);
      case INT16, UINT16, FP16 -> assertArrayEquals((short[]) w, (short[]) g);
      case INT32, UINT32 -> assertArrayEquals((int[]) w, (int[]) g);
      case INT64, UINT64 -> assertArrayEquals((long[]) w, (long[]) g);
      case FP32 -> assertArrayEquals((float[]) w, (float[]) g);
      case FP64 -> assertArrayEquals((double[]) w, (double[]) g);
      case BYTES -> assertArrayEquals((byte[][]) w, (byte[][]) g);
    }
  }

  @Test
  void rawAndTypedRoundTrips() {
    for (Tensor t : everyDatatype()) {
      assertSame(t, Tensor.fromRaw(t.name(), t.datatype(), t.shape(), t.toRaw()));
      if (t.datatype() != Datatype.FP16) {
        assertSame(t, Tensor.fromContents(t.name(), t.datatype(), t.shape(), t.toContents()));
      }
    }
  }

  @Test
  void rawIsLittleEndianRowMajor() {
    HexFormat hex = HexFormat.of();
    assertEquals(
        "0000803f00000040" + "0000404000008040",
        hex.formatHex(Tensor.matrix("x", new float[][] {{1, 2}, {3, 4}}).toRaw()));
    assertEquals(
        "0100000000000000feffffffffffffff",
        hex.formatHex(Tensor.of("x", TWO, new long[] {1, -2}).toRaw()));
    assertEquals("0100", hex.formatHex(Tensor.of("x", TWO, new boolean[] {true, false}).toRaw()));
    assertEquals(
        "0200000068690000000003000000e282ac",
        hex.formatHex(Tensor.of("x", new long[] {3}, "hi", "", "€").toRaw()));
    assertEquals(
        "003c",
        hex.formatHex(
            Tensor.of("x", Datatype.FP16, new long[] {1}, new short[] {Half.fromFloat(1f)})
                .toRaw()));
  }

  @Test
  void typedContentsUseTheDatatypesField() {
    InferTensorContents u8 =
        Tensor.of("x", Datatype.UINT8, TWO, new byte[] {1, (byte) 200}).toContents();
    assertEquals(List.of(1, 200), u8.getUintContentsList());
    InferTensorContents i16 = Tensor.of("x", Datatype.INT16, TWO, new short[] {-1, 2}).toContents();
    assertEquals(List.of(-1, 2), i16.getIntContentsList());
    InferTensorContents f64 = Tensor.of("x", TWO, new double[] {0.5, 2}).toContents();
    assertEquals(List.of(0.5, 2.0), f64.getFp64ContentsList());
  }

  private static void assertInvalid(String message, Runnable call) {
    GreenroomException e = assertThrows(GreenroomException.class, call::run);
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    assertEquals(message, e.description());
  }

  @Test
  void badTensorsAreInvalidArgument() {
    assertInvalid(
        "tensor 'x': shape [3] needs 3 values, data has 2",
        () -> Tensor.of("x", new long[] {3}, new float[] {1, 2}));
    assertInvalid(
        "tensor 'x': datatype FP64 holds double[], not float[]",
        () -> Tensor.of("x", Datatype.FP64, TWO, new float[] {1, 2}));
    assertInvalid(
        "tensor 'x': shape [-1, 2] has a negative dimension",
        () -> Tensor.of("x", new long[] {-1, 2}, new float[] {1, 2}));
    assertInvalid(
        "tensor 'x': row 1 has 1 values; row 0 has 2",
        () -> Tensor.matrix("x", new double[][] {{1, 2}, {3}}));
    assertInvalid(
        "tensor 'h': FP16 has no typed contents; send it raw",
        () -> Tensor.of("h", Datatype.FP16, new long[] {1}, new short[] {0}).toContents());
    assertInvalid(
        "tensor 'x': raw contents are 3 bytes; shape [1] x FP32 needs 4",
        () -> Tensor.fromRaw("x", Datatype.FP32, new long[] {1}, new byte[3]));
    assertInvalid(
        "tensor 's': raw BYTES element 0 claims 9 bytes; only 1 remain",
        () -> Tensor.fromRaw("s", Datatype.BYTES, new long[] {1}, new byte[] {9, 0, 0, 0, 'a'}));
    assertInvalid(
        "tensor 's': raw BYTES contents hold 1 elements; shape needs 2",
        () -> Tensor.fromRaw("s", Datatype.BYTES, TWO, new byte[] {1, 0, 0, 0, 'a'}));
    assertInvalid(
        "tensor 'x': holds FP32, not FP64",
        () -> Tensor.of("x", TWO, new float[] {1, 2}).doubles());
    assertInvalid("unknown datatype \"FP9\"", () -> Datatype.parse("FP9"));
  }

  @Test
  void matrixAndRows() {
    Tensor t = Tensor.matrix("x", new long[][] {{1, 2, 3}, {4, 5, 6}});
    assertEquals(Datatype.INT64, t.datatype());
    assertArrayEquals(new long[] {2, 3}, t.shape());
    assertArrayEquals(new long[] {1, 2, 3, 4, 5, 6}, t.longs());
    assertArrayEquals(new long[][] {{1, 2, 3}, {4, 5, 6}}, t.longRows());
    Tensor f = Tensor.matrix("f", new float[][] {{1.5f}, {2.5f}});
    assertArrayEquals(new float[][] {{1.5f}, {2.5f}}, f.floatRows());
    Tensor empty = Tensor.matrix("e", new double[0][]);
    assertArrayEquals(new long[] {0, 0}, empty.shape());
    assertEquals(0, empty.doubleRows().length);
    assertInvalid(
        "tensor 'v': has shape [2]; rows need 2 dimensions",
        () -> Tensor.of("v", TWO, new int[] {1, 2}).intRows());
  }

  @Test
  void halfPrecision() {
    assertEquals((short) 0x3c00, Half.fromFloat(1f));
    assertEquals((short) 0xc000, Half.fromFloat(-2f));
    assertEquals((short) 0x7bff, Half.fromFloat(65504f));
    assertEquals((short) 0x7c00, Half.fromFloat(65520f)); // rounds up to infinity
    assertEquals((short) 0x0001, Half.fromFloat(5.9604645e-8f)); // the smallest subnormal
    assertEquals((short) 0x3c00, Half.fromFloat(1.00048828125f)); // a tie: to even
    assertEquals((short) 0x3c02, Half.fromFloat(1.00146484375f)); // a tie: to even, up
    assertEquals((short) 0x7e00, Half.fromFloat(Float.NaN));
    assertEquals(65504f, Half.toFloat((short) 0x7bff));
    assertEquals(5.9604645e-8f, Half.toFloat((short) 0x0001));
    assertEquals(Float.NEGATIVE_INFINITY, Half.toFloat((short) 0xfc00));
    for (int bits = 0; bits < 0x10000; bits++) { // every half that is a number reads back
      short h = (short) bits;
      if (!Float.isNaN(Half.toFloat(h))) {
        assertEquals(h, Half.fromFloat(Half.toFloat(h)), Integer.toHexString(bits));
      }
    }
  }
}
