"""irkit pipeline specs: a small declarative language parsed into frozen dataclasses.

```
pipeline digits {
  model  = onnx("models/digits_cnn.onnx")        # or torch("pkg.mod:factory", example = npz(...))
  inputs { x: f32[N, 1, 8, 8] }                  # dims: positive ints or symbols
  eval   = npz("data/digits_eval.npz", input = "x", labels = "y")
  passes { fuse  prune { sparsity = 0.5 } }      # ordered; options in braces
  target cpu  { backend = "llvm" }               # backend omitted: the name is the backend
  target ort                                     # a block with no options may be left out
  serve http  { port = 8080 }                    # one serve block per adapter
  output = "build/digits"                        # default: build/<pipeline> next to the spec
}
```

Language rules (see ``spec.lark`` for the grammar):

- Whitespace and newlines are insignificant; commas between entries are optional.
  Comments start with ``#`` or ``//`` and run to the end of the line.
- Values: double-quoted strings (escapes ``\\" \\\\ \\n \\t \\r \\$``), ints, floats,
  ``true``/``false``, lists ``[a, b]`` and data references ``npz|npy|parquet|csv|jsonl(
  "path", key = value)``.
- ``${VAR}`` and ``${VAR:-default}`` in strings read the environment; an unset variable
  without default is an error; as in the shell, ``:-`` also replaces an empty value.
- Relative paths (model, data references, ``output``, Path-typed options) are resolved
  against the spec file's directory.
- A file holds one or more pipelines with distinct names; in a pipeline, ``model`` is
  required, ``inputs``/``eval``/``passes``/``output`` appear at most once, target names
  and serve adapters are unique. Passes may repeat.
- ``target NAME { backend = "llvm", ... }`` names a target; without ``backend`` the target
  name is the backend name, so ``target wasm {}`` (or just ``target wasm``) uses ``wasm``.
- Data reference keywords: ``input`` (array key or column name(s)), ``labels``, ``limit``
  for all formats except that ``npy`` has no ``input``; ``csv`` adds ``delimiter`` and
  ``header``. Dtypes: ``bool bf16 f16 f32 f64 i8 i16 i32 i64 u8 u16 u32 u64``.

Validation (``validate``, run by ``parse_spec`` unless ``validate=False``) checks names of
frontends, passes, backends and adapters against the plugin registry with a did-you-mean,
and option names, types (an int is accepted for a float; ``object`` takes anything; a
string for a Path option becomes an absolute Path) and choices against ``Entry.options``.
Parts whose module cannot be imported yet are checked by name only. With ``check_files``
(the default) the model file and every data reference in ``model``, ``eval`` and pass
options must exist; serve options are runtime concerns and are not checked.

``parse_spec`` parses and (by default) validates against the plugin registry; every error
is a :class:`SpecError` that names ``file:line:column`` and shows the line with a caret.
"""

from __future__ import annotations

from irkit.spec.errors import SpecError
from irkit.spec.model import (
    DataRef,
    InputDecl,
    ModelSource,
    Options,
    PassSpec,
    Pipeline,
    ServeSpec,
    SpecFile,
    TargetSpec,
    to_data,
)
from irkit.spec.parser import DATA_FORMATS, DTYPES, parse_spec
from irkit.spec.validation import validate

__all__ = [
    "DATA_FORMATS",
    "DTYPES",
    "DataRef",
    "InputDecl",
    "ModelSource",
    "Options",
    "PassSpec",
    "Pipeline",
    "ServeSpec",
    "SpecError",
    "SpecFile",
    "TargetSpec",
    "parse_spec",
    "to_data",
    "validate",
]
