"""irkit.runtime: load compiled artifacts and run them — no compiler, no onnx, no torch.

```python
import irkit.runtime
m = irkit.runtime.load("build/model")     # verifies manifest.json and every checksum
out = m(x=batch)                          # validates names, dtypes, shapes; -> {name: array}
```

This package imports numpy and the standard library only; each backend's loader imports
its own native library (onnxruntime, llvmlite, …) when an artifact of that backend loads.
"""

from __future__ import annotations

from irkit.runtime.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Artifact,
    ArtifactError,
    Manifest,
    read_manifest,
    verify,
)
from irkit.runtime.loaders import Runner, get_loader, known_loaders, register_loader
from irkit.runtime.model import CompiledModel, load
from irkit.runtime.signature import InputError, InputTypeError, TensorSpec

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Artifact",
    "ArtifactError",
    "CompiledModel",
    "InputError",
    "InputTypeError",
    "Manifest",
    "Runner",
    "TensorSpec",
    "get_loader",
    "known_loaders",
    "load",
    "read_manifest",
    "register_loader",
    "verify",
]
