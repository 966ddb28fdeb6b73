"""irkit's generated OIP gRPC modules: up to date with their generator, wire-identical to
tritonclient's messages, and importable in one process with tritonclient."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
OIP = ROOT / "runtime" / "adapters" / "oip"
GENERATED = ("inference.proto", "inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")

pytest.importorskip("tritonclient.grpc")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_oip_grpc", ROOT / "scripts" /
                                                  "gen_oip_grpc.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_oip_grpc"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_files_match_the_generator(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    import re
    from importlib.metadata import version

    made_by = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'",
                        (OIP / "inference_pb2_grpc.py").read_text())  # fmt: skip
    assert made_by is not None
    if version("grpcio-tools") != made_by.group(1):  # another release words its output apart
        pytest.skip(f"grpcio-tools {version('grpcio-tools')} installed, the files were made "
                    f"by {made_by.group(1)}")
    written = _generator().generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(GENERATED)
    for name in GENERATED:
        assert (tmp_path / name).read_text() == (OIP / name).read_text(), (
            f"{name} is stale: run python scripts/gen_oip_grpc.py")


def _fields(descriptor: Any) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (f.number, f.type,
                 f.is_repeated if hasattr(f, "is_repeated") else f.label == 3,
                 f.message_type.full_name if f.message_type is not None else "")
        for f in descriptor.fields
    }  # fmt: skip


def test_messages_are_wire_identical_to_tritonclient() -> None:
    from tritonclient.grpc import service_pb2 as theirs

    from irkit.runtime.adapters.oip import inference_pb2 as ours

    checked = pruned = 0
    stack = list(ours.DESCRIPTOR.message_types_by_name.values())
    while stack:
        message = stack.pop()
        other = theirs.DESCRIPTOR.pool.FindMessageTypeByName(message.full_name)
        mine, full = _fields(message), _fields(other)
        if message.full_name == "inference.ModelConfig":  # only the fields irkit fills
            assert mine == {name: full[name] for name in mine} and len(mine) == 8
            pruned += 1
        else:
            assert mine == full, message.full_name
        stack += message.nested_types
        checked += 1
    assert checked >= 50 and pruned == 1  # 39 top-level messages and their nested ones
    data_type = ours.DESCRIPTOR.enum_types_by_name["DataType"]
    assert {v.name: v.number for v in data_type.values} == {
        v.name: v.number for v in theirs.DESCRIPTOR.pool.FindEnumTypeByName(
            "inference.DataType").values}  # fmt: skip
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"]  # fmt: skip


def test_both_modules_in_one_process_round_trip() -> None:
    from tritonclient.grpc import service_pb2 as theirs

    from irkit.runtime.adapters.oip import inference_pb2 as ours

    mine = ours.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x01\x02"])
    mine.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend(
        [1.5, 2.5])
    mine.parameters["priority"].int64_param = 3
    back = theirs.ModelInferRequest.FromString(mine.SerializeToString())
    assert back.model_name == "m" and back.id == "7"
    assert list(back.inputs[0].contents.fp32_contents) == [1.5, 2.5]
    assert back.parameters["priority"].int64_param == 3
    assert ours.ModelInferRequest.FromString(back.SerializeToString()) == mine
    assert ours.DESCRIPTOR.pool is not theirs.DESCRIPTOR.pool
