package dev.greenroom.client;

import dev.greenroom.inference.InferTensorContents;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Locale;

/**
 * One named input or output: a flat, row-major array of values, its shape and its datatype.
 *
 * <p>The array's type follows the datatype (see {@link Datatype}): {@code float[]} for FP32, {@code
 * double[]} for FP64, {@code long[]} for INT64 and so on. The factories check that the values fill
 * the shape; the accessors ({@link #floats()}, {@link #floatRows()}, ...) check that the tensor
 * holds what they read. Arrays are not copied, in or out: a tensor shares its array with whoever
 * made it or reads it.
 *
 * <pre>{@code
 * Tensor features = Tensor.matrix("input", new float[][] {{5.1f, 3.5f, 1.4f, 0.2f}});
 * long[] labels = result.output("label").orElseThrow().longs();
 * double[][] proba = result.output("probabilities").orElseThrow().doubleRows();
 * }</pre>
 */
public final class Tensor {
  private final String name;
  private final Datatype datatype;
  private final long[] shape;
  private final Object data;

  private Tensor(String name, Datatype datatype, long[] shape, Object data) {
    this.name = name;
    this.datatype = datatype;
    this.shape = shape;
    this.data = data;
  }

  /**
   * A tensor of any datatype: {@code data} must be the datatype's array ({@link
   * Datatype#arrayType()}) and fill {@code shape}. BYTES also takes a {@code String[]}, encoded as
   * UTF-8.
   *
   * @throws GreenroomException INVALID_ARGUMENT, naming the tensor and saying what is wrong
   */
  public static Tensor of(String name, Datatype datatype, long[] shape, Object data) {
    if (datatype == Datatype.BYTES && data instanceof String[] strings) {
      byte[][] bytes = new byte[strings.length][];
      for (int i = 0; i < strings.length; i++) {
        bytes[i] = strings[i].getBytes(StandardCharsets.UTF_8);
      }
      data = bytes;
    }
    if (data == null || !datatype.arrayType().isInstance(data)) {
      throw invalid(
          name,
          "datatype %s holds %s, not %s",
          datatype,
          datatype.arrayType().getSimpleName(),
          data == null ? "null" : data.getClass().getSimpleName());
    }
    long[] dims = shape.clone();
    int want = elements(name, dims);
    int have = java.lang.reflect.Array.getLength(data);
    if (have != want) {
      throw invalid(
          name, "shape %s needs %d values, data has %d", Arrays.toString(dims), want, have);
    }
    return new Tensor(name, datatype, dims, data);
  }

  /** An FP32 tensor. */
  public static Tensor of(String name, long[] shape, float[] data) {
    return of(name, Datatype.FP32, shape, data);
  }

  /** An FP64 tensor. */
  public static Tensor of(String name, long[] shape, double[] data) {
    return of(name, Datatype.FP64, shape, data);
  }

  /** An INT64 tensor. */
  public static Tensor of(String name, long[] shape, long[] data) {
    return of(name, Datatype.INT64, shape, data);
  }

  /** An INT32 tensor. */
  public static Tensor of(String name, long[] shape, int[] data) {
    return of(name, Datatype.INT32, shape, data);
  }

  /** A BOOL tensor. */
  public static Tensor of(String name, long[] shape, boolean[] data) {
    return of(name, Datatype.BOOL, shape, data);
  }

  /** A BYTES tensor of UTF-8 strings. */
  public static Tensor of(String name, long[] shape, String... data) {
    return of(name, Datatype.BYTES, shape, data);
  }

  /** A 2-D FP32 tensor [rows, columns] from rows of equal length, e.g. a batch of features. */
  public static Tensor matrix(String name, float[][] rows) {
    int cols =
        columns(name, rows.length, rows.length == 0 ? 0 : rows[0].length, i -> rows[i].length);
    float[] flat = new float[rows.length * cols];
    for (int i = 0; i < rows.length; i++) {
      System.arraycopy(rows[i], 0, flat, i * cols, cols);
    }
    return of(name, new long[] {rows.length, cols}, flat);
  }

