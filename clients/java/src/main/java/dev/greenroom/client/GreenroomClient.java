package dev.greenroom.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.UnsafeByteOperations;
import dev.greenroom.inference.GRPCInferenceServiceGrpc;
import dev.greenroom.inference.ModelInferRequest;
import dev.greenroom.inference.ModelInferResponse;
import dev.greenroom.inference.ModelReadyRequest;
import dev.greenroom.v1.DeploymentsGrpc;
import dev.greenroom.v1.EvaluationGrpc;
import dev.greenroom.v1.FeedbackBatch;
import dev.greenroom.v1.FeedbackGrpc;
import dev.greenroom.v1.GetDeploymentRequest;
import io.grpc.Channel;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.AbstractStub;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

/**
 * A client of Greenroom, a model-serving gateway that speaks the Open Inference Protocol
 * (KServe/Triton "V2") and a control API for deployments, feedback and evaluation.
 *
 * <pre>{@code
 * try (GreenroomClient client = GreenroomClient.connect("127.0.0.1:8001")) {
 *   Tensor features = Tensor.matrix("input", new float[][] {{5.1f, 3.5f, 1.4f, 0.2f}});
 *   InferResult result = client.infer("iris", features);
 *   long[] labels = result.output("label").orElseThrow().longs();
 * }
 * }</pre>
 *
 * <p>Tensors travel as raw contents (little-endian bytes, one entry per input); answers are decoded
 * whether the server sent them raw or typed. Every failure is a {@link GreenroomException} holding
 * the gRPC status code. A client is safe for concurrent use: make one per target and share it.
 */
public final class GreenroomClient implements AutoCloseable {
  /** The most feedback items sent in one message; more go as a stream of batches. */
  static final int FEEDBACK_BATCH = 1000;

  private final Channel channel;
  private final ManagedChannel owned; // null when the caller owns the channel
  private final Duration timeout; // null: no deadline

  private GreenroomClient(Channel channel, ManagedChannel owned, Duration timeout) {
    this.channel = channel;
    this.owned = owned;
    this.timeout = timeout;
  }

  /**
   * A client of {@code target} ("host:port", or any gRPC target name) over plaintext; the
   * connection is made lazily, so an unreachable server shows up as UNAVAILABLE on the first call.
   * {@link #close()} closes it.
   */
  public static GreenroomClient connect(String target) {
    ManagedChannel channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    return new GreenroomClient(channel, channel, null);
  }

  /** A client over a channel the caller made (TLS, interceptors, in-process...) and closes. */
  public static GreenroomClient of(Channel channel) {
    return new GreenroomClient(channel, null, null);
  }

  /**
   * A client whose calls each have {@code timeout} to answer (DEADLINE_EXCEEDED after it). It
   * shares this client's channel: close this one, not the new one.
   */
  public GreenroomClient withTimeout(Duration timeout) {
    return new GreenroomClient(channel, null, timeout);
  }

  /** The channel, for the generated stubs of RPCs this class does not wrap. */
  public Channel channel() {
    return channel;
  }

  /** The generated V2 stub (with this client's timeout), for the RPCs not wrapped here. */
  public GRPCInferenceServiceGrpc.GRPCInferenceServiceBlockingStub inference() {
    return deadline(GRPCInferenceServiceGrpc.newBlockingStub(channel));
  }

  /** The generated greenroom.v1 Deployments stub. */
  public DeploymentsGrpc.DeploymentsBlockingStub deployments() {
    return deadline(DeploymentsGrpc.newBlockingStub(channel));
  }

  /** The generated greenroom.v1 Feedback stub. */
  public FeedbackGrpc.FeedbackBlockingStub feedback() {
    return deadline(FeedbackGrpc.newBlockingStub(channel));
  }

  /** The generated greenroom.v1 Evaluation stub. */
  public EvaluationGrpc.EvaluationBlockingStub evaluation() {
    return deadline(EvaluationGrpc.newBlockingStub(channel));
  }

