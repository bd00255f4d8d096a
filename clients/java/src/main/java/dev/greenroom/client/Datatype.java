package dev.greenroom.client;

import java.util.Locale;

/**
 * The Open Inference Protocol's tensor datatypes, and the Java array that holds each one's values
 * in a {@link Tensor}.
 *
 * <p>Java has no unsigned integers: an unsigned tensor keeps its values' bits in the signed array
 * of the same width ({@code Byte.toUnsignedInt}, {@code Integer.toUnsignedLong} and {@code
 * Long.toUnsignedString} read them back). FP16 keeps IEEE 754 half-precision bits in a {@code
 * short[]} (see {@link Half}).
 */
public enum Datatype {
  /** {@code boolean[]}; one byte per element in raw contents. */
  BOOL(1, boolean[].class),
  /** {@code byte[]}. */
  INT8(1, byte[].class),
  /** {@code short[]}. */
  INT16(2, short[].class),
  /** {@code int[]}. */
  INT32(4, int[].class),
  /** {@code long[]}. */
  INT64(8, long[].class),
  /** {@code byte[]}, unsigned. */
  UINT8(1, byte[].class),
  /** {@code short[]}, unsigned. */
  UINT16(2, short[].class),
  /** {@code int[]}, unsigned. */
  UINT32(4, int[].class),
  /** {@code long[]}, unsigned. */
  UINT64(8, long[].class),
  /** {@code short[]} of half-precision bits. */
  FP16(2, short[].class),
  /** {@code float[]}. */
  FP32(4, float[].class),
  /** {@code double[]}. */
  FP64(8, double[].class),
  /** {@code byte[][]}: each element its own byte string. */
  BYTES(0, byte[][].class);

  private final int itemSize;
  private final Class<?> arrayType;

  Datatype(int itemSize, Class<?> arrayType) {
    this.itemSize = itemSize;
    this.arrayType = arrayType;
  }

  /** Bytes per element in raw contents; 0 for BYTES, whose elements carry their own length. */
  public int itemSize() {
    return itemSize;
  }

  /** The Java array type that holds this datatype's values. */
  public Class<?> arrayType() {
    return arrayType;
  }

  /** The datatype named {@code name} ("FP32", ...), or INVALID_ARGUMENT when there is none. */
  public static Datatype parse(String name) {
    try {
      return valueOf(name);
    } catch (IllegalArgumentException | NullPointerException e) {
      throw GreenroomException.invalid(String.format(Locale.ROOT, "unknown datatype \"%s\"", name));
    }
  }
}
