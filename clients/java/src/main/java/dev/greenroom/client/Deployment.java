package dev.greenroom.client;

import java.util.List;
import java.util.Optional;

/**
 * Which versions of a model answer, and which watch.
 *
 * @param model the model's name
 * @param primary the version that answers requests that name none
 * @param canary the version that answers a share of those requests, if any
 * @param shadows versions that see a sampled copy of live traffic
 */
public record Deployment(
    String model, String primary, Optional<Canary> canary, List<Shadow> shadows) {

  public Deployment {
    shadows = List.copyOf(shadows);
  }

  /**
   * A version that answers a share of the requests that name no version.
   *
   * @param version the canary version
   * @param weight its share, 0..1
   */
  public record Canary(String version, double weight) {}

  /**
   * A version that sees a sampled copy of live traffic; its answers are recorded, never returned.
   *
   * @param version the shadow version
   * @param fraction the share of requests copied to it, 0..1
   */
  public record Shadow(String version, double fraction) {}
}
