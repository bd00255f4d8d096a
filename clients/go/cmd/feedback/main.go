// Command feedback sends ground truth for earlier predictions to a Greenroom gateway.
//
//	feedback --target HOST:PORT --model NAME --file labels.csv
//
// labels.csv has a header naming the columns request_id, row and label (in any order;
// row may be left out, meaning 0). It prints what the gateway did with them:
// {"accepted", "matched", "unmatched", "duplicates"}.
package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/greenroom-ml/greenroom/clients/go/greenroom"
)

func main() {
	target := flag.String("target", "127.0.0.1:8001", "gateway address, HOST:PORT")
	model := flag.String("model", "", "model name (required)")
	file := flag.String("file", "", "CSV with header request_id,row,label; - for stdin (required)")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the call")
	flag.Parse()
	if *model == "" || *file == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*target, *model, *file, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "feedback:", err)
		os.Exit(1)
	}
}

func run(target, model, path string, timeout time.Duration) error {
	in := os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	items, err := readLabels(in)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	client, err := greenroom.Dial(target)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	result, err := client.SendFeedback(ctx, model, items)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(result)
}

func readLabels(r io.Reader) ([]greenroom.FeedbackItem, error) {
	rows := csv.NewReader(r)
	header, err := rows.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	column := map[string]int{}
	for i, name := range header {
		column[name] = i
	}
	for _, name := range []string{"request_id", "label"} {
		if _, ok := column[name]; !ok {
			return nil, fmt.Errorf("header %v has no %q column", header, name)
		}
	}
	var items []greenroom.FeedbackItem
	for line := 2; ; line++ {
		record, err := rows.Read()
		if errors.Is(err, io.EOF) {
			return items, nil
		}
		if err != nil {
			return nil, err
		}
		item := greenroom.FeedbackItem{RequestID: record[column["request_id"]], Label: record[column["label"]]}
		if i, ok := column["row"]; ok && record[i] != "" {
			item.Row, err = strconv.ParseInt(record[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: row %q is not an integer", line, record[i])
			}
		}
		items = append(items, item)
	}
}
