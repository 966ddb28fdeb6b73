"""The gRPC and Kafka decoders refuse the shapes numpy cannot hold (past 32 dims, or
zero-sized with absurd other dims) as bad input naming the tensor, not a raw ValueError;
the batch adapter's JSON lines reader and the Kafka JSON decoder refuse deep nesting."""

from __future__ import annotations

from typing import Any

import pytest

from irkit.runtime.adapters.common import BadInput
from irkit.runtime.adapters.kafka_codec import PayloadError, decode_tensors

SHAPES = {"65-dims": [1] * 65, "huge-empty": [0, 2**62, 2**62]}


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_kafka_binary_header_with_an_impossible_shape_is_a_payload_error(case: str) -> None:
    shape = SHAPES[case]
    count = 1 if 0 not in shape else 0
    with pytest.raises(PayloadError, match="tensor 'x': shape"):
        decode_tensors(b"x:FP32:" + ",".join(map(str, shape)).encode(), b"\0" * 4 * count)


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
@pytest.mark.parametrize("case", sorted(SHAPES))
def test_grpc_request_with_an_impossible_shape_is_bad_input(case: str, raw: bool) -> None:
    pytest.importorskip("grpc")
    from irkit.runtime.adapters.grpc_codec import decode_infer_request
    from irkit.runtime.adapters.oip import inference_pb2 as pb

    shape = SHAPES[case]
    values = [1.0] if 0 not in shape else []
    tensor: Any = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=shape)
    if raw:
        request = pb.ModelInferRequest(model_name="m", inputs=[tensor],
                                       raw_input_contents=[b"\0" * 4 * len(values)])
    else:
        tensor.contents.fp32_contents.extend(values)
        request = pb.ModelInferRequest(model_name="m", inputs=[tensor])
    with pytest.raises(BadInput, match="input 'x': shape"):
        decode_infer_request(request, ["y"])


def test_kafka_json_nested_past_the_recursion_limit_is_a_payload_error() -> None:
    from irkit.runtime.adapters.kafka_codec import _load_json

    with pytest.raises(PayloadError, match="nested too deeply"):
        _load_json(b"[" * 100_000 + b"]" * 100_000)


def test_grpc_raw_response_bytes_equal_the_message_serialized() -> None:
    """``encode_raw_response`` (the irkit transport's ModelInfer answer) is byte for byte
    what protobuf serializes: with and without an id, a selection, a non-contiguous array."""
    pytest.importorskip("grpc")
    import numpy as np

    from irkit.runtime.adapters.grpc_codec import encode_infer_response, encode_raw_response

    result = {"y": np.arange(6, dtype=np.float32).reshape(3, 2).T,
              "label": np.array([3, 2**40], np.int64),
              "flag": np.zeros((2, 1, 0), np.bool_)}  # fmt: skip
    for args in (("m", "1", result), ("m", "2", result, ["label", "y"], "r-" + "x" * 200),
                 ("model-with-a-longer-name", "1", result, ["flag"], "id")):
        for _ in range(2):  # the second time from the cached pieces
            assert encode_raw_response(*args) == encode_infer_response(*args).SerializeToString()
