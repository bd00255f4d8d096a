package dev.greenroom.examples;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.StreamWriteFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import dev.greenroom.client.Datatype;
import dev.greenroom.client.GreenroomException;
import dev.greenroom.client.Half;
import dev.greenroom.client.InferResult;
import dev.greenroom.client.Tensor;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;

/**
 * The JSON of the V2 REST protocol's inference request and response, for the example programs:
 * {@code {"id", "inputs": [{"name", "shape", "datatype", "data"}]}} in, {@code {"model_name",
 * "model_version", "id", "outputs": [...]}} out.
 */
public final class RestJson {
  private RestJson() {}

  /** An inference request: its id (may be empty), its inputs and the outputs it asks for. */
  public record Request(String id, List<Tensor> inputs, List<String> outputs) {}

  /** A request that cannot be read: bad JSON, or a tensor its data does not make. */
  public static final class FormatException extends Exception {
    private static final long serialVersionUID = 1L;

    FormatException(String message) {
      super(message);
    }
  }

  // Numbers as written: integers as BigInteger, others as BigDecimal, so that INT64 values
  // beyond 2^53 stay exact and FP32 values are rounded once, from the decimal text.
  private static final ObjectMapper READER =
      JsonMapper.builder()
          .enable(DeserializationFeature.USE_BIG_INTEGER_FOR_INTS)
          .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
          .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
          .build();

  // Floats in the shortest form that reads back to the same value (Schubfach); NaN and the
  // infinities, which JSON has no numbers for, as the strings "NaN", "Infinity", "-Infinity".
  private static final JsonFactory WRITER =
      JsonFactory.builder()
          .enable(StreamWriteFeature.USE_FAST_DOUBLE_WRITER)
          .disable(StreamWriteFeature.AUTO_CLOSE_TARGET)
          .build();

  /** Reads a request; each input's data may be flat or nested (row-major). */
  public static Request readRequest(InputStream in) throws IOException, FormatException {
    JsonNode root;
    try {
      root = READER.readTree(in);
    } catch (JsonProcessingException e) {
      String where =
          e.getLocation() == null
              ? ""
              : String.format(
                  Locale.ROOT,
                  " (line %d, column %d)",
                  e.getLocation().getLineNr(),
                  e.getLocation().getColumnNr());
      throw new FormatException("request JSON: " + e.getOriginalMessage() + where);
    }
    if (root == null || !root.isObject()) {
      throw new FormatException("request JSON: not an object");
    }
    String id = text(root.get("id"), "id");
    List<Tensor> inputs = new ArrayList<>();
    for (JsonNode input : list(root.get("inputs"), "inputs")) {
      String name = text(input.get("name"), "input name");
      try {
        inputs.add(tensor(name, input));
      } catch (FormatException e) {
        throw new FormatException("input '" + name + "': " + e.getMessage());
      }
    }
    List<String> outputs = new ArrayList<>();
    for (JsonNode output : list(root.get("outputs"), "outputs")) {
      outputs.add(text(output.get("name"), "output name"));
    }
    return new Request(id, inputs, outputs);
  }

  private static String text(JsonNode node, String what) throws FormatException {
    if (node == null || node.isNull()) {
      return "";
    }
    if (!node.isTextual()) {
      throw new FormatException("request JSON: " + what + " is not a string");
    }
    return node.textValue();
  }

  private static List<JsonNode> list(JsonNode node, String what) throws FormatException {
    List<JsonNode> items = new ArrayList<>();
    if (node == null || node.isNull()) {
      return items;
    }
    if (!node.isArray()) {
      throw new FormatException("request JSON: " + what + " is not a list");
    }
    node.forEach(items::add);
    return items;
  }

