"""Payload forms of the Kafka adapter (no broker): binary and OIP v2 JSON, both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

from irkit.runtime.adapters.common import BadInput
from irkit.runtime.adapters.kafka_codec import (
    CONTENT_TYPE_HEADER,
    TENSORS_HEADER,
    PayloadError,
    binary_request,
    decode_request,
    decode_result,
    encode_key,
    encode_result,
    json_request,
)

TENSORS = {
    "image": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "mask": np.array([[True, False, True], [False, False, True]]),
    "ids": np.array([[1, -2], [3, 2**40]], dtype=np.int64),
    "half": np.array([0.5, -1.25], dtype=np.float16),
    "scalar": np.array(3, dtype=np.uint8),
}


def test_binary_request_round_trip_keeps_every_dtype_and_shape() -> None:
    value, headers = binary_request(TENSORS)
    assert dict(headers)[TENSORS_HEADER] == (
        b"image:FP32:2,3,4;mask:BOOL:2,3;ids:INT64:2,2;half:FP16:2;scalar:UINT8:"
    )
    assert len(value) == 96 + 6 + 32 + 4 + 1
    request = decode_request(value, b"req-1", [*headers, ("trace", b"abc")], "t/0/5")
    assert request.binary and request.request_id == "req-1"
    assert request.headers == [("trace", b"abc")]  # codec headers are not carried over
    assert list(request.inputs) == list(TENSORS)
    for name, array in TENSORS.items():
        assert request.inputs[name].dtype == array.dtype
        np.testing.assert_array_equal(request.inputs[name], array)


def test_binary_bytes_are_little_endian_whatever_the_array_order() -> None:
    big = np.array([1.5, -2.0], dtype=">f4")
    value, _ = binary_request({"x": big})
    assert value == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_json_request_round_trip_and_ids() -> None:
    x = TENSORS["image"]
    request = decode_request(json_request({"image": x}, request_id=17), None, None, "t/0/1")
    assert not request.binary and request.request_id == "17" and request.json_id == 17
    np.testing.assert_array_equal(request.inputs["image"], x)
    keyed = decode_request(json_request({"image": x}, request_id=17), b"k", None, "t/0/1")
    assert keyed.request_id == "k" and keyed.json_id == 17  # the key wins, the body id echoes
    anonymous = decode_request(json_request({"image": x}), None, None, "t/3/9")
    assert anonymous.request_id == "t/3/9"
    nested = {"inputs": [{"name": "v", "datatype": "INT32", "shape": [2, 2],
                          "data": [[1, 2], [3, 4]]}]}
    parsed = decode_request(json.dumps(nested).encode(), None, None, "t/0/0")
    np.testing.assert_array_equal(parsed.inputs["v"], np.array([[1, 2], [3, 4]], np.int32))


def test_results_mirror_the_request_form() -> None:
    outputs = {"logits": np.array([[0.25, -1.0]], dtype=np.float32),
               "label": np.array([0], dtype=np.int64)}
    value, headers = binary_request({"x": np.zeros((1, 2), np.float32)})
    binary = decode_request(value, b"b1", [*headers, ("h", b"1")], "d")
    result, result_headers = encode_result(binary, outputs, "m")
    assert dict(result_headers)[TENSORS_HEADER] == b"logits:FP32:1,2;label:INT64:1"
    assert dict(result_headers)["h"] == b"1"
    decoded = decode_result(result, result_headers)
    np.testing.assert_array_equal(decoded["label"], outputs["label"])

    request = decode_request(json_request({"x": np.zeros((1, 2), np.float32)}, "j1",
                                          outputs=["label"]), None, None, "d")
    result, result_headers = encode_result(request, outputs, "m")
    body = json.loads(result)
    assert body == {"id": "j1", "model_name": "m", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}]}
    assert dict(result_headers)[CONTENT_TYPE_HEADER] == b"application/json"


def test_keys_that_are_not_utf8_come_back_unchanged() -> None:
    value, headers = binary_request({"x": np.zeros(1, np.float32)})
    request = decode_request(value, b"\xff\x00id", headers, "d")
    assert encode_key(request.request_id) == b"\xff\x00id"


@pytest.mark.parametrize(
    ("value", "headers", "fragment"),
    [
        (b"", [], "empty message"),
        (b"\xff\xfe", [], "malformed JSON"),
        (b"17", [], "JSON object"),
        (b'{"inputs": []}', [], "non-empty list"),
        (b'{"inputs": [{"name": "x", "datatype": "STRING", "shape": [1], "data": ["a"]}]}',
         [], "unsupported datatype"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
         [], "non-negative"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}',
         [], "needs 3 elements"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},'
         b' {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', [], "twice"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
         b' "outputs": "all"}', [], '"outputs"'),
        (b"\0" * 8, [(TENSORS_HEADER, b"x:FP32:3")], "needs bytes 0..12"),
        (b"\0" * 16, [(TENSORS_HEADER, b"x:FP32:3")], "describes 12"),
        (b"\0" * 4, [(TENSORS_HEADER, b"x:FP99:1")], "unsupported datatype"),
        (b"\0" * 4, [(TENSORS_HEADER, b"x:FP32:one")], "not integers"),
        (b"\0" * 4, [(TENSORS_HEADER, b"x:FP32:-1")], "negative"),
        (b"\0" * 8, [(TENSORS_HEADER, b"x:FP32:1;x:FP32:1")], "twice"),
        (b"\0" * 4, [(TENSORS_HEADER, b"x FP32 1")], "name:DATATYPE"),
        (b"\0" * 4, [(TENSORS_HEADER, "x:FP32:1é".encode())], "ASCII"),
    ],
)
def test_malformed_requests_raise_bad_input(value: bytes, headers: list[tuple[str, bytes]],
                                            fragment: str) -> None:
    with pytest.raises(BadInput) as caught:
        decode_request(value, None, headers, "t/0/0")
    assert fragment in str(caught.value)


def test_asking_for_an_unknown_output_is_a_payload_error() -> None:
    request = decode_request(json_request({"x": np.zeros(1, np.float32)}, outputs=["nope"]),
                             None, None, "d")
    with pytest.raises(PayloadError, match="'nope'"):
        encode_result(request, {"y": np.zeros(1, np.float32)}, "m")
