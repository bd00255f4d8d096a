package dev.greenroom.client;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * One inference call: the model, its inputs and how to ask.
 *
 * <pre>{@code
 * InferRequest request = InferRequest.builder("iris")
 *     .input(Tensor.matrix("input", rows))
 *     .id("order-42")        // echoed in the answer; feedback refers to it
 *     .build();
 * }</pre>
 *
 * @param model the model's name
 * @param version the version to ask; empty: the deployment chooses (primary, or canary)
 * @param id the request id; empty: the gateway makes one
 * @param inputs the input tensors, in the model's input order
 * @param outputs the outputs to answer; empty: all of the model's
 * @param typedContents send the inputs in typed contents fields instead of raw bytes
 */
public record InferRequest(
    String model,
    String version,
    String id,
    List<Tensor> inputs,
    List<String> outputs,
    boolean typedContents) {

  public InferRequest {
    inputs = List.copyOf(inputs);
    outputs = List.copyOf(outputs);
    version = version == null ? "" : version;
    id = id == null ? "" : id;
  }

  /** A request for {@code model}; add inputs and options, then {@link Builder#build()}. */
  public static Builder builder(String model) {
    return new Builder(model);
  }

  /** Builds an {@link InferRequest}. */
  public static final class Builder {
    private final String model;
    private String version = "";
    private String id = "";
    private final List<Tensor> inputs = new ArrayList<>();
    private final List<String> outputs = new ArrayList<>();
    private boolean typedContents;

    private Builder(String model) {
      this.model = model;
    }

    /** Asks this version; empty (the default) lets the deployment choose. */
    public Builder version(String version) {
      this.version = version;
      return this;
    }

    /** Sets the request id, which the answer echoes and feedback refers to. */
    public Builder id(String id) {
      this.id = id;
      return this;
    }

    /** Adds input tensors, in the model's input order. */
    public Builder input(Tensor... tensors) {
      inputs.addAll(Arrays.asList(tensors));
      return this;
    }

    /** Adds input tensors, in the model's input order. */
    public Builder inputs(List<Tensor> tensors) {
      inputs.addAll(tensors);
      return this;
    }

    /** Asks for these outputs only (default: all of the model's). */
    public Builder outputs(String... names) {
      outputs.addAll(Arrays.asList(names));
      return this;
    }

    /** Sends the inputs in typed contents fields instead of raw bytes. */
    public Builder typedContents() {
      this.typedContents = true;
      return this;
    }

    /** The request. */
    public InferRequest build() {
      return new InferRequest(model, version, id, inputs, outputs, typedContents);
    }
  }
}
