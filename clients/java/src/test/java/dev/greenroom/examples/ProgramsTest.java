package dev.greenroom.examples;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.greenroom.client.FakeServer;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The example programs, against a fake V2 server on a loopback port. */
class ProgramsTest {
  private static FakeServer server;

  @BeforeAll
  static void start() throws Exception {
    server = FakeServer.tcp();
  }

  @AfterAll
  static void stop() throws Exception {
    server.close();
  }

  private record Run(int status, String out, String err) {}

  private interface Program {
    int run(String[] args, java.io.InputStream stdin, PrintStream out, PrintStream err);
  }

  private static Run run(Program program, String stdin, String... args) {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    ByteArrayOutputStream err = new ByteArrayOutputStream();
    int status =
        program.run(
            args,
            new ByteArrayInputStream(stdin.getBytes(StandardCharsets.UTF_8)),
            new PrintStream(out, true, StandardCharsets.UTF_8),
            new PrintStream(err, true, StandardCharsets.UTF_8));
    return new Run(
        status, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
  }

  private static final String REQUEST =
      "{\"id\": \"req-1\", \"inputs\": [{\"name\": \"input\", \"shape\": [2, 2], \"datatype\":"
          + " \"FP32\", \"data\": [[5.1, 3.5], [6.7, 3.0]]}]}";

  @Test
  void inferPrintsTheAnswer(@TempDir Path dir) throws Exception {
    Path file = dir.resolve("request.json");
    Files.writeString(file, REQUEST);
    String want =
        "{\"model_name\":\"echo\",\"model_version\":\"1\",\"id\":\"req-1\",\"outputs\":[{\"name\":\"input\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[5.1,3.5,6.7,3.0]}]}\n";
    Run raw =
        run(
            Infer::run,
            "",
            "--target",
            server.target(),
            "--model",
            "echo",
            "--input",
            file.toString());
    assertEquals(new Run(0, want, ""), raw);
    Run typed =
        run(
            Infer::run,
            REQUEST,
            "--target=" + server.target(),
            "--model",
            "echo",
            "--input",
            "-",
            "--typed",
            "--version",
            "1",
            "--timeout",
            "5s");
    assertEquals(new Run(0, want, ""), typed);
  }

  @Test
  void inferFailures(@TempDir Path dir) throws Exception {
    Path file = dir.resolve("request.json");
    Files.writeString(file, REQUEST);
    Run missing =
        run(
            Infer::run,
            "",
            "--target",
            server.target(),
            "--model",
            "nope",
            "--input",
            file.toString());
    assertEquals(
        new Run(
            1,
            "",
            "infer: greenroom: infer nope: NOT_FOUND: model 'nope' is not in the repository\n"),
        missing);

    Files.writeString(
        file,
        "{\"inputs\": [{\"name\": \"x\", \"shape\": [3], \"datatype\": \"FP32\", \"data\": [1,"
            + " 2]}]}");
    Run bad =
        run(
            Infer::run,
            "",
            "--target",
            server.target(),
            "--model",
            "echo",
            "--input",
            file.toString());
    assertEquals(
        new Run(1, "", "infer: " + file + ": input 'x': shape [3] needs 3 values, data has 2\n"),
        bad);

    Run usage = run(Infer::run, "", "--model", "echo");
    assertEquals(2, usage.status());
    assertTrue(
        usage.err().startsWith("infer: --input is required\nusage: infer --target"), usage.err());
    assertEquals(2, run(Infer::run, "", "--model", "echo", "--input", "x", "extra").status());
    assertEquals(
        2, run(Infer::run, "", "--model", "echo", "--input", "x", "--timeout", "soon").status());
    assertEquals(0, run(Infer::run, "", "--help").status());
  }

  @Test
  void feedbackPrintsTheCounts(@TempDir Path dir) throws Exception {
    Path labels = dir.resolve("labels.csv");
    Files.writeString(labels, "request_id,row,label\nknown-1,0,0\nlater,1,2\n");
    Run fed =
        run(
            Feedback::run,
            "",
            "--target",
            server.target(),
            "--model",
            "iris",
            "--file",
            labels.toString());
    assertEquals(
        new Run(0, "{\"accepted\":2,\"matched\":1,\"unmatched\":1,\"duplicates\":0}\n", ""), fed);

    Run missing =
        run(
            Feedback::run,
            "request_id,label\nr,1\n",
            "--target",
            server.target(),
            "--model",
            "nope",
            "--file",
            "-");
    assertEquals(
        new Run(
            1,
            "",
            "feedback: greenroom: feedback nope: NOT_FOUND: model 'nope' is not in the"
                + " repository\n"),
        missing);

    Files.writeString(labels, "request_id,row\nr,1\n");
    Run bad =
        run(
            Feedback::run,
            "",
            "--target",
            server.target(),
            "--model",
            "iris",
            "--file",
            labels.toString());
    assertEquals(
        new Run(
            1, "", "feedback: " + labels + ": header [request_id, row] has no \"label\" column\n"),
        bad);
  }
}
