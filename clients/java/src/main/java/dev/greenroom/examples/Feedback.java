package dev.greenroom.examples;

import dev.greenroom.client.FeedbackItem;
import dev.greenroom.client.FeedbackResult;
import dev.greenroom.client.GreenroomClient;
import dev.greenroom.client.GreenroomException;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/**
 * Sends ground truth for earlier predictions to a Greenroom gateway.
 *
 * <pre>
 * feedback --target HOST:PORT --model NAME --file labels.csv [--timeout 60s]
 * </pre>
 *
 * <p>labels.csv ({@code -}: standard input) has a header naming the columns request_id, row and
 * label (in any order; row may be left out, meaning 0). It prints what the gateway did with them:
 * {@code {"accepted", "matched", "unmatched", "duplicates"}}. A failure prints {@code feedback: }
 * and the error to standard error and exits 1; a bad command line exits 2.
 */
public final class Feedback {
  static final String USAGE =
      "usage: feedback --target HOST:PORT --model NAME --file labels.csv [--timeout 60s]";

  private Feedback() {}

  public static void main(String[] args) {
    System.exit(run(args, System.in, System.out, System.err));
  }

  /** The program, with its streams; answers its exit status. */
  static int run(String[] args, InputStream stdin, PrintStream out, PrintStream err) {
    String target;
    String model;
    String file;
    Duration timeout;
    try {
      Options options = Options.parse(args, Set.of("target", "model", "file", "timeout"), Set.of());
      target = options.get("target", "127.0.0.1:8001");
      model = options.required("model");
      file = options.required("file");
      timeout = Options.duration("timeout", options.get("timeout", "60s"));
    } catch (Options.HelpException e) {
      out.println(USAGE);
      return 0;
    } catch (Options.UsageException e) {
      err.println("feedback: " + e.getMessage());
      err.println(USAGE);
      return 2;
    }

    List<FeedbackItem> items;
    try (Reader in =
        new InputStreamReader(
            file.equals("-") ? stdin : Files.newInputStream(Path.of(file)),
            StandardCharsets.UTF_8)) {
      items = LabelsCsv.read(in);
    } catch (IOException | LabelsCsv.FormatException e) {
      err.println("feedback: " + file + ": " + Infer.describe(e));
      return 1;
    }

    try (GreenroomClient connection = GreenroomClient.connect(target)) {
      FeedbackResult result = connection.withTimeout(timeout).sendFeedback(model, items);
      out.println(
          String.format(
              Locale.ROOT,
              "{\"accepted\":%d,\"matched\":%d,\"unmatched\":%d,\"duplicates\":%d}",
              result.accepted(),
              result.matched(),
              result.unmatched(),
              result.duplicates()));
      out.flush();
      return 0;
    } catch (GreenroomException e) {
      err.println("feedback: " + e.getMessage());
      return 1;
    }
  }
}