  private <S extends AbstractStub<S>> S deadline(S stub) {
    return timeout == null ? stub : stub.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** Asks {@code model} (the version the deployment chooses) for a prediction on inputs. */
  public InferResult infer(String model, Tensor... inputs) {
    return infer(InferRequest.builder(model).input(inputs).build());
  }

  /**
   * Asks for a prediction.
   *
   * @throws GreenroomException NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for a
   *     tensor the model does not take (the message names the input and says why), UNAVAILABLE,
   *     DEADLINE_EXCEEDED, ...
   */
  public InferResult infer(InferRequest request) {
    String op = "infer " + request.model();
    ModelInferResponse response;
    try {
      response = inference().modelInfer(build(request));
    } catch (StatusRuntimeException | GreenroomException e) {
      throw GreenroomException.of(op, e);
    }
    try {
      return decode(response);
    } catch (GreenroomException e) {
      // The server's answer does not hold what it says: not the caller's fault.
      throw new GreenroomException(op, Status.Code.INTERNAL, "bad answer: " + e.description(), e);
    }
  }

  static ModelInferRequest build(InferRequest request) {
    ModelInferRequest.Builder req =
        ModelInferRequest.newBuilder()
            .setModelName(request.model())
            .setModelVersion(request.version())
            .setId(request.id());
    for (Tensor t : request.inputs()) {
      ModelInferRequest.InferInputTensor.Builder in =
          ModelInferRequest.InferInputTensor.newBuilder()
              .setName(t.name())
              .setDatatype(t.datatype().name());
      for (long d : t.shape()) {
        in.addShape(d);
      }
      if (request.typedContents()) {
        in.setContents(t.toContents());
      } else {
        req.addRawInputContents(UnsafeByteOperations.unsafeWrap(t.toRaw()));
      }
      req.addInputs(in);
    }
    for (String name : request.outputs()) {
      req.addOutputs(ModelInferRequest.InferRequestedOutputTensor.newBuilder().setName(name));
    }
    return req.build();
  }

  static InferResult decode(ModelInferResponse response) {
    List<ByteString> raws = response.getRawOutputContentsList();
    if (!raws.isEmpty() && raws.size() != response.getOutputsCount()) {
      throw GreenroomException.invalid(
          String.format(
              "answer has %d raw contents for %d outputs",
              raws.size(), response.getOutputsCount()));
    }
    List<Tensor> outputs = new ArrayList<>(response.getOutputsCount());
    for (int i = 0; i < response.getOutputsCount(); i++) {
      ModelInferResponse.InferOutputTensor out = response.getOutputs(i);
      long[] shape = out.getShapeList().stream().mapToLong(Long::longValue).toArray();
      Datatype datatype = Datatype.parse(out.getDatatype());
      outputs.add(
          raws.isEmpty()
              ? Tensor.fromContents(out.getName(), datatype, shape, out.getContents())
              : Codec.decodeRaw(
                  out.getName(), datatype, shape, raws.get(i).asReadOnlyByteBuffer()));
    }
    return new InferResult(
        response.getModelName(), response.getModelVersion(), response.getId(), outputs);
  }

  /** Whether a model (a version of it; empty: any) is ready to answer. */
  public boolean modelReady(String model, String version) {
    try {
      return inference()
          .modelReady(ModelReadyRequest.newBuilder().setName(model).setVersion(version).build())
          .getReady();
    } catch (StatusRuntimeException | GreenroomException e) {
      throw GreenroomException.of("model ready " + model, e);
    }
  }

  /**
   * Sends ground truth for {@code model}'s earlier predictions: one message, or a stream of batches
   * when there are more than a thousand items.
   */
  public FeedbackResult sendFeedback(String model, List<FeedbackItem> items) {
    String op = "feedback " + model;
    dev.greenroom.v1.FeedbackResult result;
    try {
      result =
          items.size() <= FEEDBACK_BATCH
              ? feedback().sendFeedback(batch(model, items))
              : streamFeedback(model, items);
    } catch (StatusRuntimeException | GreenroomException e) {
      throw GreenroomException.of(op, e);
    }
    return new FeedbackResult(
        result.getAccepted(), result.getMatched(), result.getUnmatched(), result.getDuplicates());
  }

  private static FeedbackBatch batch(String model, List<FeedbackItem> items) {
    FeedbackBatch.Builder batch = FeedbackBatch.newBuilder().setModel(model);
    for (FeedbackItem item : items) {
      batch.addItems(
          dev.greenroom.v1.FeedbackItem.newBuilder()
              .setRequestId(item.requestId())
              .setRow(item.row())
              .setLabel(item.label()));
    }
    return batch.build();
  }

  private dev.greenroom.v1.FeedbackResult streamFeedback(String model, List<FeedbackItem> items) {
    CompletableFuture<dev.greenroom.v1.FeedbackResult> answer = new CompletableFuture<>();
    StreamObserver<FeedbackBatch> stream =
        deadline(FeedbackGrpc.newStub(channel))
            .streamFeedback(
                new StreamObserver<>() {
                  @Override
                  public void onNext(dev.greenroom.v1.FeedbackResult value) {
                    answer.complete(value);
                  }

                  @Override
                  public void onError(Throwable t) {
                    answer.completeExceptionally(t);
                  }

                  @Override
                  public void onCompleted() {
                    answer.completeExceptionally(
                        Status.INTERNAL
                            .withDescription("the stream ended with no result")
                            .asRuntimeException());
                  }
                });
    // A server that ends the stream early has said why: stop sending, and read it.
    for (int start = 0; start < items.size() && !answer.isDone(); start += FEEDBACK_BATCH) {
      stream.onNext(
          batch(model, items.subList(start, Math.min(start + FEEDBACK_BATCH, items.size()))));
    }
    stream.onCompleted();
    try {
      return answer.get();
    } catch (ExecutionException e) {
      throw Status.fromThrowable(e.getCause()).asRuntimeException();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw Status.CANCELLED.withDescription("interrupted").withCause(e).asRuntimeException();
    }
  }

  /** {@code model}'s current deployment. */
  public Deployment deployment(String model) {
    dev.greenroom.v1.Deployment d;
    try {
      d = deployments().getDeployment(GetDeploymentRequest.newBuilder().setModel(model).build());
    } catch (StatusRuntimeException | GreenroomException e) {
      throw GreenroomException.of("deployment " + model, e);
    }
    Optional<Deployment.Canary> canary =
        d.hasCanary()
            ? Optional.of(
                new Deployment.Canary(d.getCanary().getVersion(), d.getCanary().getWeight()))
            : Optional.empty();
    List<Deployment.Shadow> shadows = new ArrayList<>();
    for (dev.greenroom.v1.Shadow s : d.getShadowsList()) {
      shadows.add(new Deployment.Shadow(s.getVersion(), s.getFraction()));
    }
    return new Deployment(d.getModel(), d.getPrimary(), canary, shadows);
  }

  /** Closes the channel this client made (not one it was given). */
  @Override
  public void close() {
    if (owned == null) {
      return;
    }
    owned.shutdown();
    try {
      if (!owned.awaitTermination(5, TimeUnit.SECONDS)) {
        owned.shutdownNow();
      }
    } catch (InterruptedException e) {
      owned.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }
}