  private static Tensor tensor(String name, JsonNode input) throws FormatException {
    JsonNode shapeNode = input.get("shape");
    if (shapeNode == null || !shapeNode.isArray()) {
      throw new FormatException("no shape");
    }
    long[] shape = new long[shapeNode.size()];
    for (int i = 0; i < shape.length; i++) {
      JsonNode d = shapeNode.get(i);
      if (!d.isIntegralNumber() || !d.canConvertToLong()) {
        throw new FormatException("shape " + shapeNode + " is not a list of integers");
      }
      shape[i] = d.longValue();
    }
    String typeName = text(input.get("datatype"), "datatype");
    Datatype datatype;
    try {
      datatype = Datatype.parse(typeName);
    } catch (GreenroomException e) {
      throw new FormatException(e.description());
    }
    List<JsonNode> flat = new ArrayList<>();
    flatten(input.get("data"), flat);
    long want = 1;
    for (long d : shape) {
      if (d < 0) {
        throw new FormatException("shape " + Arrays.toString(shape) + " has a negative dimension");
      }
      try {
        want = Math.multiplyExact(want, d);
      } catch (ArithmeticException e) {
        throw new FormatException("shape " + Arrays.toString(shape) + " holds too many values");
      }
    }
    if (flat.size() != want) {
      throw new FormatException(
          String.format(
              Locale.ROOT,
              "shape %s needs %d values, data has %d",
              Arrays.toString(shape),
              want,
              flat.size()));
    }
    Object data = values(datatype, flat);
    return Tensor.of(name, datatype, shape, data);
  }

  private static void flatten(JsonNode node, List<JsonNode> out) {
    if (node == null) {
      return;
    }
    if (node.isArray()) {
      node.forEach(item -> flatten(item, out));
    } else {
      out.add(node);
    }
  }

