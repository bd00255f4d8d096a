/** Feedback labels from CSV text with the header `request_id,row,label`. */
import type { FeedbackItem } from "./client";

/** Splits CSV text into records: quoted fields ("" escapes a quote), CRLF or LF lines. */
export function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = "";
  let quoted = false;
  let i = 0;
  const endField = (): void => {
    record.push(field);
    field = "";
  };
  const endRecord = (): void => {
    endField();
    if (!(record.length === 1 && record[0] === "")) records.push(record);
    record = [];
  };
  while (i < text.length) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 1;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") endField();
    else if (c === "\n") endRecord();
    else if (c !== "\r") field += c;
    i += 1;
  }
  if (quoted) throw new SyntaxError("unterminated quoted field");
  if (field !== "" || record.length > 0) endRecord();
  return records;
}

export function feedbackFromCsv(text: string): FeedbackItem[] {
  const [header, ...rows] = parseCsv(text.replace(/^\uFEFF/, ""));
  const columns = header?.map((h) => h.trim());
  const at = (name: string): number => {
    const index = columns?.indexOf(name) ?? -1;
    if (index < 0) throw new SyntaxError(`the CSV header must name request_id,row,label (got ${JSON.stringify(columns)})`);
    return index;
  };
  const [id, row, label] = [at("request_id"), at("row"), at("label")];
  return rows.map((record, i) => {
    const line = i + 2;
    const rowText = (record[row] ?? "").trim();
    if (!/^\d+$/.test(rowText)) throw new SyntaxError(`line ${line}: row ${JSON.stringify(rowText)} is not an integer >= 0`);
    if (record[id] === undefined || record[label] === undefined) throw new SyntaxError(`line ${line}: missing fields`);
    return { requestId: record[id]!, row: Number(rowText), label: record[label]! };
  });
}
