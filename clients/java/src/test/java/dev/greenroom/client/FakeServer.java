package dev.greenroom.client;

import com.google.protobuf.ByteString;
import dev.greenroom.inference.GRPCInferenceServiceGrpc;
import dev.greenroom.inference.ModelInferRequest;
import dev.greenroom.inference.ModelInferResponse;
import dev.greenroom.inference.ModelReadyRequest;
import dev.greenroom.inference.ModelReadyResponse;
import dev.greenroom.v1.Canary;
import dev.greenroom.v1.Deployment;
import dev.greenroom.v1.DeploymentsGrpc;
import dev.greenroom.v1.FeedbackBatch;
import dev.greenroom.v1.FeedbackGrpc;
import dev.greenroom.v1.FeedbackResult;
import dev.greenroom.v1.GetDeploymentRequest;
import dev.greenroom.v1.Shadow;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Server;
import io.grpc.ServerBuilder;
import io.grpc.Status;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A V2 server and greenroom.v1 control services that answer as a gateway would: "echo" returns its
 * inputs as outputs (raw when they came raw, typed when typed), "nope" is NOT_FOUND, an input named
 * "bad" is INVALID_ARGUMENT; feedback counts what it got.
 */
public final class FakeServer implements AutoCloseable {
  /** Every feedback batch received, in order. */
  public final List<FeedbackBatch> batches = Collections.synchronizedList(new ArrayList<>());

  /** Every inference request received, in order. */
  public final List<ModelInferRequest> requests = Collections.synchronizedList(new ArrayList<>());

  private final Server server;

  private FakeServer(ServerBuilder<?> builder) throws IOException {
    server =
        builder
            .addService(new Inference())
            .addService(new Feedback())
            .addService(new Deployments())
            .build()
            .start();
  }

  /** An in-process server called {@code name}. */
  public static FakeServer inProcess(String name) throws IOException {
    return new FakeServer(InProcessServerBuilder.forName(name).directExecutor());
  }

  /** A plaintext server on a free loopback port. */
  public static FakeServer tcp() throws IOException {
    return new FakeServer(Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create()));
  }

  /** "127.0.0.1:PORT" of a TCP server. */
  public String target() {
    return "127.0.0.1:" + server.getPort();
  }

  @Override
  public void close() throws InterruptedException {
    server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  private final class Inference extends GRPCInferenceServiceGrpc.GRPCInferenceServiceImplBase {
    @Override
    public void modelInfer(ModelInferRequest request, StreamObserver<ModelInferResponse> answer) {
      requests.add(request);
      if (!request.getModelName().equals("echo")) {
        answer.onError(
            Status.NOT_FOUND
                .withDescription("model '" + request.getModelName() + "' is not in the repository")
                .asRuntimeException());
        return;
      }
      ModelInferResponse.Builder response =
          ModelInferResponse.newBuilder()
              .setModelName("echo")
              .setModelVersion(
                  request.getModelVersion().isEmpty() ? "1" : request.getModelVersion())
              .setId(request.getId().isEmpty() ? "made-by-server" : request.getId());
      for (int i = 0; i < request.getInputsCount(); i++) {
        ModelInferRequest.InferInputTensor in = request.getInputs(i);
        if (in.getName().equals("bad")) {
          answer.onError(
              Status.INVALID_ARGUMENT
                  .withDescription("input 'bad': shape [1] is not [-1, 4]")
                  .asRuntimeException());
          return;
        }
        if (!request.getOutputsList().isEmpty()
            && request.getOutputsList().stream().noneMatch(o -> o.getName().equals(in.getName()))) {
          continue;
        }
        ModelInferResponse.InferOutputTensor.Builder out =
            ModelInferResponse.InferOutputTensor.newBuilder()
                .setName(in.getName())
                .setDatatype(in.getDatatype())
                .addAllShape(in.getShapeList());
        if (request.getRawInputContentsCount() > 0) {
          ByteString raw = request.getRawInputContents(i);
          response.addRawOutputContents(raw);
        } else {
          out.setContents(in.getContents());
        }
        response.addOutputs(out);
      }
      answer.onNext(response.build());
      answer.onCompleted();
    }

    @Override
    public void modelReady(ModelReadyRequest request, StreamObserver<ModelReadyResponse> answer) {
      answer.onNext(
          ModelReadyResponse.newBuilder().setReady(request.getName().equals("echo")).build());
      answer.onCompleted();
    }
  }

  private static FeedbackResult count(List<FeedbackBatch> batches) {
    long n = 0;
    long matched = 0;
    for (FeedbackBatch b : batches) {
      n += b.getItemsCount();
      matched +=
          b.getItemsList().stream().filter(it -> it.getRequestId().startsWith("known")).count();
    }
    return FeedbackResult.newBuilder()
        .setAccepted(n)
        .setMatched(matched)
        .setUnmatched(n - matched)
        .build();
  }

  private final class Feedback extends FeedbackGrpc.FeedbackImplBase {
    @Override
    public void sendFeedback(FeedbackBatch batch, StreamObserver<FeedbackResult> answer) {
      if (batch.getModel().equals("nope")) {
        answer.onError(
            Status.NOT_FOUND
                .withDescription("model 'nope' is not in the repository")
                .asRuntimeException());
        return;
      }
      batches.add(batch);
      answer.onNext(count(List.of(batch)));
      answer.onCompleted();
    }

    @Override
    public StreamObserver<FeedbackBatch> streamFeedback(StreamObserver<FeedbackResult> answer) {
      List<FeedbackBatch> got = new ArrayList<>();
      return new StreamObserver<>() {
        @Override
        public void onNext(FeedbackBatch batch) {
          batches.add(batch);
          got.add(batch);
        }

        @Override
        public void onError(Throwable t) {}

        @Override
        public void onCompleted() {
          answer.onNext(count(got));
          answer.onCompleted();
        }
      };
    }
  }

  private static final class Deployments extends DeploymentsGrpc.DeploymentsImplBase {
    @Override
    public void getDeployment(GetDeploymentRequest request, StreamObserver<Deployment> answer) {
      Deployment.Builder d = Deployment.newBuilder().setModel(request.getModel()).setPrimary("1");
      if (request.getModel().equals("canaried")) {
        d.setCanary(Canary.newBuilder().setVersion("3").setWeight(0.1));
      }
      d.addShadows(Shadow.newBuilder().setVersion("2").setFraction(0.5));
      answer.onNext(d.build());
      answer.onCompleted();
    }
  }
}
