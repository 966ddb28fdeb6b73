"""Every shape-guard kind of ``irkit.runtime.guards``: input values that give the output
shape the kernels were built for pass, others raise InputError naming the node and the
input, and unknown kinds are refused when an artifact is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from irkit.runtime.guards import RULES, check_guards, validate_guards
from irkit.runtime.signature import InputError

I64, F32 = np.int64, np.float32


@dataclass
class GuardCase:
    kind: str
    in_shape: list[int]
    out_shapes: list[list[int]]
    good: dict[str, Any]  # role -> values giving out_shapes
    bad: dict[str, Any]  # role -> values giving another shape (or invalid)
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, list[int]] = field(default_factory=dict)
    dtype: type = I64

    def guard(self) -> dict[str, Any]:
        return {"op": self.kind, "node": f"node {self.kind} (%y)",
                "inputs": {role: f"{role}_in" for role in self.good},
                "consts": self.consts, "in_shape": self.in_shape,
                "out_shapes": self.out_shapes, "attrs": self.attrs}

    def values(self, which: dict[str, Any]) -> dict[str, np.ndarray]:
        return {f"{role}_in": np.asarray(v, F32 if role in ("scales", "roi") else
                                          self.dtype) for role, v in which.items()}


CASES = [
    GuardCase("reduce", [2, 3, 4], [[2, 1, 4]], {"axes": [1]}, {"axes": [2]},
              {"keepdims": 1}),
    GuardCase("reduce", [2, 3, 4], [[2, 4]], {"axes": [-2]}, {"axes": [0, 1]},
              {"keepdims": 0}),
    GuardCase("reshape", [2, 3, 4], [[6, 4]], {"shape": [-1, 4]}, {"shape": [4, -1]}),
    GuardCase("reshape", [2, 3, 4], [[2, 12]], {"shape": [0, -1]}, {"shape": [-1, 0, 2]}),
    GuardCase("expand", [3, 1], [[2, 3, 4]], {"shape": [2, 1, 4]}, {"shape": [2, 3, 5, 4]}),
    GuardCase("unsqueeze", [3, 4], [[3, 1, 4]], {"axes": [1]}, {"axes": [-1]}),
    GuardCase("squeeze", [3, 1, 4, 1], [[3, 4, 1]], {"axes": [1]}, {"axes": [3]}),
    GuardCase("split", [10, 2], [[3, 2], [7, 2]], {"split": [3, 7]}, {"split": [5, 5]},
              {"axis": 0}),
    GuardCase("pad", [2, 3], [[4, 6]], {"pads": [1, 1, 1, 2]}, {"pads": [0, 1, 1, 2]}),
    GuardCase("pad", [2, 3, 4], [[2, 3, 7]], {"pads": [1, 2], "axes": [-1]},
              {"pads": [1, 2], "axes": [1]}),
    GuardCase("pad", [2, 3, 4], [[2, 5, 4]], {"axes": [1]}, {"axes": [0]},
              consts={"pads": [1, 1]}),
    GuardCase("pad", [2, 3], [[2, 5]], {"pads": [0, 1, 0, 1]}, {"pads": [0, 1, 0]}),
    GuardCase("tile", [2, 3], [[4, 3]], {"repeats": [2, 1]}, {"repeats": [2]}),
    GuardCase("topk", [4, 9], [[4, 3], [4, 3]], {"k": [3]}, {"k": [2]}, {"axis": 1}),
    GuardCase("onehot", [5], [[5, 10]], {"depth": [10]}, {"depth": [11]}, {"axis": -1}),
    GuardCase("onehot", [5], [[3, 5]], {"depth": [3.7]}, {"depth": [2.0]}, {"axis": 0},
              dtype=F32),
    GuardCase("compress", [3, 4], [[3, 2]], {"condition": [1, 0, 1]},
              {"condition": [1, 1, 1, 0]}, {"axis": 1}, dtype=np.bool_),
    GuardCase("compress", [2, 3], [[2]], {"condition": [0, 1, 0, 0, 0, 1]},
              {"condition": [1, 1, 1]}, dtype=np.bool_),
    GuardCase("constant_of_shape", [], [[2, 3]], {"shape": [2, 3]}, {"shape": [3, 2]}),
    GuardCase("resize", [1, 1, 4, 4], [[1, 1, 3, 3]], {"scales": [1.0, 1.0, 0.8, 0.8]},
              {"scales": [1.0, 1.0, 0.7, 0.8]}),
    GuardCase("resize", [1, 1, 2, 2], [[1, 1, 4, 6]], {"scales": [3.0, 2.0]},
              {"scales": [2.0, 3.0]}, {"axes": [3, 2]}),
    GuardCase("resize", [1, 1, 2, 2], [[1, 1, 4, 6]], {"scales": [1.0, 1.0, 2.0, 3.0]},
              {"scales": [1.0, 1.0, -2.0, 3.0]}),
    GuardCase("resize", [1, 1, 4, 4], [[1, 1, 3, 2]], {"sizes": [1, 1, 3, 2]},
              {"sizes": [3, 2]}),
    GuardCase("resize", [1, 1, 2, 4], [[1, 1, 1, 2]], {"sizes": [1, 3]}, {"sizes": [2, 3]},
              {"axes": [2, 3], "policy": "not_larger"}),
    GuardCase("resize", [1, 1, 2, 4], [[1, 1, 2, 3]], {"sizes": [1, 3]}, {"sizes": [1, 9]},
              {"axes": [2, 3], "policy": "not_smaller"}),
    GuardCase("slice", [20, 10, 5], [[3, 10, 5]],
              {"starts": [0, 0], "ends": [3, 10], "axes": [0, 1], "steps": [1, 1]},
              {"starts": [0, 0], "ends": [3, 10], "axes": [0, 1], "steps": [1, 2]}),
    GuardCase("slice", [20, 10, 5], [[19, 3, 2]],
              {"starts": [20, 10, 4], "ends": [0, 0, 1], "axes": [0, 1, 2],
               "steps": [-1, -3, -2]},
              {"starts": [20, 10, 4], "ends": [0, 0, 1], "axes": [0, 1, 2],
               "steps": [-1, -3, 0]}),
    GuardCase("slice", [20, 10, 5], [[20, 0, 5]], {"starts": [1000], "ends": [1000]},
              {"starts": [-1000], "ends": [1000]}, consts={"axes": [1]}),
    GuardCase("slice", [5], [[1]], {"starts": [-10], "ends": [-10], "steps": [-1]},
              {"starts": [-10], "ends": [-9], "steps": [1]}),
    GuardCase("col2im", [1, 5, 5], [[1, 1, 5, 5]],
              {"image_shape": [5, 5], "block_shape": [1, 5]},
              {"image_shape": [5, 5], "block_shape": [2, 5]}),
    GuardCase("col2im", [1, 5, 15], [[1, 1, 5, 5]], {"image_shape": [5, 5]},
              {"image_shape": [5, 6]}, {"pads": [0, 1, 0, 1]}, {"block_shape": [1, 5]}),
    GuardCase("range", [], [[4]], {"start": 1.0, "limit": 2.9, "delta": 0.5},
              {"start": 1.0, "limit": 3.1, "delta": 0.5}, dtype=F32),
    GuardCase("range", [], [[2]], {"start": 10, "limit": 6, "delta": -3},
              {"start": 10, "limit": 6, "delta": 0}),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}{i}" for i, c in enumerate(CASES)])
def test_guard(case: GuardCase) -> None:
    guard = case.guard()
    check_guards([guard], case.values(case.good))
    with pytest.raises(InputError) as info:
        check_guards([guard], case.values(case.bad))
    message = str(info.value)
    assert guard["node"] in message
    if "recompile" in message:  # a shape mismatch names the input and its values
        assert any(f"'{name}'" in message for name in guard["inputs"].values())


def test_every_kind_is_tested() -> None:
    assert {c.kind for c in CASES} == set(RULES)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape guard kind"):
        validate_guards([{"op": "from_the_future"}])
    assert validate_guards([CASES[0].guard()])
