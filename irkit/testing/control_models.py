"""Small ONNX models with run-time control flow, built with onnx.helper (no downloads):
greedy decoding of a tiny GRU for a run-time number of steps, and a graph that branches
on a run-time condition and passes tensors through sequences and optionals."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def gru_decoder(vocab: int = 12, embed: int = 8, hidden: int = 16, seed: int = 5
                ) -> onnx.ModelProto:
    """``Loop`` over a trip count ``steps`` (a model input) and a condition (stop when the
    token is ``eos``): embedding (Gather) -> GRU cell -> linear -> ArgMax, the token fed
    back. Outputs: the last token and hidden state, the tokens and logits of every step."""
    rng = np.random.default_rng(seed)
    E = rng.normal(0, 1, (vocab, embed)).astype(np.float32)
    W = rng.normal(0, 0.5, (1, 3 * hidden, embed)).astype(np.float32)
    R = rng.normal(0, 0.5, (1, 3 * hidden, hidden)).astype(np.float32)
    B = rng.normal(0, 0.1, (1, 6 * hidden)).astype(np.float32)
    Wo = rng.normal(0, 1, (hidden, vocab)).astype(np.float32)
    bo = rng.normal(0, 0.1, (vocab,)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((E, "emb"), (W, "gru_w"), (R, "gru_r"), (B, "gru_b"), (Wo, "out_w"), (bo, "out_b"),
              (np.array([1], np.int64), "axis1"))]
    body = helper.make_graph(
        [helper.make_node("Gather", ["emb", "tok_in"], ["x2"]),           # [1, E]
         helper.make_node("Unsqueeze", ["x2", "axis0"], ["x3"]),          # [1, 1, E]
         helper.make_node("GRU", ["x3", "gru_w", "gru_r", "gru_b", "", "h_in"], ["", "h_out"],
                          hidden_size=hidden),                             # [1, 1, H]
         helper.make_node("Squeeze", ["h_out", "axis0"], ["h2"]),        # [1, H]
         helper.make_node("MatMul", ["h2", "out_w"], ["mm"]),
         helper.make_node("Add", ["mm", "out_b"], ["lg"]),            # [1, V]
         helper.make_node("ArgMax", ["lg"], ["tok_out"], axis=1, keepdims=0),  # [1]
         helper.make_node("Equal", ["tok_out", "eos"], ["hit"]),
         helper.make_node("Not", ["hit"], ["go1"]),
         helper.make_node("Squeeze", ["go1", "axis0"], ["cond_out"]),
         helper.make_node("Identity", ["lg"], ["logits_out"]),
         helper.make_node("Identity", ["tok_out"], ["tok_scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("tok_in", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 1, hidden])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("tok_out", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 1, hidden]),
         helper.make_tensor_value_info("tok_scan", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("logits_out", TensorProto.FLOAT, [1, vocab])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "go", "start", "h0"],
                          ["tok_last", "h_last", "tokens", "logits"], body=body)],
        "gru_greedy",
        [helper.make_tensor_value_info("steps", TensorProto.INT64, []),
         helper.make_tensor_value_info("go", TensorProto.BOOL, []),
         helper.make_tensor_value_info("start", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, hidden]),
         helper.make_tensor_value_info("eos", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("tok_last", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [1, 1, hidden]),
         helper.make_tensor_value_info("tokens", TensorProto.INT64, ["T", 1]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", 1, vocab])],
        initializer=inits[:-1])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def branch_and_sequences(rows: int = 4, cols: int = 3) -> onnx.ModelProto:
    """``If`` on a run-time ``flag``, the result split into a sequence, edited
    (SequenceErase/At/Insert/Length), concatenated again, wrapped in an optional, and a
    ``Loop`` over ``n`` steps whose carried tensor grows by a row each step (its shape
    changes across iterations) and whose carried sequence collects the rows."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    info = helper.make_tensor_value_info
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["yt"])], "then", [],
                             [info("yt", f, [rows, cols])])
    other = helper.make_graph([helper.make_node("Add", ["x", "one"], ["ye"])], "else", [],
                              [info("ye", f, [rows, cols])])
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=f),
         helper.make_node("Add", ["fi", "one"], ["scale"]),
         helper.make_node("Mul", ["first", "scale"], ["row"]),
         helper.make_node("Concat", ["acc_in", "row"], ["acc_out"], axis=0),
         helper.make_node("SequenceInsert", ["rows_in", "row"], ["rows_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "grow",
        [info("i", i64, []), info("cond", TensorProto.BOOL, []),
         info("acc_in", f, None), helper.make_tensor_sequence_value_info("rows_in", f, None)],
        [info("cond_out", TensorProto.BOOL, []), info("acc_out", f, None),
         helper.make_tensor_sequence_value_info("rows_out", f, None)])
    nodes = [
        helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other),
        helper.make_node("SplitToSequence", ["y"], ["seq"], axis=0),
        helper.make_node("SequenceLength", ["seq"], ["length"]),
        helper.make_node("SequenceErase", ["seq", "minus1"], ["shorter"]),
        helper.make_node("SequenceAt", ["seq", "zero"], ["first"]),
        helper.make_node("SequenceInsert", ["shorter", "first", "zero"], ["again"]),
        helper.make_node("ConcatFromSequence", ["again"], ["cat"], axis=0),
        helper.make_node("Optional", ["first"], ["maybe"]),
        helper.make_node("OptionalHasElement", ["maybe"], ["has"]),
        helper.make_node("OptionalGetElement", ["maybe"], ["got"]),
        helper.make_node("SequenceEmpty", [], ["none"], dtype=f),
        helper.make_node("Loop", ["n", "", "first", "none"], ["grown", "collected"],
                         body=body),
        helper.make_node("ConcatFromSequence", ["collected"], ["stacked"], axis=0,
                         new_axis=1),
    ]
    consts = [numpy_helper.from_array(np.array(v, dtype=d), name) for name, v, d in (
        ("two", 2.0, np.float32), ("one", 1.0, np.float32), ("zero", 0, np.int64),
        ("minus1", -1, np.int64))]
    graph = helper.make_graph(
        nodes, "branch_and_sequences",
        [info("x", f, [rows, cols]), info("flag", TensorProto.BOOL, []), info("n", i64, [])],
        [info("y", f, [rows, cols]), info("length", i64, []), info("cat", f, [rows, cols]),
         info("has", TensorProto.BOOL, []), info("got", f, [1, cols]),
         info("grown", f, ["G", cols]), info("stacked", f, ["S", 1, cols])],
        initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
