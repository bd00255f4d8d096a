// Command infer sends one V2 inference request to a Greenroom gateway (or any V2 gRPC
// server) and prints the answer.
//
//	infer --target HOST:PORT --model NAME [--version V] --input FILE.json
//
// FILE.json is a V2 REST-style request, {"id", "inputs": [{"name", "shape", "datatype",
// "data"}]}, data flat or nested; the answer is printed as a V2 REST-style response,
// {"model_name", "model_version", "id", "outputs": [{"name", "shape", "datatype",
// "data"}]}, data flat and row-major. Inputs are sent as raw contents.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/greenroom-ml/greenroom/clients/go/greenroom"
	"github.com/greenroom-ml/greenroom/clients/go/internal/restjson"
)

func main() {
	target := flag.String("target", "127.0.0.1:8001", "gateway address, HOST:PORT")
	model := flag.String("model", "", "model name (required)")
	version := flag.String("version", "", "model version; empty: the deployment decides")
	input := flag.String("input", "", "V2 REST-style request JSON file; - for stdin (required)")
	typed := flag.Bool("typed", false, "send typed contents instead of raw")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of the call")
	flag.Parse()
	if *model == "" || *input == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*target, *model, *version, *input, *typed, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "infer:", err)
		os.Exit(1)
	}
}

func run(target, model, version, input string, typed bool, timeout time.Duration) error {
	file := os.Stdin
	if input != "-" {
		f, err := os.Open(input)
		if err != nil {
			return err
		}
		defer f.Close()
		file = f
	}
	req, err := restjson.ReadRequest(file)
	if err != nil {
		return fmt.Errorf("%s: %w", input, err)
	}
	client, err := greenroom.Dial(target)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	opts := []greenroom.InferOption{greenroom.WithID(req.ID), greenroom.WithOutputs(req.Outputs...)}
	if typed {
		opts = append(opts, greenroom.WithTypedContents())
	}
	result, err := client.Infer(ctx, model, version, req.Inputs, opts...)
	if err != nil {
		return err
	}
	return restjson.WriteResponse(os.Stdout, result)
}
