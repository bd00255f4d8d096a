"""Sends single-row requests with Triton's own client (tritonclient.grpc), one per row.

Run by the tests in the tritonclient virtualenv (see triton_client_program.py for why).
Usage: python triton_send_program.py TARGET MODEL ROWS.npy ID_PREFIX
Prints one JSON list: [[request_id, model_version, label], ...].
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> None:
    target, model, rows_path, prefix = sys.argv[1:]
    rows = np.load(rows_path).astype(np.float32)
    client = grpcclient.InferenceServerClient(url=target)
    answers = []
    for i, row in enumerate(rows):
        infer_input = grpcclient.InferInput("input", [1, row.shape[0]], "FP32")
        infer_input.set_data_from_numpy(row[None, :])
        result = client.infer(model, [infer_input], request_id=f"{prefix}{i}")
        response = result.get_response()
        answers.append([response.id, response.model_version, int(result.as_numpy("label")[0])])
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
