package dev.greenroom.client;

import java.util.List;
import java.util.Optional;

/**
 * A model's answer.
 *
 * @param modelName the model that answered
 * @param modelVersion the version that answered
 * @param id the request id: the caller's, or one the gateway made
 * @param outputs the output tensors, decoded whether the server sent them raw or typed
 */
public record InferResult(String modelName, String modelVersion, String id, List<Tensor> outputs) {

  public InferResult {
    outputs = List.copyOf(outputs);
  }

  /** The output tensor called {@code name}, if the answer has one. */
  public Optional<Tensor> output(String name) {
    return outputs.stream().filter(t -> t.name().equals(name)).findFirst();
  }
}
