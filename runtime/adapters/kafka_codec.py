"""Kafka message payloads of the Kafka adapter: Open Inference Protocol v2 JSON and binary.

**JSON form** (``content-type: application/json``, or no ``irkit-tensors`` header): the
value is an OIP v2 inference request::

    {"id": "42", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                             "data": [0.0, 1.5, ...]}],
     "outputs": [{"name": "logits"}]}          # optional: which outputs to return

``data`` is flat (row-major) or nested; ``shape`` gives the tensor's shape. The result is
an OIP v2 inference response with flat ``data``::

    {"id": "42", "model_name": "digits", "outputs": [{"name": "logits",
     "datatype": "FP32", "shape": [1, 10], "data": [...]}]}

**Binary form** (the ``irkit-tensors`` header is present): the header describes the
tensors, the value holds their raw bytes::

    irkit-tensors: x:FP32:1,64;mask:BOOL:1,16
    content-type:  application/vnd.irkit.tensors      (optional on requests)
    value:         bytes of x, then bytes of mask

Each tensor is ``name:DATATYPE:d0,d1,...`` (OIP v2 datatype names; no dims for a
scalar), tensors are separated by ``;``, and the value is the concatenation, in header
order, of each tensor's little-endian, C-order (row-major) element bytes, with no padding.
The value's length must equal the sum of the tensors' sizes. The result has the same
form: an ``irkit-tensors`` header naming the model outputs and their bytes as the value.

The request id is the message key (UTF-8) when there is one, else the JSON body's ``id``,
else ``topic/partition/offset``. Results are keyed by it, carry every request header other
than ``content-type`` and ``irkit-tensors``, and JSON results echo ``id``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from irkit.runtime.adapters.common import (
    DATATYPES,
    BadInput,
    datatype_of,
    decode_tensor,
    encode_tensor,
    shape_problem,
)

CONTENT_TYPE_HEADER = "content-type"
TENSORS_HEADER = "irkit-tensors"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/vnd.irkit.tensors"
CODEC_HEADERS = frozenset({CONTENT_TYPE_HEADER, TENSORS_HEADER})

Headers = list[tuple[str, bytes | None]]


class PayloadError(BadInput):
    """A message is not a well-formed JSON or binary inference request (or result)."""


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of an OIP v2 datatype name (``"FP32"`` -> float32)."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        known = ", ".join(DATATYPES)
        raise PayloadError(f"unsupported datatype {datatype!r}; expected one of {known}")
    return dtype


@dataclass(slots=True)
class Request:
    """One decoded inference request."""

    request_id: str
    binary: bool
    inputs: dict[str, np.ndarray]
    headers: Headers  # carried over to the result (codec headers removed)
    json_id: Any = None  # the JSON body's id, echoed in JSON results
    outputs: tuple[str, ...] | None = None  # outputs asked for (JSON ``outputs``)


def _split_headers(headers: Headers | None) -> tuple[Headers, bytes | None]:
    """(headers to carry over, the ``irkit-tensors`` header's value)."""
    if not headers:
        return [], None
    carried: Headers = []
    tensors = None
    for name, value in headers:
        if name == TENSORS_HEADER:
            tensors = value if value is not None else b""
        elif name != CONTENT_TYPE_HEADER:
            carried.append((name, value))
    return carried, tensors


def decode_request(
    value: bytes | None, key: bytes | None, headers: Headers | None, default_id: str
) -> Request:
    """Decode one message; raises ``PayloadError`` if it is malformed."""
    carried, tensors = _split_headers(headers)
    request_id = _decode_key(key)
    if tensors is not None:
        inputs = decode_tensors(tensors, value or b"")
        return Request(request_id or default_id, True, inputs, carried)
    body = _load_json(value)
    json_id = body.get("id")
    if request_id is None:
        request_id = str(json_id) if json_id is not None else default_id
    inputs = _json_tensors(body.get("inputs"), "inputs")
    outputs = None
    if "outputs" in body:
        wanted = body["outputs"]
        if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
        ):
            raise PayloadError('"outputs" must be a list of {"name": ...} objects')
        outputs = tuple(o["name"] for o in wanted)
    return Request(request_id, False, inputs, carried, json_id, outputs)


def _decode_key(key: bytes | None) -> str | None:
    # surrogateescape: a key that is not UTF-8 still comes back byte for byte (encode_key)
    return key.decode("utf-8", "surrogateescape") if key else None


def encode_key(request_id: str) -> bytes:
    """The Kafka key of a result: the request id's bytes."""
    return request_id.encode("utf-8", "surrogateescape")


