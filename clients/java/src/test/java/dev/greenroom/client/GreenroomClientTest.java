package dev.greenroom.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.greenroom.inference.ModelInferRequest;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.inprocess.InProcessChannelBuilder;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.UUID;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

class GreenroomClientTest {
  private FakeServer server;
  private ManagedChannel channel;
  private GreenroomClient client;

  @BeforeEach
  void start() throws Exception {
    String name = "fake-" + UUID.randomUUID();
    server = FakeServer.inProcess(name);
    channel = InProcessChannelBuilder.forName(name).directExecutor().build();
    client = GreenroomClient.of(channel).withTimeout(Duration.ofSeconds(10));
  }

  @AfterEach
  void stop() throws Exception {
    channel.shutdownNow();
    server.close();
  }

  @Test
  void inferSendsRawAndDecodesRawAnswers() {
    List<Tensor> inputs = TensorTest.everyDatatype();
    InferResult result = client.infer(InferRequest.builder("echo").id("r1").inputs(inputs).build());
    assertEquals("echo", result.modelName());
    assertEquals("1", result.modelVersion());
    assertEquals("r1", result.id());
    assertEquals(inputs.size(), result.outputs().size());
    for (int i = 0; i < inputs.size(); i++) {
      TensorTest.assertSame(inputs.get(i), result.outputs().get(i));
    }
    ModelInferRequest sent = server.requests.get(0);
    assertEquals(inputs.size(), sent.getRawInputContentsCount());
    assertFalse(sent.getInputs(0).hasContents());
  }

  @Test
  void inferTypedVersionAndOutputs() {
    Tensor x = Tensor.matrix("x", new float[][] {{1, 2}, {3, 4}});
    Tensor y = Tensor.of("y", new long[] {2}, new long[] {7, 8});
    InferResult result =
        client.infer(
            InferRequest.builder("echo")
                .version("2")
                .input(x, y)
                .outputs("y")
                .typedContents()
                .build());
    assertEquals("2", result.modelVersion());
    assertEquals("made-by-server", result.id());
    assertEquals(1, result.outputs().size());
    assertArrayEquals(new long[] {7, 8}, result.output("y").orElseThrow().longs());
    assertEquals(Optional.empty(), result.output("x"));
    ModelInferRequest sent = server.requests.get(0);
    assertEquals(0, sent.getRawInputContentsCount());
    assertEquals(List.of(1f, 2f, 3f, 4f), sent.getInputs(0).getContents().getFp32ContentsList());
    assertEquals(List.of(2L, 2L), sent.getInputs(0).getShapeList());
    assertEquals("y", sent.getOutputs(0).getName());
  }

  @Test
  void errorsKeepTheStatus() {
    Tensor x = Tensor.of("x", new long[] {1}, new float[] {1});
    GreenroomException missing =
        assertThrows(GreenroomException.class, () -> client.infer("nope", x));
    assertEquals(Status.Code.NOT_FOUND, missing.code());
    assertEquals("model 'nope' is not in the repository", missing.description());
    assertEquals("infer nope", missing.operation());
    assertEquals(
        "greenroom: infer nope: NOT_FOUND: model 'nope' is not in the repository",
        missing.getMessage());
    assertEquals(Status.Code.NOT_FOUND, missing.status().getCode());

    Tensor bad = Tensor.of("bad", new long[] {1}, new float[] {1});
    GreenroomException invalid =
        assertThrows(GreenroomException.class, () -> client.infer("echo", bad));
    assertEquals(Status.Code.INVALID_ARGUMENT, invalid.code());
    assertEquals("input 'bad': shape [1] is not [-1, 4]", invalid.description());

    // Wrong before it is sent: INVALID_ARGUMENT made here, and nothing sent.
    Tensor h = Tensor.of("h", Datatype.FP16, new long[] {1}, new short[] {0});
    GreenroomException local =
        assertThrows(
            GreenroomException.class,
            () -> client.infer(InferRequest.builder("echo").input(h).typedContents().build()));
    assertEquals(Status.Code.INVALID_ARGUMENT, local.code());
    assertEquals(
        "greenroom: infer echo: INVALID_ARGUMENT: tensor 'h': FP16 has no typed contents; send it"
            + " raw",
        local.getMessage());
    assertTrue(
        server.requests.stream()
            .noneMatch(r -> r.getInputsCount() > 0 && r.getInputs(0).getName().equals("h")));
  }

  @Test
  void unreachableServerIsUnavailable() {
    try (GreenroomClient nowhere = GreenroomClient.connect("127.0.0.1:1")) {
      GreenroomException e =
          assertThrows(
              GreenroomException.class,
              () -> nowhere.withTimeout(Duration.ofSeconds(5)).modelReady("echo", ""));
      assertEquals(Status.Code.UNAVAILABLE, e.code());
    }
  }

  @Test
  void modelReady() {
    assertTrue(client.modelReady("echo", ""));
    assertFalse(client.modelReady("other", "1"));
  }

  @Test
  void feedbackInOneMessage() {
    FeedbackResult result =
        client.sendFeedback(
            "iris",
            List.of(new FeedbackItem("known-1", 0, "2"), new FeedbackItem("later", 3, "0")));
    assertEquals(new FeedbackResult(2, 1, 1, 0), result);
    assertEquals(1, server.batches.size());
    assertEquals("iris", server.batches.get(0).getModel());
    assertEquals(3, server.batches.get(0).getItems(1).getRow());
    GreenroomException e =
        assertThrows(GreenroomException.class, () -> client.sendFeedback("nope", List.of()));
    assertEquals(Status.Code.NOT_FOUND, e.code());
    assertEquals("feedback nope", e.operation());
  }

  @Test
  void manyLabelsAreStreamedInBatches() {
    List<FeedbackItem> items = new ArrayList<>();
    for (int i = 0; i < 2500; i++) {
      items.add(new FeedbackItem(i % 2 == 0 ? "known-" + i : "other-" + i, 0, "1"));
    }
    assertEquals(new FeedbackResult(2500, 1250, 1250, 0), client.sendFeedback("iris", items));
    assertEquals(
        List.of(1000, 1000, 500), server.batches.stream().map(b -> b.getItemsCount()).toList());
  }

  @Test
  void deployment() {
    Deployment d = client.deployment("iris");
    assertEquals(
        new Deployment("iris", "1", Optional.empty(), List.of(new Deployment.Shadow("2", 0.5))), d);
    assertEquals(
        Optional.of(new Deployment.Canary("3", 0.1)), client.deployment("canaried").canary());
  }
}
