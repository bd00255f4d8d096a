package dev.greenroom.examples;

import dev.greenroom.client.FeedbackItem;
import java.io.IOException;
import java.io.Reader;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Feedback labels from CSV: a header naming the columns request_id, row and label (in any order;
 * row may be left out, or left empty, meaning 0), then one line per label. Fields may be quoted (""
 * is a quote inside quotes); lines end with LF or CRLF; blank lines are skipped.
 */
public final class LabelsCsv {
  private LabelsCsv() {}

  /** A CSV file that does not hold labels. */
  public static final class FormatException extends Exception {
    private static final long serialVersionUID = 1L;

    FormatException(String message) {
      super(message);
    }
  }

  /** The labels in {@code in}. */
  public static List<FeedbackItem> read(Reader in) throws IOException, FormatException {
    List<Record> records = parse(in);
    if (records.isEmpty()) {
      throw new FormatException("header: the file is empty");
    }
    List<String> header = records.get(0).fields();
    Map<String, Integer> column = new HashMap<>();
    for (int i = 0; i < header.size(); i++) {
      String name = header.get(i).strip();
      if (i == 0 && name.startsWith("\uFEFF")) {
        name = name.substring(1); // a byte order mark
      }
      column.putIfAbsent(name, i);
    }
    for (String name : List.of("request_id", "label")) {
      if (!column.containsKey(name)) {
        throw new FormatException("header " + header + " has no \"" + name + "\" column");
      }
    }
    List<FeedbackItem> items = new ArrayList<>();
    for (int r = 1; r < records.size(); r++) {
      List<String> record = records.get(r).fields();
      int line = records.get(r).line();
      if (record.size() != header.size()) {
        throw new FormatException(
            "line " + line + ": " + record.size() + " fields; the header has " + header.size());
      }
      long row = 0;
      Integer rowColumn = column.get("row");
      if (rowColumn != null && !record.get(rowColumn).isEmpty()) {
        String text = record.get(rowColumn);
        try {
          row = Long.parseLong(text.strip());
        } catch (NumberFormatException e) {
          throw new FormatException("line " + line + ": row \"" + text + "\" is not an integer");
        }
      }
      items.add(
          new FeedbackItem(
              record.get(column.get("request_id")), row, record.get(column.get("label"))));
    }
    return items;
  }

  /** One CSV record and the line it starts on. */
  record Record(int line, List<String> fields) {}

  /** The records of CSV text. */
  static List<Record> parse(Reader in) throws IOException, FormatException {
    List<Record> records = new ArrayList<>();
    List<String> record = new ArrayList<>();
    StringBuilder field = new StringBuilder();
    boolean quoted = false;
    boolean wasQuoted = false;
    int line = 1;
    int start = 1;
    int c = in.read();
    while (c != -1) {
      if (c == '\n') {
        line++;
      }
      if (quoted) {
        if (c == '"') {
          int next = in.read();
          if (next == '"') {
            field.append('"');
          } else {
            quoted = false;
            c = next;
            continue;
          }
        } else {
          field.append((char) c);
        }
      } else if (c == '"' && field.length() == 0 && !wasQuoted) {
        quoted = true;
        wasQuoted = true;
      } else if (c == ',') {
        record.add(field.toString());
        field.setLength(0);
        wasQuoted = false;
      } else if (c == '\n') {
        end(records, start, record, field, wasQuoted);
        record = new ArrayList<>();
        wasQuoted = false;
        start = line;
      } else if (c != '\r') {
        field.append((char) c);
      }
      c = in.read();
    }
    if (quoted) {
      throw new FormatException("line " + start + ": a quoted field is not closed");
    }
    end(records, start, record, field, wasQuoted);
    return records;
  }

  private static void end(
      List<Record> records, int line, List<String> record, StringBuilder field, boolean wasQuoted) {
    if (record.isEmpty() && field.length() == 0 && !wasQuoted) {
      return; // a blank line
    }
    record.add(field.toString());
    field.setLength(0);
    records.add(new Record(line, record));
  }
}
