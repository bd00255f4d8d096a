"""The one place where V2 protobuf tensors become numpy arrays and back.

Raw contents are little-endian, row-major, one bytes entry per tensor in tensor order;
a BYTES element is a 4-byte little-endian length followed by its bytes; BOOL is one
byte. Numeric data moves with ``np.frombuffer``/``tobytes``, never element by element
(BYTES must walk its length prefixes: that is the format). Typed contents use the
repeated field of the datatype; FP16 has no typed field in the protocol, so a typed
answer that holds an FP16 tensor is sent raw.

Everything here raises ``InvalidInput``/``InvalidArgument`` with the tensor's name, so a
server can check a request with ``describe_request`` before any runner sees it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from greenroom_client.errors import InvalidArgument, InvalidInput
from greenroom_proto.inference import grpc_service_pb2 as pb

# V2 datatype -> numpy dtype, little-endian. BYTES is an object array of bytes.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# V2 datatype -> the InferTensorContents field that carries it typed (FP16: none).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_KIND_TO_DATATYPE = {"U": "BYTES", "S": "BYTES", "O": "BYTES", "b": "BOOL"}


# A request's input tensor or a response's output tensor: the two share their layout.
_Tensor = pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, datatype and shape of a tensor: a metadata entry (-1 = any size) or a request's."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The V2 datatype for a numpy array (strings and objects travel as BYTES)."""
    kind = array.dtype.kind
    if kind in _KIND_TO_DATATYPE:
        return _KIND_TO_DATATYPE[kind]
    for name, dtype in DTYPES.items():
        if dtype.kind == kind and dtype.itemsize == array.dtype.itemsize:
            return name
    raise InvalidArgument(f"numpy dtype {array.dtype} has no V2 datatype")


def _element_count(name: str, shape: Sequence[int]) -> int:
    for dim in shape:
        if dim < 0:
            raise InvalidInput(name, f"shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(
            name, f"unknown datatype '{datatype}' (expected one of {', '.join(DTYPES)})"
        )
    return dtype


def _bytes_elements(name: str, raw: bytes, count: int) -> list[bytes]:
    """Split a raw BYTES buffer into its elements, checking every length prefix."""
    out: list[bytes] = []
    offset, end = 0, len(raw)
    view = memoryview(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(name, "raw BYTES contents end inside a 4-byte length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                name,
                f"raw BYTES element {len(out)} claims {length} bytes; only {end - offset} remain",
            )
        out.append(bytes(view[offset : offset + length]))
        offset += length
        if len(out) > count:
            break
    if len(out) != count:
        raise InvalidInput(
            name, f"raw BYTES contents hold {len(out)}+ elements; shape needs {count}"
        )
    return out


def _check_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> None:
    count = _element_count(name, shape)
    dtype = _dtype(name, datatype)
    if datatype == "BYTES":
        _bytes_elements(name, raw, count)
        return
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            name,
            f"raw contents are {len(raw)} bytes; shape {list(shape)} x {datatype} needs {expected}",
        )


def _typed_values(tensor: _Tensor) -> Any:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            tensor.name, f"{tensor.datatype} has no typed contents; send it in raw contents"
        )
    values = getattr(tensor.contents, field)
    count = _element_count(tensor.name, tensor.shape)
    if len(values) != count:
        shape = list(tensor.shape)
        problem = f"shape {shape} needs {count} values in contents.{field}, got {len(values)}"
        raise InvalidInput(tensor.name, problem)
    return values


def _check_layout(tensors: Sequence[_Tensor], raws: Sequence[bytes]) -> None:
    """Raw contents, when used, hold one entry per tensor and no tensor is also typed."""
    if not raws:
        return
    if len(raws) != len(tensors):
        raise InvalidArgument(
            f"raw contents hold {len(raws)} entries for {len(tensors)} tensors; "
            "send one entry per tensor, in tensor order"
        )
    for tensor in tensors:
        if tensor.HasField("contents"):
            raise InvalidInput(
                tensor.name, "has typed contents while raw contents are also set; use one"
            )


def _specs(tensors: Sequence[_Tensor]) -> list[TensorSpec]:
    """Each tensor's name, datatype and shape, read once; names must be unique."""
    specs = [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors]
    if len({spec.name for spec in specs}) != len(specs):
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise InvalidInput(spec.name, "appears more than once")
            seen.add(spec.name)
    return specs


