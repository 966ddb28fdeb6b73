"""A throwaway third-party plugin distribution registers a backend and a pass; a spec
uses both; ``irkit plugins`` lists them with their distribution."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import irkit
import irkit.plugins as plugins
import irkit.runtime

PLUGIN_SOURCE = '''
"""A third-party irkit plugin: a pass that drops Identity nodes and an ORT-based backend."""
from dataclasses import dataclass

from irkit.hookspecs import hookimpl
from irkit.passes.base import Pass, PassResult
from irkit.plugins.ort import OrtBackend


@dataclass(frozen=True)
class DropIdentity(Pass):
    name = "drop_identity"
    keep_outputs: bool = True

    def apply(self, graph, context):
        removed = 0
        for node in list(graph.nodes):
            if node.op == "Identity" and not (self.keep_outputs and node.output.is_graph_output):
                node.output.replace_all_uses_with(node.inputs[0])
                graph.remove_node(node)
                removed += 1
        return removed > 0, {"removed": removed}


class ShoutingOrt(OrtBackend):
    """The ORT backend under another name, as a vendor might wrap it."""


@hookimpl
def register_passes(register):
    register("drop_identity", DropIdentity)


@hookimpl
def register_backends(register):
    register("shouting_ort", ShoutingOrt())
'''


def _make_dist(root: Path) -> None:
    (root / "thirdparty_irk").mkdir()
    (root / "thirdparty_irk" / "__init__.py").write_text(PLUGIN_SOURCE)
    info = root / "thirdparty_irk-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-irk\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[irkit]\nthirdparty = thirdparty_irk\n")
    (info / "RECORD").write_text("")


def _model(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Identity", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "tp", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    _make_dist(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset_plugins()
    yield tmp_path
    sys.modules.pop("thirdparty_irk", None)
    plugins.reset_plugins()


def test_third_party_plugin_registers_and_builds(third_party: Path) -> None:
    registry = plugins.load_plugins()
    assert registry.passes["drop_identity"].dist == "thirdparty-irk"
    assert registry.backends["shouting_ort"].plugin == "thirdparty"
    assert plugins.load_plugins() is registry  # idempotent

    _model(third_party / "m.onnx")
    spec = third_party / "tp.irk"
    spec.write_text(textwrap.dedent("""
        pipeline tp {
          model = onnx("m.onnx")
          passes { drop_identity }
          target loud { backend = "shouting_ort" }
          output = "out"
        }
    """))
    built = irkit.build(spec)
    model = irkit.runtime.load(built["loud"])
    assert model.manifest.backend == "ort"  # the wrapper reuses the ort runtime loader
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(model(x=x)["y"], np.maximum(x, 0), rtol=0, atol=0)
    report = model.manifest.report
    assert any("drop_identity" in str(r) for r in report), report

    text = subprocess.run(
        [sys.executable, "-m", "irkit", "plugins"], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(third_party)},
    ).stdout
    assert "drop_identity" in text and "shouting_ort" in text and "thirdparty-irk" in text
    sess = ort.InferenceSession(str(third_party / "m.onnx"))
    np.testing.assert_allclose(model(x=x)["y"], sess.run(None, {"x": x})[0], rtol=1e-6)


def test_duplicate_names_raise_naming_both(third_party: Path) -> None:
    from irkit.hookspecs import hookimpl

    class Clash:
        @hookimpl
        def register_backends(self, register):
            register("ort", object())

    manager = plugins.manager()
    with pytest.raises(plugins.PluginError, match=r"'ort' is registered twice.*builtins.*clash"):
        manager.add_plugin(Clash(), "clash", "clash-dist")


def test_unknown_backend_suggests_a_name() -> None:
    with pytest.raises(irkit.IrkitError, match=r"unknown backend 'ortt'; did you mean 'ort'"):
        plugins.get_registry().get("backends", "ortt")


def test_every_hook_is_documented() -> None:
    import inspect

    from irkit import hookspecs

    for name in ("register_frontends", "register_passes", "register_backends",
                 "register_adapters"):
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and "register(" in fn.__doc__
        assert list(inspect.signature(fn).parameters) == ["register"]
