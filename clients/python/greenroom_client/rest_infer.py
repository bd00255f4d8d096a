"""The ``infer`` example program: a V2 REST-style JSON request in, the JSON response out.

    python -m greenroom_client.rest_infer --target HOST:PORT --model NAME [--version V]
                                          --input FILE.json

FILE.json: ``{"id": "...", "inputs": [{"name", "shape", "datatype", "data"}]}`` (data flat
or nested, row-major). Prints ``{"model_name", "model_version", "id", "outputs": [{"name",
"shape", "datatype", "data"}]}`` with flat data. The same program exists for Go and
TypeScript (clients/go, clients/node), so their answers can be compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from greenroom_client.client import Client, InferResult
from greenroom_client.errors import GreenroomError, InvalidArgument
from greenroom_client.tensors import DTYPES, datatype_of


def _array(spec: dict[str, Any]) -> npt.NDArray[Any]:
    try:
        name, datatype, shape = spec["name"], spec["datatype"], spec["shape"]
        data = spec["data"]
    except KeyError as exc:
        raise InvalidArgument(f"input is missing {exc.args[0]!r}") from None
    if datatype not in DTYPES:
        raise InvalidArgument(f"input '{name}': unknown datatype {datatype!r}")
    if datatype == "BYTES":
        flat = [x.encode() if isinstance(x, str) else bytes(x) for x in np.ravel(data)]
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = np.asarray(data, dtype=DTYPES[datatype]).ravel()
    return array.reshape(shape)


def _json_data(array: npt.NDArray[Any]) -> list[Any]:
    flat = array.ravel()
    if flat.dtype == object:
        return [x.decode(errors="replace") if isinstance(x, bytes) else x for x in flat]
    return list(flat.tolist())


def rest_response(result: InferResult) -> dict[str, Any]:
    """An answer in the V2 REST response shape, data flat and row-major."""
    return {
        "model_name": result.model,
        "model_version": result.version,
        "id": result.id,
        "outputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype_of(array),
                "data": _json_data(array),
            }
            for name, array in result.outputs.items()
        ],
    }


def run(target: str, model: str, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
    inputs = {spec["name"]: _array(spec) for spec in body.get("inputs", [])}
    with Client(target) as client:
        result = client.infer(model, inputs, version=version, request_id=body.get("id"))
    return rest_response(result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infer", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8001")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default=None)
    parser.add_argument("--input", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        body = json.loads(args.input.read_text())
        print(json.dumps(run(args.target, args.model, args.version, body)))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GreenroomError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
