"""The browser demo, end to end: ``irkit serve`` (a real server process) of a spec with an
llvm and a wasm target, headless Chromium (Debian's ``chromium`` driven by playwright)
drawing digits with mouse events on ``/demo/``.

The page must run the wasm build in the browser, answer what the server's own model
answers for the same 8x8 input, fall back to ``/v2/models/{m}/infer`` with
``?mode=server`` and where WebAssembly is missing, and show a screenshot-worthy page
(saved to the test's directory, and to ``$IRKIT_DEMO_SCREENSHOT`` when set).
CI installs chromium with apt when it is missing (.ci/run); without it this test skips
and says why.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("wasmtime")
pytest.importorskip("ziglang")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                 "(pip install 'irkit[dev]')")

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.service, pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is missing: apt-get install -y chromium "
                       "(.ci/run does it where apt is available)"),
]
IRKIT = [sys.executable, "-m", "irkit"]

SPEC = """
pipeline digits_web {{
  model  = onnx("{model}")
  inputs {{ x: f32[N, 1, 8, 8] }}
  passes {{ fuse }}
  target cpu {{ backend = "llvm" }}
  target web {{ backend = "wasm" }}
  serve http {{ port = {port}, max_batch = 16, max_delay_ms = 1 }}
  output = "{output}"
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def strokes(digit: str, cx: float, cy: float) -> list[tuple[float, float]]:
    if digit == "0":
        return [(cx + 55 * math.sin(t / 40 * 2 * math.pi), cy - 90 * math.cos(t / 40 * 2 * math.pi))
                for t in range(41)]
    if digit == "1":
        return [(cx, cy - 95 + 190 * t / 20) for t in range(21)]
    assert digit == "7"
    top = [(cx - 60 + 120 * t / 10, cy - 90) for t in range(11)]
    return top + [(cx + 60 - 70 * t / 14, cy - 90 + 185 * t / 14) for t in range(1, 15)]


def draw(page: Any, digit: str) -> dict[str, Any]:
    """Clear the pad, draw ``digit`` by mouse and return the page's state once it answered."""
    runs = page.evaluate("window.irkitDemo.runs")
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    points = strokes(digit, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=2)
    page.mouse.up()
    page.wait_for_function(f"window.irkitDemo.runs > {runs}", timeout=30000)
    state = page.evaluate("window.irkitDemo")
    assert page.inner_text("#answer") == str(state["answer"])
    return state


@pytest.fixture(scope="module")
def server(digits_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("demo")
    port = free_port()
    spec = root / "digits_web.irk"
    spec.write_text(SPEC.format(model=digits_models / "digits_cnn.onnx", port=port,
                                output=root / "build"))
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen([*IRKIT, "serve", str(spec), "--adapter", "http"], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # builds both targets first
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"irkit serve did not come up: "
                                   f"{(root / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, root / "build"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Any:
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield instance
        instance.close()


def open_demo(browser: Any, url: str, init_script: str | None = None) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 780, "height": 600})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    page.wait_for_function("window.irkitDemo !== undefined", timeout=60000)
    return page, errors


def server_answer(artifact: Path, pixels: list[float]) -> int:
    import irkit.runtime

    model = irkit.runtime.load(artifact)
    x = np.asarray(pixels, np.float32).reshape(1, 1, 8, 8)
    return int(model.run({"x": x})["logits"].argmax())


def test_page_runs_the_wasm_model_in_chromium(server: Any, browser: Any, tmp_path: Path) -> None:
    url, build = server
    page, errors = open_demo(browser, f"{url}/demo/")
    assert page.evaluate("window.irkitDemo.mode") == "wasm"
    assert page.evaluate("window.irkitDemo.variant") == "wasm32-simd"
    assert "WebAssembly (wasm32-simd)" in page.inner_text("#mode")
    answers = {}
    for digit in ("0", "1", "7"):
        state = draw(page, digit)
        answers[digit] = state["answer"]
        # The browser's answer is the server model's answer for the same pixels.
        assert state["answer"] == server_answer(build / "cpu", state["input"]), digit
        assert 0 < state["latencyMs"] < 50
        assert "per run" in page.inner_text("#latency")
    assert answers == {"0": 0, "1": 1, "7": 7}
    shot = page.screenshot(path=str(tmp_path / "demo.png"))
    if os.environ.get("IRKIT_DEMO_SCREENSHOT"):
        shutil.copyfile(tmp_path / "demo.png", os.environ["IRKIT_DEMO_SCREENSHOT"])
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []


def test_server_mode_and_no_webassembly_fall_back(server: Any, browser: Any) -> None:
    url, build = server
    page, errors = open_demo(browser, f"{url}/demo/?mode=server")
    assert page.evaluate("window.irkitDemo.mode") == "server"
    state = draw(page, "7")
    assert state["answer"] == 7 == server_answer(build / "cpu", state["input"])
    assert "HTTP round trip" in page.inner_text("#latency")
    page, errors = open_demo(browser, f"{url}/demo/", "delete globalThis.WebAssembly;")
    assert page.evaluate("window.irkitDemo.mode") == "server"
    assert "no WebAssembly in this browser" in page.inner_text("#mode")
    assert draw(page, "0")["answer"] == 0
    assert errors == []


def test_demo_serves_only_artifact_files_with_their_types(server: Any) -> None:
    url, _ = server
    types = {}
    for path in ("model.mjs", "wasm32-simd/model.wasm", "wasm32/model.wasm", "model.d.ts"):
        with urllib.request.urlopen(f"{url}/demo/models/digits_web/{path}") as response:
            types[path] = response.headers["content-type"]
    assert types["model.mjs"].startswith("text/javascript")
    assert types["wasm32-simd/model.wasm"] == "application/wasm"
    for bad in ("manifest.json/../x", "nope.bin", "../cpu/model.o"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}/demo/models/digits_web/{bad}")
        assert info.value.code == 404
