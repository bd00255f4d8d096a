package dev.greenroom.examples;

import dev.greenroom.client.GreenroomClient;
import dev.greenroom.client.GreenroomException;
import dev.greenroom.client.InferRequest;
import dev.greenroom.client.InferResult;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Set;

/**
 * Sends one V2 inference request to a Greenroom gateway (or any V2 gRPC server) and prints the
 * answer.
 *
 * <pre>
 * infer --target HOST:PORT --model NAME [--version V] --input FILE.json [--typed] [--timeout 30s]
 * </pre>
 *
 * <p>FILE.json ({@code -}: standard input) is a V2 REST-style request, {@code {"id", "inputs":
 * [{"name", "shape", "datatype", "data"}]}}, data flat or nested; the answer is printed on one line
 * as a V2 REST-style response, {@code {"model_name", "model_version", "id", "outputs": [{"name",
 * "shape", "datatype", "data"}]}}, data flat and row-major. Inputs go as raw contents, or typed
 * with {@code --typed}. A failure prints {@code infer: } and the error (with the gRPC status) to
 * standard error and exits 1; a bad command line exits 2.
 */
public final class Infer {
  static final String USAGE =
      "usage: infer --target HOST:PORT --model NAME [--version V] --input FILE.json"
          + " [--typed] [--timeout 30s]";

  private Infer() {}

  public static void main(String[] args) {
    System.exit(run(args, System.in, System.out, System.err));
  }

  /** The program, with its streams; answers its exit status. */
  static int run(String[] args, InputStream stdin, PrintStream out, PrintStream err) {
    String target;
    String model;
    String version;
    String input;
    boolean typed;
    Duration timeout;
    try {
      Options options =
          Options.parse(
              args, Set.of("target", "model", "version", "input", "timeout"), Set.of("typed"));
      target = options.get("target", "127.0.0.1:8001");
      model = options.required("model");
      version = options.get("version", "");
      input = options.required("input");
      typed = options.flag("typed");
      timeout = Options.duration("timeout", options.get("timeout", "30s"));
    } catch (Options.HelpException e) {
      out.println(USAGE);
      return 0;
    } catch (Options.UsageException e) {
      err.println("infer: " + e.getMessage());
      err.println(USAGE);
      return 2;
    }

    RestJson.Request request;
    try (InputStream in = input.equals("-") ? stdin : Files.newInputStream(Path.of(input))) {
      request = RestJson.readRequest(in);
    } catch (IOException | RestJson.FormatException e) {
      err.println("infer: " + input + ": " + describe(e));
      return 1;
    }

    try (GreenroomClient connection = GreenroomClient.connect(target)) {
      InferRequest.Builder call =
          InferRequest.builder(model)
              .version(version)
              .id(request.id())
              .inputs(request.inputs())
              .outputs(request.outputs().toArray(new String[0]));
      if (typed) {
        call.typedContents();
      }
      InferResult result = connection.withTimeout(timeout).infer(call.build());
      RestJson.writeResponse(result, out);
      return 0;
    } catch (GreenroomException e) {
      err.println("infer: " + e.getMessage());
      return 1;
    } catch (IOException e) {
      err.println("infer: " + describe(e));
      return 1;
    }
  }

  static String describe(Exception e) {
    if (e instanceof java.nio.file.NoSuchFileException) {
      return "no such file";
    }
    return e.getMessage() == null ? e.toString() : e.getMessage();
  }
}
