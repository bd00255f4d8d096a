package dev.greenroom.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;

/** The README's example, compiled by `make test` (run it against a gateway serving iris). */
final class Example {
  private Example() {}

  public static void main(String[] args) {
    try (GreenroomClient client = GreenroomClient.connect("127.0.0.1:8001")) { // plaintext
      GreenroomClient calls = client.withTimeout(Duration.ofSeconds(10));

      // A typed 2-D tensor: two rows of four float32 features, sent as raw contents.
      Tensor features =
          Tensor.matrix(
              "input", new float[][] {{5.1f, 3.5f, 1.4f, 0.2f}, {6.7f, 3.0f, 5.2f, 2.3f}});
      InferResult result;
      try {
        result = calls.infer(InferRequest.builder("iris").input(features).id("order-42").build());
      } catch (GreenroomException e) {
        if (e.code() == Status.Code.NOT_FOUND) {
          System.err.println("no such model: " + e.description());
        }
        throw e; // INVALID_ARGUMENT names the input and says why, UNAVAILABLE, ...
      }
      long[] labels = result.output("label").orElseThrow().longs();
      double[][] proba = result.output("probabilities").orElseThrow().doubleRows();
      System.out.println(
          result.modelVersion()
              + " "
              + result.id()
              + " "
              + Arrays.toString(labels)
              + " "
              + Arrays.deepToString(proba));

      // Later, the truth for row 1 of that request.
      FeedbackResult fed =
          calls.sendFeedback("iris", List.of(new FeedbackItem("order-42", 1, "2")));
      System.out.println(fed.matched());

      Deployment d = calls.deployment("iris");
      System.out.println(d.primary() + " " + d.shadows());
    }
  }
}
