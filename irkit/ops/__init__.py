"""Op definitions. Standard ops have ONNX semantics (their schemas come from onnx.defs);
irkit-domain ops (fused, quantized, sparse) register here with a decomposition into
standard ops, which is their reference semantics (used by the exporter)."""

from irkit.ops.registry import IRKIT_DOMAIN, IrkitOp, get_irkit_op, is_irkit_op, register_irkit_op

__all__ = ["IRKIT_DOMAIN", "IrkitOp", "get_irkit_op", "is_irkit_op", "register_irkit_op"]