  /** A 2-D FP64 tensor [rows, columns] from rows of equal length. */
  public static Tensor matrix(String name, double[][] rows) {
    int cols =
        columns(name, rows.length, rows.length == 0 ? 0 : rows[0].length, i -> rows[i].length);
    double[] flat = new double[rows.length * cols];
    for (int i = 0; i < rows.length; i++) {
      System.arraycopy(rows[i], 0, flat, i * cols, cols);
    }
    return of(name, new long[] {rows.length, cols}, flat);
  }

  /** A 2-D INT64 tensor [rows, columns] from rows of equal length. */
  public static Tensor matrix(String name, long[][] rows) {
    int cols =
        columns(name, rows.length, rows.length == 0 ? 0 : rows[0].length, i -> rows[i].length);
    long[] flat = new long[rows.length * cols];
    for (int i = 0; i < rows.length; i++) {
      System.arraycopy(rows[i], 0, flat, i * cols, cols);
    }
    return of(name, new long[] {rows.length, cols}, flat);
  }

  /** A 2-D INT32 tensor [rows, columns] from rows of equal length. */
  public static Tensor matrix(String name, int[][] rows) {
    int cols =
        columns(name, rows.length, rows.length == 0 ? 0 : rows[0].length, i -> rows[i].length);
    int[] flat = new int[rows.length * cols];
    for (int i = 0; i < rows.length; i++) {
      System.arraycopy(rows[i], 0, flat, i * cols, cols);
    }
    return of(name, new long[] {rows.length, cols}, flat);
  }

  private static int columns(
      String name, int rows, int cols, java.util.function.IntUnaryOperator length) {
    for (int i = 0; i < rows; i++) {
      if (length.applyAsInt(i) != cols) {
        throw invalid(name, "row %d has %d values; row 0 has %d", i, length.applyAsInt(i), cols);
      }
    }
    return cols;
  }

  /** The tensor's name. */
  public String name() {
    return name;
  }

  /** The tensor's datatype. */
  public Datatype datatype() {
    return datatype;
  }

  /** The tensor's shape (a copy). */
  public long[] shape() {
    return shape.clone();
  }

  /** The number of values: the product of the shape. */
  public int size() {
    return java.lang.reflect.Array.getLength(data);
  }

  /** The values: the array of the datatype's type (see {@link Datatype}). */
  public Object data() {
    return data;
  }

  /** FP32 values. */
  public float[] floats() {
    return (float[]) as(Datatype.FP32);
  }

  /** FP64 values. */
  public double[] doubles() {
    return (double[]) as(Datatype.FP64);
  }

  /** INT64 values (or UINT64 bits). */
  public long[] longs() {
    return (long[]) as(Datatype.INT64, Datatype.UINT64);
  }

  /** INT32 values (or UINT32 bits). */
  public int[] ints() {
    return (int[]) as(Datatype.INT32, Datatype.UINT32);
  }

  /** INT16 values (or UINT16 or FP16 bits). */
  public short[] shorts() {
    return (short[]) as(Datatype.INT16, Datatype.UINT16, Datatype.FP16);
  }

  /** INT8 values (or UINT8 bits). */
  public byte[] int8s() {
    return (byte[]) as(Datatype.INT8, Datatype.UINT8);
  }

  /** BOOL values. */
  public boolean[] booleans() {
    return (boolean[]) as(Datatype.BOOL);
  }

  /** BYTES values, each element's bytes. */
  public byte[][] byteStrings() {
    return (byte[][]) as(Datatype.BYTES);
  }

  /** BYTES values read as UTF-8 text. */
  public String[] strings() {
    byte[][] bytes = byteStrings();
    String[] text = new String[bytes.length];
    for (int i = 0; i < bytes.length; i++) {
      text[i] = new String(bytes[i], StandardCharsets.UTF_8);
    }
    return text;
  }

  /** A 2-D FP32 tensor's rows (copied out of the flat array). */
  public float[][] floatRows() {
    float[] flat = floats();
    int cols = rowLength();
    float[][] rows = new float[(int) shape[0]][];
    for (int i = 0; i < rows.length; i++) {
      rows[i] = Arrays.copyOfRange(flat, i * cols, (i + 1) * cols);
    }
    return rows;
  }