def describe(tensors: Sequence[_Tensor], raws: Sequence[bytes]) -> list[TensorSpec]:
    """Check that each tensor's data agrees with its shape and datatype, without decoding it.

    Cheap for numeric raw data (a length comparison), so the gateway can afford it on every
    request before forwarding the bytes untouched.
    """
    _check_layout(tensors, raws)
    specs = _specs(tensors)
    for index, spec in enumerate(specs):
        if raws:
            _check_raw(spec.name, spec.datatype, spec.shape, raws[index])
        else:
            _dtype(spec.name, spec.datatype)
            _typed_values(tensors[index])
    return specs


def _narrowed(
    name: str, datatype: str, wide: npt.NDArray[np.int64], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    """INT8/16 and UINT8/16 travel as 32-bit ``int_contents``/``uint_contents``: a value
    the datatype cannot hold is refused, not wrapped around."""
    info = np.iinfo(dtype)
    outside = (wide < info.min) | (wide > info.max)
    if outside.any():
        value = int(wide[outside.argmax()])
        raise InvalidInput(
            name, f"value {value} is out of range for {datatype} ({info.min}..{info.max})"
        )
    return wide.astype(dtype)


def decode(tensors: Sequence[_Tensor], raws: Sequence[bytes]) -> dict[str, npt.NDArray[Any]]:
    """Tensors (typed or raw) as numpy arrays shaped as declared, keyed by name; checked
    as ``describe`` checks them, each tensor's data read once."""
    _check_layout(tensors, raws)
    arrays: dict[str, npt.NDArray[Any]] = {}
    for index, spec in enumerate(_specs(tensors)):
        name, datatype, shape = spec.name, spec.datatype, spec.shape
        dtype = _dtype(name, datatype)
        if raws:
            raw = raws[index]
            if datatype == "BYTES":
                elements = _bytes_elements(name, raw, _element_count(name, shape))
                array = np.empty(len(elements), dtype=object)
                array[:] = elements
            else:
                _check_raw(name, datatype, shape, raw)
                array = np.frombuffer(raw, dtype=dtype)
        else:
            values = _typed_values(tensors[index])
            if datatype == "BYTES":
                array = np.empty(len(values), dtype=object)
                array[:] = list(values)
            elif dtype.kind in "iu" and dtype.itemsize < 4:
                array = _narrowed(name, datatype, np.asarray(values, dtype=np.int64), dtype)
            else:
                array = np.asarray(values, dtype=dtype)
        arrays[name] = array.reshape(shape)
    return arrays


def _as_bytes_elements(array: npt.NDArray[Any]) -> list[bytes]:
    flat = array.ravel()
    if array.dtype.kind == "S":
        return [bytes(x) for x in flat]
    return [x if isinstance(x, bytes) else str(x).encode() for x in flat]


def to_raw(array: npt.NDArray[Any], datatype: str) -> bytes:
    """One tensor's raw contents."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in _as_bytes_elements(array))
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


def _fill_typed(contents: Any, array: npt.NDArray[Any], datatype: str) -> None:
    field = getattr(contents, CONTENTS_FIELD[datatype])
    if datatype == "BYTES":
        field.extend(_as_bytes_elements(array))
    else:
        field.extend(np.asarray(array, dtype=DTYPES[datatype]).ravel().tolist())


def encode(
    tensors: Any,
    raws: Any,
    arrays: Mapping[str, npt.NDArray[Any]],
    raw: bool,
    datatypes: Mapping[str, str] | None = None,
) -> None:
    """Append ``arrays`` to a message's repeated tensor field (and its raw field when ``raw``).

    ``datatypes`` pins a tensor's V2 datatype (from model metadata); otherwise it follows
    the array's dtype. FP16 has no typed form: if any tensor needs raw, all go raw.
    """
    chosen = {
        name: (datatypes or {}).get(name) or datatype_of(np.asarray(array))
        for name, array in arrays.items()
    }
    use_raw = raw or any(dt not in CONTENTS_FIELD for dt in chosen.values())
    for name, value in arrays.items():
        array = np.asarray(value)
        datatype = chosen[name]
        tensor = tensors.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        if use_raw:
            raws.append(to_raw(array, datatype))
        else:
            _fill_typed(tensor.contents, array, datatype)
