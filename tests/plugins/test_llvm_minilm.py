"""all-MiniLM-L6-v2 (BERT, batch N and sequence S both symbolic) on the llvm backend
against ONNX Runtime: last_hidden_state within fp32 rtol 1e-4 / atol 1e-5, and the
mean-pooled, L2-normalized sentence embeddings at cosine >= 0.99999."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import irkit
import irkit.runtime
from irkit.runtime.program import programs

ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-4, 1e-5
# (batch, sequence): one artifact serves every binding of N and S.
CASES = [(1, 16), (7, 16), (1, 128), (7, 128), (64, 16)]


@pytest.fixture(scope="module")
def minilm_llvm(minilm_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    graph = irkit.load_model(minilm_onnx)
    artifact = irkit.compile(graph, target="llvm", threads=1)
    assert programs(artifact.entry)[0].symbols == ("N", "N1")
    return irkit.runtime.load(artifact.save(tmp_path_factory.mktemp("minilm") / "llvm"))


def _feed(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    for row in range(batch):
        mask[row, rng.integers(1, seq + 1):] = 0  # padded sentences of varied length
    return {"input_ids": rng.integers(0, 30522, (batch, seq)).astype(np.int64),
            "attention_mask": mask, "token_type_ids": np.zeros((batch, seq), np.int64)}


def _sentence_embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.mark.slow
def test_minilm_matches_onnxruntime(minilm_onnx: Path, minilm_llvm: object) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(minilm_onnx), options,
                                   providers=["CPUExecutionProvider"])
    checked = 0
    for seed, (batch, seq) in enumerate(CASES):
        feed = _feed(batch, seq, seed)
        expected = session.run(None, feed)[0]
        got = minilm_llvm(**feed)["last_hidden_state"]  # type: ignore[operator]
        assert got.shape == (batch, seq, 384)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL,
                                   err_msg=f"batch {batch}, sequence {seq}")
        ours = _sentence_embeddings(got, feed["attention_mask"])
        theirs = _sentence_embeddings(expected, feed["attention_mask"])
        cosine = (ours * theirs).sum(1)
        assert cosine.min() >= 0.99999, (batch, seq, cosine.min())
        checked += 1
    assert checked == len(CASES)
    # 512 position embeddings: a longer sequence is refused before any native code runs.
    with pytest.raises(ValueError, match="past the size"):
        minilm_llvm(**_feed(1, 513, 0))  # type: ignore[operator]
