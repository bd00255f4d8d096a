"""Runs Triton's own Python client (tritonclient.grpc) against a V2 server.

Started by tests/test_tritonclient.py in the tritonclient virtualenv: tritonclient's
stubs and Greenroom's share protobuf symbol names, so they never share a process.
Usage: python triton_client_program.py TARGET INPUTS.npz MODEL[:VERSION] ...
Prints one JSON document: metadata, repository index and outputs per model.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> None:
    target, inputs_path, *models = sys.argv[1:]
    arrays = np.load(inputs_path)
    client = grpcclient.InferenceServerClient(url=target)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(as_json=True),
        "index": client.get_model_repository_index(as_json=True),
        "models": {},
    }
    for spec in models:
        name, _, version = spec.partition(":")
        meta = client.get_model_metadata(name, model_version=version, as_json=True)
        data = arrays[name]
        infer_input = grpcclient.InferInput(meta["inputs"][0]["name"], list(data.shape), "FP32")
        infer_input.set_data_from_numpy(data)
        result = client.infer(
            name, [infer_input], model_version=version, request_id=f"triton-{name}"
        )
        report["models"][spec] = {
            "metadata": meta,
            "ready": client.is_model_ready(name, version),
            "id": result.get_response().id,
            "version": result.get_response().model_version,
            "outputs": {o["name"]: result.as_numpy(o["name"]).tolist() for o in meta["outputs"]},
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
