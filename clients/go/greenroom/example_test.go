package greenroom_test

import (
	"context"
	"fmt"
	"log"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/greenroom-ml/greenroom/clients/go/greenroom"
)

// The README's sample (compiled by go vet and go test; it needs a gateway to run).
func Example() {
	ctx := context.Background()
	client, err := greenroom.Dial("127.0.0.1:8001") // plaintext; pass grpc.DialOptions for TLS
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// A typed 2-D tensor: two rows of four float32 features, sent as raw contents.
	features, err := greenroom.Matrix("input", [][]float32{
		{5.1, 3.5, 1.4, 0.2},
		{6.7, 3.0, 5.2, 2.3},
	})
	if err != nil {
		log.Fatal(err)
	}
	result, err := client.Infer(ctx, "iris", "", []greenroom.Tensor{features},
		greenroom.WithID("order-42"))
	if status.Code(err) == codes.NotFound {
		log.Fatal("no such model: ", err)
	} else if err != nil {
		log.Fatal(err) // INVALID_ARGUMENT names the input and says why, UNAVAILABLE, ...
	}
	label, _ := result.Output("label")
	labels, _ := greenroom.Values[int64](label)
	proba, _ := result.Output("probabilities")
	rows, _ := greenroom.Rows[float64](proba)
	fmt.Println(result.ModelVersion, result.ID, labels, rows)

	// Later, the truth for row 1 of that request.
	fed, err := client.SendFeedback(ctx, "iris", []greenroom.FeedbackItem{
		{RequestID: "order-42", Row: 1, Label: "2"},
	})
	fmt.Println(fed.Matched, err)

	d, err := client.Deployment(ctx, "iris")
	fmt.Println(d.Primary, d.Shadows, err)
}
