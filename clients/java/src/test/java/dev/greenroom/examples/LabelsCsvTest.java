package dev.greenroom.examples;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.greenroom.client.FeedbackItem;
import java.io.StringReader;
import java.util.List;
import org.junit.jupiter.api.Test;

class LabelsCsvTest {
  private static List<FeedbackItem> read(String csv) throws Exception {
    return LabelsCsv.read(new StringReader(csv));
  }

  @Test
  void readsLabelsInAnyColumnOrder() throws Exception {
    assertEquals(
        List.of(new FeedbackItem("req-1", 0, "0"), new FeedbackItem("req-1", 1, "2")),
        read("request_id,row,label\nreq-1,0,0\nreq-1,1,2\n"));
    assertEquals(
        List.of(new FeedbackItem("a,\"b\"", 0, "setosa"), new FeedbackItem("c", 4, "x y")),
        read("\uFEFFlabel,request_id,row\r\nsetosa,\"a,\"\"b\"\"\",\r\n\r\n\"x y\",c,4\r\n"));
    assertEquals(List.of(new FeedbackItem("r", 0, "1.5")), read("request_id,label\nr,1.5"));
  }

  @Test
  void errorsSayWhere() {
    assertEquals(
        "header [request_id, row] has no \"label\" column",
        assertThrows(LabelsCsv.FormatException.class, () -> read("request_id,row\nr,1\n"))
            .getMessage());
    assertEquals(
        "line 4: row \"one\" is not an integer",
        assertThrows(
                LabelsCsv.FormatException.class,
                () -> read("request_id,row,label\nr,0,1\n\nr,one,1\n"))
            .getMessage());
    assertEquals(
        "line 2: 2 fields; the header has 3",
        assertThrows(LabelsCsv.FormatException.class, () -> read("request_id,row,label\nr,0\n"))
            .getMessage());
    assertEquals(
        "line 2: a quoted field is not closed",
        assertThrows(LabelsCsv.FormatException.class, () -> read("request_id,label\n\"r,1\n"))
            .getMessage());
    assertEquals(
        "header: the file is empty",
        assertThrows(LabelsCsv.FormatException.class, () -> read("")).getMessage());
  }
}
