package dev.greenroom.examples;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.greenroom.client.Datatype;
import dev.greenroom.client.Half;
import dev.greenroom.client.InferResult;
import dev.greenroom.client.Tensor;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class RestJsonTest {
  private static RestJson.Request read(String json) throws Exception {
    return RestJson.readRequest(new ByteArrayInputStream(json.getBytes(StandardCharsets.UTF_8)));
  }

  @Test
  void readsNestedOrFlatDataExactly() throws Exception {
    RestJson.Request request =
        read(
            """
            {"id": "r1", "inputs": [
              {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1.5, 2], [3, 4e-3]]},
              {"name": "big", "shape": [1], "datatype": "INT64", "data": [9007199254740993]},
              {"name": "d", "shape": [2], "datatype": "FP64", "data": [0.1, "NaN"]},
              {"name": "s", "shape": [1, 1], "datatype": "BYTES", "data": [["héllo"]]},
              {"name": "b", "shape": [2], "datatype": "BOOL", "data": [true, false]},
              {"name": "h", "shape": [1], "datatype": "FP16", "data": [1.0]},
              {"name": "u", "shape": [2], "datatype": "UINT64", "data": [0, 18446744073709551615]},
              {"name": "f", "shape": [1], "datatype": "FP32", "data": [0.30000001192092896]}],
             "outputs": [{"name": "label"}], "parameters": {}}
            """);
    assertEquals("r1", request.id());
    assertEquals(List.of("label"), request.outputs());
    List<Tensor> in = request.inputs();
    assertEquals(8, in.size());
    assertArrayEquals(new long[] {2, 2}, in.get(0).shape());
    assertArrayEquals(new float[] {1.5f, 2f, 3f, 4e-3f}, in.get(0).floats());
    assertArrayEquals(new long[] {9007199254740993L}, in.get(1).longs());
    assertEquals(0.1, in.get(2).doubles()[0]);
    assertTrue(Double.isNaN(in.get(2).doubles()[1]));
    assertArrayEquals(new String[] {"héllo"}, in.get(3).strings());
    assertArrayEquals(new boolean[] {true, false}, in.get(4).booleans());
    assertEquals(Datatype.FP16, in.get(5).datatype());
    assertArrayEquals(new short[] {Half.fromFloat(1f)}, in.get(5).shorts());
    assertArrayEquals(new long[] {0, -1}, in.get(6).longs());
    assertArrayEquals(new float[] {0.3f}, in.get(7).floats());
  }

  @Test
  void errorsNameTheInput() {
    Map<String, String> cases =
        Map.of(
            "{\"inputs\": [{\"name\": \"x\", \"shape\": [3], \"datatype\": \"FP32\", \"data\": [1,"
                + " 2]}]}",
            "input 'x': shape [3] needs 3 values, data has 2",
            "{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"INT32\", \"data\":"
                + " [1.5]}]}",
            "input 'x': value 0: 1.5 is not an integer",
            "{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"INT8\", \"data\":"
                + " [300]}]}",
            "input 'x': value 0: 300 is out of range for INT8",
            "{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"UINT8\", \"data\":"
                + " [-1]}]}",
            "input 'x': value 0: -1 is out of range for UINT8",
            "{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"FP9\", \"data\":"
                + " [1]}]}",
            "input 'x': unknown datatype \"FP9\"",
            "{\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP32\", \"data\": [1]}]}",
            "input 'x': no shape",
            "{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"FP32\", \"data\":"
                + " [\"a\"]}]}",
            "input 'x': value 0: \"a\" is not a number",
            "{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"FP32\", \"data\":"
                + " [1e39]}]}",
            "input 'x': value 0: 1E+39 is out of range for FP32",
            "[1, 2]",
            "request JSON: not an object");
    cases.forEach(
        (json, message) -> {
          RestJson.FormatException e =
              assertThrows(RestJson.FormatException.class, () -> read(json));
          assertEquals(message, e.getMessage(), json);
        });
    RestJson.FormatException syntax =
        assertThrows(RestJson.FormatException.class, () -> read("{\"inputs\": [}"));
    assertTrue(syntax.getMessage().startsWith("request JSON: "), syntax.getMessage());
    assertTrue(syntax.getMessage().endsWith("(line 1, column 13)"), syntax.getMessage());
  }

  @Test
  void writesTheResponseOnOneLine() throws Exception {
    InferResult result =
        new InferResult(
            "m",
            "1",
            "r",
            List.of(
                Tensor.of("label", new long[] {2}, new long[] {0, 2}),
                Tensor.of(
                    "p", new long[] {1, 3}, new double[] {0.1, 1.0 / 3, Double.POSITIVE_INFINITY}),
                Tensor.of("f", new long[] {1}, new float[] {0.1f}),
                Tensor.of("u", Datatype.UINT8, new long[] {2}, new byte[] {1, (byte) 255}),
                Tensor.of("u64", Datatype.UINT64, new long[] {1}, new long[] {-1}),
                Tensor.of("s", new long[] {1}, "a<b"),
                Tensor.of("h", Datatype.FP16, new long[] {1}, new short[] {Half.fromFloat(0.5f)}),
                Tensor.of("e", new long[] {0}, new int[0])));
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    RestJson.writeResponse(result, out);
    String want =
        "{\"model_name\":\"m\",\"model_version\":\"1\",\"id\":\"r\",\"outputs\":["
            + "{\"name\":\"label\",\"shape\":[2],\"datatype\":\"INT64\",\"data\":[0,2]},"
            + "{\"name\":\"p\",\"shape\":[1,3],\"datatype\":\"FP64\",\"data\":[0.1,0.3333333333333333,\"Infinity\"]},"
            + "{\"name\":\"f\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[0.1]},"
            + "{\"name\":\"u\",\"shape\":[2],\"datatype\":\"UINT8\",\"data\":[1,255]},"
            + "{\"name\":\"u64\",\"shape\":[1],\"datatype\":\"UINT64\",\"data\":[18446744073709551615]},"
            + "{\"name\":\"s\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"a<b\"]},"
            + "{\"name\":\"h\",\"shape\":[1],\"datatype\":\"FP16\",\"data\":[0.5]},{\"name\":\"e\",\"shape\":[0],\"datatype\":\"INT32\",\"data\":[]}]}\n";
    assertEquals(want, out.toString(StandardCharsets.UTF_8));
  }

  @Test
  void doublesReadBackBitForBit() throws Exception {
    double[] values = {0.9847031235694885, 1e-300, 5e-324, Double.MAX_VALUE, 2e23, 1.0 / 3, 100.0};
    InferResult result =
        new InferResult("m", "1", "r", List.of(Tensor.of("p", new long[] {values.length}, values)));
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    RestJson.writeResponse(result, out);
    String json = out.toString(StandardCharsets.UTF_8);
    String data = json.substring(json.indexOf("\"data\":[") + 8, json.indexOf("]}]}"));
    String[] written = data.split(",");
    for (int i = 0; i < values.length; i++) {
      assertEquals(values[i], Double.parseDouble(written[i]), written[i]);
    }
  }
}