  private static Object values(Datatype datatype, List<JsonNode> flat) throws FormatException {
    int n = flat.size();
    switch (datatype) {
      case BOOL -> {
        boolean[] v = new boolean[n];
        for (int i = 0; i < n; i++) {
          JsonNode x = flat.get(i);
          if (!x.isBoolean()) {
            throw value(i, x + " is not true or false");
          }
          v[i] = x.booleanValue();
        }
        return v;
      }
      case BYTES -> {
        byte[][] v = new byte[n][];
        for (int i = 0; i < n; i++) {
          JsonNode x = flat.get(i);
          if (!x.isTextual()) {
            throw value(i, x + " is not a string");
          }
          v[i] = x.textValue().getBytes(StandardCharsets.UTF_8);
        }
        return v;
      }
      case INT8, UINT8 -> {
        byte[] v = new byte[n];
        for (int i = 0; i < n; i++) {
          v[i] = (byte) integer(datatype, i, flat.get(i));
        }
        return v;
      }
      case INT16, UINT16 -> {
        short[] v = new short[n];
        for (int i = 0; i < n; i++) {
          v[i] = (short) integer(datatype, i, flat.get(i));
        }
        return v;
      }
      case INT32, UINT32 -> {
        int[] v = new int[n];
        for (int i = 0; i < n; i++) {
          v[i] = (int) integer(datatype, i, flat.get(i));
        }
        return v;
      }
      case INT64, UINT64 -> {
        long[] v = new long[n];
        for (int i = 0; i < n; i++) {
          v[i] = integer(datatype, i, flat.get(i));
        }
        return v;
      }
      case FP16 -> {
        short[] v = new short[n];
        for (int i = 0; i < n; i++) {
          v[i] = Half.fromFloat((float) real(datatype, i, flat.get(i)));
        }
        return v;
      }
      case FP32 -> {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
          v[i] = (float) real(datatype, i, flat.get(i));
        }
        return v;
      }
      case FP64 -> {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
          v[i] = real(datatype, i, flat.get(i));
        }
        return v;
      }
      default -> throw new AssertionError(datatype);
    }
  }

  private static FormatException value(int i, String problem) {
    return new FormatException("value " + i + ": " + problem);
  }

  // The bounds of each integer datatype; unsigned values keep their bits in the signed type.
  private static BigInteger[] range(Datatype datatype) {
    return switch (datatype) {
      case INT8 -> bounds(Byte.MIN_VALUE, Byte.MAX_VALUE);
      case INT16 -> bounds(Short.MIN_VALUE, Short.MAX_VALUE);
      case INT32 -> bounds(Integer.MIN_VALUE, Integer.MAX_VALUE);
      case INT64 -> bounds(Long.MIN_VALUE, Long.MAX_VALUE);
      case UINT8 -> bounds(0, 0xff);
      case UINT16 -> bounds(0, 0xffff);
      case UINT32 -> bounds(0, 0xffff_ffffL);
      default ->
          new BigInteger[] {BigInteger.ZERO, BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE)};
    };
  }

  private static BigInteger[] bounds(long min, long max) {
    return new BigInteger[] {BigInteger.valueOf(min), BigInteger.valueOf(max)};
  }

  /** An integer in the datatype's range, as the bits of a long. */
  private static long integer(Datatype datatype, int i, JsonNode x) throws FormatException {
    if (!x.isIntegralNumber()) {
      throw value(i, x + " is not an integer");
    }
    BigInteger v = x.bigIntegerValue();
    BigInteger[] range = range(datatype);
    if (v.compareTo(range[0]) < 0 || v.compareTo(range[1]) > 0) {
      throw value(i, v + " is out of range for " + datatype);
    }
    return v.longValue();
  }

  /** A number, rounded once from its decimal text; or "NaN", "Infinity", "-Infinity". */
  private static double real(Datatype datatype, int i, JsonNode x) throws FormatException {
    if (x.isTextual()) {
      switch (x.textValue()) {
        case "NaN", "nan":
          return Double.NaN;
        case "Infinity", "inf":
          return Double.POSITIVE_INFINITY;
        case "-Infinity", "-inf":
          return Double.NEGATIVE_INFINITY;
        default:
          break;
      }
    }
    if (!x.isNumber()) {
      throw value(i, x + " is not a number");
    }
    String text =
        x.isIntegralNumber() ? x.bigIntegerValue().toString() : x.decimalValue().toString();
    double v = datatype == Datatype.FP64 ? Double.parseDouble(text) : Float.parseFloat(text);
    if (Double.isInfinite(v)) {
      throw value(i, text + " is out of range for " + datatype);
    }
    return v;
  }

  /**
   * Writes {@code result} as the V2 REST response on one line, each output's data flat and
   * row-major. Unsigned integers are written as such; FP16 as the numbers they stand for.
   */
  public static void writeResponse(InferResult result, OutputStream out) throws IOException {
    try (JsonGenerator json = WRITER.createGenerator(out)) {
      json.writeStartObject();
      json.writeStringField("model_name", result.modelName());
      json.writeStringField("model_version", result.modelVersion());
      json.writeStringField("id", result.id());
      json.writeArrayFieldStart("outputs");
      for (Tensor t : result.outputs()) {
        json.writeStartObject();
        json.writeStringField("name", t.name());
        json.writeFieldName("shape");
        long[] shape = t.shape();
        json.writeArray(shape, 0, shape.length);
        json.writeStringField("datatype", t.datatype().name());
        json.writeArrayFieldStart("data");
        writeData(json, t);
        json.writeEndArray();
        json.writeEndObject();
      }
      json.writeEndArray();
      json.writeEndObject();
      json.writeRaw('\n');
    }
    out.flush();
  }

  private static void writeData(JsonGenerator json, Tensor t) throws IOException {
    switch (t.datatype()) {
      case BOOL -> {
        for (boolean v : t.booleans()) {
          json.writeBoolean(v);
        }
      }
      case INT8 -> {
        for (byte v : t.int8s()) {
          json.writeNumber(v);
        }
      }
      case UINT8 -> {
        for (byte v : t.int8s()) {
          json.writeNumber(Byte.toUnsignedInt(v));
        }
      }
      case INT16 -> {
        for (short v : t.shorts()) {
          json.writeNumber(v);
        }
      }
      case UINT16 -> {
        for (short v : t.shorts()) {
          json.writeNumber(Short.toUnsignedInt(v));
        }
      }
      case FP16 -> {
        for (short v : t.shorts()) {
          json.writeNumber(Half.toFloat(v));
        }
      }
      case INT32 -> {
        for (int v : t.ints()) {
          json.writeNumber(v);
        }
      }
      case UINT32 -> {
        for (int v : t.ints()) {
          json.writeNumber(Integer.toUnsignedLong(v));
        }
      }
      case INT64 -> {
        for (long v : t.longs()) {
          json.writeNumber(v);
        }
      }
      case UINT64 -> {
        for (long v : t.longs()) {
          json.writeNumber(new BigInteger(Long.toUnsignedString(v)));
        }
      }
      case FP32 -> {
        for (float v : t.floats()) {
          json.writeNumber(v);
        }
      }
      case FP64 -> {
        for (double v : t.doubles()) {
          json.writeNumber(v);
        }
      }
      case BYTES -> {
        for (String v : t.strings()) {
          json.writeString(v);
        }
      }
      default -> throw new AssertionError(t.datatype());
    }
  }
}
