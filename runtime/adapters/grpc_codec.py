"""Open Inference Protocol v2 tensors over gRPC: ``ModelInferRequest`` <-> numpy arrays.

Inputs come either all in ``raw_input_contents`` (one little-endian, row-major blob per
input, in input order: what tritonclient sends) or all as typed ``contents`` (the
repeated field of the datatype: ``fp32_contents`` for FP32, ``int_contents`` for
INT8/16/32, ...; FP16 has no typed field and must be raw). Mixing both in one request is
a BadInput, as are an unknown datatype, a shape that the data does not fill, values out
of the datatype's range and a requested output the model does not have.

Responses mirror the request: raw inputs get ``raw_output_contents`` (what tritonclient
reads), typed inputs get typed ``contents`` for every output (raw for all outputs if one
of them has no typed field, since the protocol allows no mix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .common import DATATYPES, BadInput, datatype_of, decode_tensor, shape_problem
from .oip import inference_pb2 as pb

__all__ = ["TYPED_FIELDS", "GrpcInferRequest", "decode_infer_request", "encode_infer_response",
           "encode_raw_response"]

# datatype -> the InferTensorContents field that carries it
TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}  # fmt: skip

OutputTensor = pb.ModelInferResponse.InferOutputTensor


class GrpcInferRequest:
    """A decoded request: input arrays, the outputs asked for (None: all), raw or typed."""

    __slots__ = ("inputs", "outputs", "raw", "request_id")

    def __init__(self, inputs: dict[str, np.ndarray], outputs: list[str] | None,
                 request_id: str, raw: bool) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.request_id = request_id
        self.raw = raw


def _typed_array(tensor: Any) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise BadInput(f"input {name!r}: unsupported datatype {datatype!r}")
    field = TYPED_FIELDS.get(datatype)
    if field is None:
        raise BadInput(f"input {name!r}: {datatype} has no typed contents field; "
                       "send it in raw_input_contents")  # fmt: skip
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise BadInput(f"input {name!r}: shape must be non-negative ints, got {shape}")
    problem = shape_problem(shape)
    if problem is not None:
        raise BadInput(f"input {name!r}: {problem}")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadInput(f"input {name!r}: shape {shape} needs {count} values in "
                       f"contents.{field}, got {len(values)}")  # fmt: skip
    try:
        array = np.array(values, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise BadInput(f"input {name!r}: values do not fit {datatype}: {exc}") from None
    return array.reshape(shape)


# little-endian dtypes of the datatypes, for np.frombuffer
_WIRE_DTYPES = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items()}
# (datatype, shape) -> (wire dtype, bytes expected, whether a byte swap is needed): the
# checks of a raw tensor's header, done once per distinct header (clients repeat them)
_RAW_HEADERS: dict[tuple[str, tuple[int, ...]], tuple[np.dtype, int, bool]] = {}
CACHE_ENTRIES = 256  # per cache of this module: headers clients repeat, not every one seen


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """``value``, kept in ``cache`` under ``key`` while it has room."""
    if len(cache) < CACHE_ENTRIES:
        cache[key] = value
    return value


def _raw_array(tensor: Any, blob: bytes) -> np.ndarray:
    """``common.decode_tensor`` for a raw blob, without building its JSON form first."""
    shape = tuple(tensor.shape)
    key = (tensor.datatype, shape)
    known = _RAW_HEADERS.get(key)
    if known is None:
        wire = _WIRE_DTYPES.get(tensor.datatype)
        if wire is None or any(d < 0 for d in shape) or shape_problem(shape) is not None:
            header = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(shape)}
            return decode_tensor(header, blob)  # raises BadInput naming what is wrong
        known = _remember(_RAW_HEADERS, key, (wire, math.prod(shape) * wire.itemsize,
                                               wire != DATATYPES[tensor.datatype]))
    wire, size, swap = known
    if len(blob) != size:
        raise BadInput(f"input {tensor.name!r}: expected {size} bytes for shape {list(shape)} "
                       f"{tensor.datatype}, got {len(blob)}")  # fmt: skip
    array = np.frombuffer(blob, dtype=wire).reshape(shape)
    return array.astype(DATATYPES[tensor.datatype]) if swap else array


def decode_infer_request(request: Any, output_names: Sequence[str]) -> GrpcInferRequest:
    """Arrays of a ``ModelInferRequest``; BadInput naming the tensor on any mismatch."""
    raw = request.raw_input_contents
    tensors = request.inputs
    if raw and len(raw) != len(tensors):
        raise BadInput(f"{len(raw)} raw_input_contents for {len(tensors)} inputs: give raw "
                       "contents for every input or for none")  # fmt: skip
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in inputs:
            raise BadInput(f"input {name!r} is given twice")
        if raw:
            if tensor.HasField("contents"):
                raise BadInput(f"input {name!r}: typed contents and raw_input_contents "
                               "cannot be mixed")  # fmt: skip
            inputs[name] = _raw_array(tensor, raw[index])
        else:
            inputs[name] = _typed_array(tensor)
    outputs = None
    if request.outputs:
        outputs = []
        for wanted in request.outputs:
            if wanted.name not in output_names:
                raise BadInput(f"requested output {wanted.name!r} is not one of "
                               f"{list(output_names)}")  # fmt: skip
            outputs.append(wanted.name)
    return GrpcInferRequest(inputs, outputs, request.id, bool(raw) or not tensors)


def encode_infer_response(
    model_name: str,
    model_version: str,
    result: Mapping[str, np.ndarray],
    selection: Sequence[str] | None = None,
    request_id: str = "",
    raw: bool = True,
) -> Any:
    """A ``ModelInferResponse`` with the selected outputs (all when ``selection`` is None)."""
    names = list(result) if selection is None else selection
    arrays = [result[name] for name in names]
    datatypes = [datatype_of(array.dtype) for array in arrays]
    if not raw and all(d in TYPED_FIELDS for d in datatypes):
        outputs = [
            OutputTensor(name=name, datatype=datatype, shape=array.shape,
                         contents={TYPED_FIELDS[datatype]: array.ravel().tolist()})
            for name, datatype, array in zip(names, datatypes, arrays)
        ]  # fmt: skip
        return pb.ModelInferResponse(model_name=model_name, model_version=model_version,
                                     id=request_id, outputs=outputs)  # fmt: skip
    outputs = [OutputTensor(name=name, datatype=datatype, shape=array.shape)
               for name, datatype, array in zip(names, datatypes, arrays)]  # fmt: skip
    blobs = [_little_endian_bytes(array) for array in arrays]
    return pb.ModelInferResponse(model_name=model_name, model_version=model_version,
                                 id=request_id, outputs=outputs, raw_output_contents=blobs)


# serialized ModelInferResponse pieces, by (model, version) and by the outputs' headers
_NAME_FIELDS: dict[tuple[str, str], bytes] = {}
_OUTPUT_FIELDS: dict[tuple[Any, ...], bytes] = {}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_raw_response(
    model_name: str,
    model_version: str,
    result: Mapping[str, np.ndarray],
    selection: Sequence[str] | None = None,
    request_id: str = "",
) -> bytes:
    """``encode_infer_response(..., raw=True).SerializeToString()``, the same bytes, built
    from serialized pieces cached per model and per output header: the raw answer's path
    without building message objects (the irkit transport's ModelInfer)."""
    names = list(result) if selection is None else selection
    arrays = [result[name] for name in names]
    key = (model_name, model_version)
    head = _NAME_FIELDS.get(key)
    if head is None:
        head = _remember(_NAME_FIELDS, key, pb.ModelInferResponse(
            model_name=model_name, model_version=model_version).SerializeToString())
    header = tuple((name, array.dtype, array.shape) for name, array in zip(names, arrays))
    outputs = _OUTPUT_FIELDS.get(header)
    if outputs is None:
        tensors = [OutputTensor(name=name, datatype=datatype_of(dtype), shape=shape)
                   for name, dtype, shape in header]  # fmt: skip
        outputs = _remember(_OUTPUT_FIELDS, header,
                            pb.ModelInferResponse(outputs=tensors).SerializeToString())
    parts = [head]
    if request_id:
        encoded = request_id.encode()
        parts += (b"\x1a", _varint(len(encoded)), encoded)  # field 3, id
    parts.append(outputs)
    for array in arrays:
        blob = _little_endian_bytes(array)
        parts += (b"\x32", _varint(len(blob)), blob)  # field 6, raw_output_contents
    return b"".join(parts)


def _little_endian_bytes(array: np.ndarray) -> bytes:
    if array.dtype.byteorder == ">" or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return array.tobytes()
