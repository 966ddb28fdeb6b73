"""ONNX interop shared by every compiler layer: ONNX <-> Graph IR conversion (types,
attributes, import, export) and reference evaluation through ONNX Runtime or
``onnx.reference``.

It imports only :mod:`irkit.ir`, :mod:`irkit.ops` and :mod:`irkit.errors`, so frontends,
passes, lowering and backends may all use it without importing each other.
"""
