package dev.greenroom.examples;

import java.time.Duration;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The example programs' command line: {@code --name value}, {@code --name=value} and {@code --flag}
 * (one dash works too), as Go's flag package reads them.
 */
final class Options {
  /** A command line the program cannot run with: print usage, exit 2. */
  static final class UsageException extends Exception {
    private static final long serialVersionUID = 1L;

    UsageException(String message) {
      super(message);
    }
  }

  /** {@code --help}: print usage, exit 0. */
  static final class HelpException extends Exception {
    private static final long serialVersionUID = 1L;

    HelpException() {
      super("help");
    }
  }

  private final Map<String, String> values;

  private Options(Map<String, String> values) {
    this.values = values;
  }

  /**
   * Parses {@code args}: {@code valued} options take a value, {@code flags} take none.
   *
   * @throws UsageException for an unknown option, a missing value or a positional argument
   * @throws HelpException for -h or --help
   */
  static Options parse(String[] args, Set<String> valued, Set<String> flags)
      throws UsageException, HelpException {
    Map<String, String> values = new HashMap<>();
    for (int i = 0; i < args.length; i++) {
      String arg = args[i];
      if (!arg.startsWith("-") || arg.equals("-")) {
        throw new UsageException("unexpected argument: " + arg);
      }
      String name = arg.replaceFirst("^--?", "");
      String value = null;
      int eq = name.indexOf('=');
      if (eq >= 0) {
        value = name.substring(eq + 1);
        name = name.substring(0, eq);
      }
      if (name.equals("h") || name.equals("help")) {
        throw new HelpException();
      }
      if (flags.contains(name)) {
        if (value != null && !value.equals("true") && !value.equals("false")) {
          throw new UsageException("--" + name + " takes no value");
        }
        values.put(name, value == null ? "true" : value);
      } else if (valued.contains(name)) {
        if (value == null) {
          if (i + 1 >= args.length) {
            throw new UsageException("--" + name + " needs a value");
          }
          value = args[++i];
        }
        values.put(name, value);
      } else {
        throw new UsageException("unknown option: " + arg);
      }
    }
    return new Options(values);
  }

  /** The option's value, or {@code fallback}. */
  String get(String name, String fallback) {
    return values.getOrDefault(name, fallback);
  }

  /** The value of an option that must be given (and not empty). */
  String required(String name) throws UsageException {
    String value = values.get(name);
    if (value == null || value.isEmpty()) {
      throw new UsageException("--" + name + " is required");
    }
    return value;
  }

  /** Whether a flag was given. */
  boolean flag(String name) {
    return Boolean.parseBoolean(values.get(name));
  }

  private static final Pattern PART =
      Pattern.compile("(\\d+(?:\\.\\d*)?|\\.\\d+)(ns|us|µs|ms|s|m|h)");

  /** A duration as Go writes them ("30s", "1m30s", "500ms"), or a number of seconds. */
  static Duration duration(String name, String text) throws UsageException {
    try {
      if (text.matches("\\d+(\\.\\d*)?")) {
        return Duration.ofNanos(Math.round(Double.parseDouble(text) * 1e9));
      }
      Matcher m = PART.matcher(text);
      int end = 0;
      double nanos = 0;
      while (m.lookingAt()) {
        double n = Double.parseDouble(m.group(1));
        nanos +=
            n
                * switch (m.group(2)) {
                  case "ns" -> 1;
                  case "us", "µs" -> 1e3;
                  case "ms" -> 1e6;
                  case "s" -> 1e9;
                  case "m" -> 60e9;
                  default -> 3600e9;
                };
        end = m.end();
        m.region(end, text.length());
      }
      if (end == 0 || end != text.length() || nanos <= 0) {
        throw new NumberFormatException();
      }
      return Duration.ofNanos(Math.round(nanos));
    } catch (NumberFormatException | ArithmeticException e) {
      throw new UsageException(
          String.format(Locale.ROOT, "--%s: \"%s\" is not a duration such as 30s", name, text));
    }
  }
}
