"""GPU templates: the ``gpu`` target family's lowering of the heavy ops.

Registered with :mod:`irkit.lower.templates` when a GPU target is first lowered:

- ``gemm``: the shared-memory tiled GEMM (:mod:`.gemm`) for MatMul and Gemm;
- ``Conv``: the implicit GEMM on the same template, depthwise as one thread per output
  (:mod:`.conv`);
- ``ScaledDotProductAttention``: streaming attention with the running-max softmax
  (:mod:`.attention`);
- ``Softmax``/``LogSoftmax``, ``LayerNormalization``, ``ReduceSum/Mean/Max/Min`` and
  ``GlobalAverage/MaxPool``: a thread block per row, warp-shuffle reductions
  (:mod:`.reduce`).

The kernels are ``block``/``thread`` loops with ``shared`` buffers and barriers (see
``irkit.kir.nodes.GPU_KINDS``); everything else lowers as on a CPU and the cuda backend
maps its independent loops to the grid.
"""

from __future__ import annotations

from irkit.lower.gpu.attention import gpu_attention
from irkit.lower.gpu.conv import plan_conv_gpu
from irkit.lower.gpu.gemm import emit_gemm_gpu
from irkit.lower.gpu.reduce import gpu_global_pool, gpu_layernorm, gpu_reduce, gpu_softmax
from irkit.lower.templates import register_template

FAMILY = "gpu"

register_template(FAMILY, "gemm", "*", emit_gemm_gpu)
register_template(FAMILY, "heavy", "Conv", plan_conv_gpu)
register_template(FAMILY, "lowering", "ScaledDotProductAttention", gpu_attention)
for _op in ("Softmax", "LogSoftmax"):
    register_template(FAMILY, "lowering", _op, gpu_softmax)
register_template(FAMILY, "lowering", "LayerNormalization", gpu_layernorm)
for _op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"):
    register_template(FAMILY, "lowering", _op, gpu_reduce)
for _op in ("GlobalAveragePool", "GlobalMaxPool"):
    register_template(FAMILY, "lowering", _op, gpu_global_pool)

__all__ = ["FAMILY"]
