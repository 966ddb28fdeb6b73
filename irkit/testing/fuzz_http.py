"""Seeded malformed Open Inference Protocol v2 requests, for fuzzing the HTTP adapter.

``malformed_requests(rng, name, width)`` yields ``(body, headers)`` pairs for a model with
one FP32 input ``name`` of shape ``[N, width]``: each is a valid request changed the way a
careless or hostile client would change it (bytes flipped or cut, values of the wrong
JSON type, absurd shapes and datatypes, nesting thousands deep, nulls, strings and
out-of-range numbers in ``data``, binary headers that lie about lengths). Every one must
get a 4xx answer with a JSON ``{"error": ...}`` body; none may crash the server.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

Request = tuple[bytes, dict[str, str]]

_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 2**63, 2**64, 1e39, -1e308, "x", "", [], {}, [[]], [None], "FP32",
    [1] * 65, [0, 2**62, 2**62], [-1, 64], [1.5, 64], ["1", "64"], {"a": 1},
)  # fmt: skip

_DATATYPES = ("FP32", "FP16", "FP64", "INT8", "UINT64", "BOOL", "BYTES", "fp32", "", "COMPLEX")


def valid_request(rng: random.Random, name: str, width: int) -> dict[str, Any]:
    rows = rng.randint(1, 4)
    data = [round(rng.uniform(-2, 2), 3) for _ in range(rows * width)]
    return {"id": str(rng.randrange(10**6)),
            "inputs": [{"name": name, "shape": [rows, width], "datatype": "FP32", "data": data}]}


def _mutate_doc(doc: dict[str, Any], rng: random.Random, width: int) -> Any:
    tensor = doc["inputs"][0]
    kind = rng.randrange(12)
    if kind == 0:  # a field of the tensor gets a value of the wrong type or range
        tensor[rng.choice(("name", "shape", "datatype", "data", "parameters"))] = rng.choice(
            _VALUES)
    elif kind == 1:
        tensor["datatype"] = rng.choice(_DATATYPES)
        tensor["shape"] = [1, width + rng.choice((-1, 1, 1000))]
    elif kind == 2:  # one element of data replaced by something that is not a number
        data = tensor["data"]
        data[rng.randrange(len(data))] = rng.choice((None, "0.5", 1e39, -1e39, [1], {}, True))
    elif kind == 3:  # nesting far past any sane depth
        depth = rng.choice((600, 5000, 60000))
        return "[" * depth + "]" * depth if rng.random() < 0.5 else (
            '{"a":' * depth + "1" + "}" * depth)
    elif kind == 4:
        doc["inputs"] = rng.choice(_VALUES)
    elif kind == 5:
        doc["outputs"] = rng.choice(([{"name": "nope"}], "logits", [1], [{"name": None}]))
    elif kind == 6:
        doc["parameters"] = rng.choice(({"binary_data_output": "yes"}, [1], "x"))
    elif kind == 7:  # shape and data disagree
        tensor["shape"] = [rng.choice((0, 2, 10**6)), width]
    elif kind == 8:
        tensor["shape"] = [1] * rng.choice((33, 65, 200))
    elif kind == 9:
        doc["inputs"].append(dict(tensor))  # the same input twice
    elif kind == 10:
        tensor["parameters"] = {"binary_data_size": rng.choice((-1, 10**12, "8", 1.5))}
    else:
        return rng.choice(_VALUES)  # not an object at all
    return doc


def _mutate_bytes(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        op = rng.randrange(3)
        if op == 0:
            data[i] = rng.randrange(256)
        elif op == 1:
            del data[i : i + rng.randint(1, 20)]
        else:
            data[i:i] = rng.choice((b"{", b"]", b'"', b"\\", b"\xff", b"NaN", b",", b"\x00"))
    return bytes(data)


def _binary(doc: dict[str, Any], rng: random.Random, width: int) -> Request:
    """A binary-extension request whose lengths lie in one way or another."""
    rows = doc["inputs"][0]["shape"][0]
    payload = bytes(rng.randrange(256) for _ in range(rows * width * 4))
    size = rng.choice((len(payload) - 4, len(payload) + 4, 0, len(payload)))
    del doc["inputs"][0]["data"]
    doc["inputs"][0]["parameters"] = {"binary_data_size": size}
    head = json.dumps(doc).encode()
    split = rng.choice((len(head) + 1, -1, len(head) - 1, 10**9, len(head)))
    extra = b"" if size != len(payload) or split != len(head) else b"junk"
    headers = {"Inference-Header-Content-Length": rng.choice((str(split), "abc", "1e3", ""))}
    return head + payload + extra, headers


def malformed_requests(rng: random.Random, name: str, width: int) -> Iterator[Request]:
    """Endless malformed requests (see the module docstring)."""
    while True:
        doc = valid_request(rng, name, width)
        kind = rng.randrange(4)
        if kind == 0:
            yield _mutate_bytes(json.dumps(doc).encode(), rng), {}
        elif kind == 1:
            yield _binary(doc, rng, width)
        else:
            mutated = _mutate_doc(doc, rng, width)
            text = mutated if isinstance(mutated, str) else json.dumps(mutated)
            yield text.encode(), {}