  /** A 2-D FP64 tensor's rows (copied out of the flat array). */
  public double[][] doubleRows() {
    double[] flat = doubles();
    int cols = rowLength();
    double[][] rows = new double[(int) shape[0]][];
    for (int i = 0; i < rows.length; i++) {
      rows[i] = Arrays.copyOfRange(flat, i * cols, (i + 1) * cols);
    }
    return rows;
  }

  /** A 2-D INT64 tensor's rows (copied out of the flat array). */
  public long[][] longRows() {
    long[] flat = longs();
    int cols = rowLength();
    long[][] rows = new long[(int) shape[0]][];
    for (int i = 0; i < rows.length; i++) {
      rows[i] = Arrays.copyOfRange(flat, i * cols, (i + 1) * cols);
    }
    return rows;
  }

  /** A 2-D INT32 tensor's rows (copied out of the flat array). */
  public int[][] intRows() {
    int[] flat = ints();
    int cols = rowLength();
    int[][] rows = new int[(int) shape[0]][];
    for (int i = 0; i < rows.length; i++) {
      rows[i] = Arrays.copyOfRange(flat, i * cols, (i + 1) * cols);
    }
    return rows;
  }

  private int rowLength() {
    if (shape.length != 2) {
      throw invalid(name, "has shape %s; rows need 2 dimensions", Arrays.toString(shape));
    }
    return (int) shape[1];
  }

  private Object as(Datatype... datatypes) {
    for (Datatype d : datatypes) {
      if (d == datatype) {
        return data;
      }
    }
    throw invalid(name, "holds %s, not %s", datatype, datatypes[0]);
  }

  /**
   * The values in the raw contents format: little-endian, row-major; each BYTES element a 4-byte
   * little-endian length then its bytes; BOOL one byte.
   */
  public byte[] toRaw() {
    return Codec.encodeRaw(this);
  }

  /**
   * The tensor read from raw contents.
   *
   * @throws GreenroomException INVALID_ARGUMENT when the bytes do not hold the shape's values
   */
  public static Tensor fromRaw(String name, Datatype datatype, long[] shape, byte[] raw) {
    return Codec.decodeRaw(name, datatype, shape, java.nio.ByteBuffer.wrap(raw));
  }

  /**
   * The values in the typed contents field of the datatype.
   *
   * @throws GreenroomException INVALID_ARGUMENT for FP16, which has no typed field
   */
  public InferTensorContents toContents() {
    return Codec.encodeTyped(this);
  }

  /**
   * The tensor read from typed contents.
   *
   * @throws GreenroomException INVALID_ARGUMENT when they do not hold the shape's values
   */
  public static Tensor fromContents(
      String name, Datatype datatype, long[] shape, InferTensorContents contents) {
    return Codec.decodeTyped(name, datatype, shape, contents);
  }

  /** The number of values a shape holds. */
  static int elements(String name, long[] shape) {
    final long limit = Integer.MAX_VALUE - 8; // the largest Java array
    long n = 1;
    for (long d : shape) {
      if (d < 0) {
        throw invalid(name, "shape %s has a negative dimension", Arrays.toString(shape));
      }
      if (d != 0 && n > limit / d) {
        throw invalid(name, "shape %s holds too many values", Arrays.toString(shape));
      }
      n *= d;
    }
    return (int) n;
  }

  /** INVALID_ARGUMENT that names the tensor and says what is wrong. */
  static GreenroomException invalid(String name, String format, Object... args) {
    return GreenroomException.invalid(
        "tensor '" + name + "': " + String.format(Locale.ROOT, format, args));
  }

  /** Only for tensors of data already checked: the codec's way in. */
  static Tensor trusted(String name, Datatype datatype, long[] shape, Object data) {
    return new Tensor(name, datatype, shape, data);
  }

  @Override
  public String toString() {
    return "Tensor{" + name + ", " + datatype + ", " + Arrays.toString(shape) + "}";
  }
}