def _load_json(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise PayloadError("empty message: expected an OIP v2 JSON inference request")
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("malformed JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise PayloadError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _json_tensors(items: Any, field: str) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise PayloadError(f'"{field}" must be a non-empty list of tensors')
    tensors: dict[str, np.ndarray] = {}
    for item in items:
        array = decode_tensor(item)  # BadInput naming the tensor when it is malformed
        if item["name"] in tensors:
            raise PayloadError(f"{field[:-1]} {item['name']!r} is given twice")
        tensors[item["name"]] = array
    return tensors


@dataclass(frozen=True, slots=True)
class _Layout:
    """One tensor of a parsed ``irkit-tensors`` header."""

    name: str
    dtype: np.dtype[Any]  # little-endian
    shape: tuple[int, ...]
    count: int
    start: int
    end: int


# Producers send the same few headers over and over: parse each distinct one once.
_LAYOUTS: dict[bytes, tuple[_Layout, ...]] = {}
_LAYOUT_CACHE_SIZE = 256


def _parse_layout(description: bytes) -> tuple[_Layout, ...]:
    layout = _LAYOUTS.get(description)
    if layout is not None:
        return layout
    try:
        text = description.decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError(f"the {TENSORS_HEADER} header is not ASCII text") from None
    parsed: list[_Layout] = []
    offset = 0
    for part in text.split(";"):
        fields = part.split(":")
        if len(fields) != 3 or not fields[0]:
            raise PayloadError(
                f"{TENSORS_HEADER} entry {part!r} is not name:DATATYPE:d0,d1,..."
            )
        name, datatype, dims = fields
        if any(t.name == name for t in parsed):
            raise PayloadError(f"tensor {name!r} is given twice in {TENSORS_HEADER}")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        except ValueError:
            raise PayloadError(f"tensor {name!r}: dims {dims!r} are not integers") from None
        if any(d < 0 for d in shape):
            raise PayloadError(f"tensor {name!r}: negative dim in {dims!r}")
        problem = shape_problem(shape)
        if problem is not None:
            raise PayloadError(f"tensor {name!r}: {problem}")
        dtype = dtype_of(datatype).newbyteorder("<")
        count = math.prod(shape)
        end = offset + count * dtype.itemsize
        parsed.append(_Layout(name, dtype, shape, count, offset, end))
        offset = end
    if len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
        _LAYOUTS.clear()
    layout = _LAYOUTS[description] = tuple(parsed)
    return layout


def decode_tensors(description: bytes, value: bytes) -> dict[str, np.ndarray]:
    """Tensors of the binary form: the ``irkit-tensors`` header and the message value."""
    layout = _parse_layout(description)
    size = layout[-1].end
    if size != len(value):
        for tensor in layout:
            if tensor.end > len(value):
                raise PayloadError(
                    f"tensor {tensor.name!r} ({datatype_of(tensor.dtype.newbyteorder('='))}{list(tensor.shape)}) "
                    f"needs bytes {tensor.start}..{tensor.end}, but the value has "
                    f"{len(value)} bytes"
                )
        raise PayloadError(
            f"the value has {len(value)} bytes, but {TENSORS_HEADER} describes {size}"
        )
    return {
        t.name: np.frombuffer(value, t.dtype, t.count, t.start).reshape(t.shape)
        for t in layout
    }


def describe_tensors(tensors: Mapping[str, np.ndarray]) -> str:
    """The ``irkit-tensors`` header for ``tensors``."""
    return ";".join(
        f"{name}:{datatype_of(array.dtype.newbyteorder('='))}:{','.join(map(str, array.shape))}"
        for name, array in tensors.items()
    )


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> tuple[bytes, str]:
    """(value, ``irkit-tensors`` header) of the binary form."""
    chunks = []
    for array in tensors.values():
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        chunks.append(np.ascontiguousarray(little).tobytes())
    return b"".join(chunks), describe_tensors(tensors)


def json_tensors(tensors: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """OIP v2 tensor objects (flat ``data``)."""
    return [
        encode_tensor(name, array.astype(array.dtype.newbyteorder("="), copy=False))
        for name, array in tensors.items()
    ]


def encode_result(
    request: Request, outputs: Mapping[str, np.ndarray], model_name: str
) -> tuple[bytes, Headers]:
    """(value, headers) of the result message for ``request``, in the request's form."""
    if request.outputs is not None:
        unknown = [n for n in request.outputs if n not in outputs]
        if unknown:
            raise PayloadError(
                f"unknown output(s) {', '.join(map(repr, unknown))}; the model's outputs "
                f"are {', '.join(map(repr, outputs))}"
            )
        outputs = {n: outputs[n] for n in request.outputs}
    headers = list(request.headers)
    if request.binary:
        value, description = encode_tensors(outputs)
        headers.append((CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode()))
        headers.append((TENSORS_HEADER, description.encode()))
        return value, headers
    body = {
        "id": request.json_id if request.json_id is not None else request.request_id,
        "model_name": model_name,
        "outputs": json_tensors(outputs),
    }
    headers.append((CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode()))
    return json.dumps(body, separators=(",", ":")).encode(), headers


# -- the client side: build requests, read results (tests, benchmarks, producers) ---------


def json_request(
    inputs: Mapping[str, np.ndarray], request_id: Any = None, outputs: Sequence[str] = ()
) -> bytes:
    """An OIP v2 JSON inference request."""
    body: dict[str, Any] = {"inputs": json_tensors(inputs)}
    if request_id is not None:
        body["id"] = request_id
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(body, separators=(",", ":")).encode()


def binary_request(inputs: Mapping[str, np.ndarray]) -> tuple[bytes, Headers]:
    """(value, headers) of a binary-form request."""
    value, description = encode_tensors(inputs)
    return value, [(TENSORS_HEADER, description.encode()),
                   (CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode())]


def decode_result(value: bytes, headers: Iterable[tuple[str, bytes | None]] | None
                  ) -> dict[str, np.ndarray]:
    """Output tensors of a result message, in either form."""
    described = dict(headers or ()).get(TENSORS_HEADER)
    if described is not None:
        return decode_tensors(described, value)
    body = _load_json(value)
    return _json_tensors(body.get("outputs"), "outputs")
