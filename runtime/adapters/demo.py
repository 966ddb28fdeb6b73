"""The browser demo the HTTP adapter serves at ``/demo/`` for models with a wasm build.

``irkit serve SPEC --adapter http`` adds each pipeline that has a ``backend = "wasm"``
target here (:meth:`DemoSite.add`). The page (``demo.html``) lets a person draw a
digit on a canvas and classifies it in the browser with the model's WebAssembly build,
showing the answer and the latency; where WebAssembly is missing or the module fails to
load, it asks the same server's ``/v2/models/{m}/infer`` instead (hybrid edge/cloud from
one spec), and ``?mode=server`` forces that path.

Routes::

    GET /demo/                          the page
    GET /demo/models.json               [{"model", "input", "shape", "output", "variants"}]
    GET /demo/models/{m}/{file}         a file of model m's wasm artifact (model.mjs,
                                        <arch>/model.wasm, weights.bin, model.d.ts)

Files are read once, checked against the artifact's manifest (only listed files are
served, from memory), with the MIME types browsers require (``application/wasm`` for
``WebAssembly.instantiateStreaming``, ``text/javascript`` for the ES module).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from irkit.runtime.artifact import ArtifactError, read_manifest, read_verified

MIME_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm",
              ".ts": "text/plain", ".bin": "application/octet-stream",
              ".json": "application/json"}


@dataclass
class DemoModel:
    name: str
    files: dict[str, bytes]
    info: dict[str, Any]


class DemoSite:
    """The wasm models shown at ``/demo/`` and the routes that serve them."""

    def __init__(self) -> None:
        self.models: dict[str, DemoModel] = {}
        self.skipped: dict[str, str] = {}

    def add(self, name: str, artifact_dir: str | Path) -> str | None:
        """Show model ``name`` (served at ``/v2/models/{name}``) with the wasm artifact in
        ``artifact_dir``; a model the page cannot feed (it draws one 8x8 digit) is left
        out, and the reason returned (and listed where ``/demo/`` has no model)."""
        directory = Path(artifact_dir)
        manifest = read_manifest(directory)
        if manifest.backend != "wasm":
            raise ArtifactError(f"/demo/ needs a wasm artifact; {directory} is "
                                f"{manifest.backend}")
        files = {rel: read_verified(directory, manifest, rel) for rel in manifest.files}
        if "model.mjs" not in files:
            raise ArtifactError(f"{directory} has no JavaScript loader (compiled with "
                                "loader = false)")
        why = digit_image_mismatch(manifest.inputs)
        if why is not None:
            self.skipped[name] = why
            return why
        spec, out = manifest.inputs[0], manifest.outputs[0]
        variants = [v.get("target", {}).get("name") for v in manifest.entry.get("variants", [])]
        info = {"model": name, "input": spec.name, "dtype": spec.dtype.name,
                "shape": list(spec.shape), "output": out.name, "variants": variants}
        self.models[name] = DemoModel(name, files, info)
        return None

    def routes(self) -> list[Route]:
        return [
            Route("/demo", self.redirect),
            Route("/demo/", self.page),
            Route("/demo/models.json", self.index),
            Route("/demo/models/{model}/{path:path}", self.file),
        ]

    async def redirect(self, request: Request) -> Response:
        return RedirectResponse("/demo/")

    async def page(self, request: Request) -> Response:
        if not self.models:
            error = "no model served here has a wasm target: add target web { backend = " \
                "\"wasm\" } to its pipeline"
            if self.skipped:
                error = "no model served here fits the page: " + "; ".join(
                    f"{name}: {why}" for name, why in self.skipped.items())
            return JSONResponse({"error": error}, 404)
        html = importlib.resources.files("irkit.runtime.adapters").joinpath(
            "demo.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    async def index(self, request: Request) -> Response:
        return JSONResponse([m.info for m in self.models.values()])

    async def file(self, request: Request) -> Response:
        model = self.models.get(request.path_params["model"])
        path = request.path_params["path"]
        if model is None or path not in model.files:
            return JSONResponse({"error": f"not found: {request.url.path}"}, 404)
        suffix = Path(path).suffix
        return Response(model.files[path],
                        media_type=MIME_TYPES.get(suffix, "application/octet-stream"),
                        headers={"Cache-Control": "no-cache"})


def digit_image_mismatch(inputs: Any) -> str | None:
    """Why the page cannot feed a model with these inputs, or None: it sends one float32
    input of 64 values per sample (the 8x8 drawing, e.g. [N, 1, 8, 8] or [N, 64])."""
    if len(inputs) != 1:
        return f"the page draws one 8x8 image; the model has {len(inputs)} inputs"
    spec = inputs[0]
    values = 1
    for d in spec.shape[1:]:
        values = values * d if isinstance(d, int) else -1
    if spec.dtype.name != "float32" or values != 64:
        shape = ", ".join(str(d) for d in spec.shape)
        return (f"the page draws one 8x8 image (float32, 64 values per sample); input "
                f"{spec.name!r} is {spec.dtype.name}[{shape}]")
    return None
