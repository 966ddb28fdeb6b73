"""The README's commands, checked: what a new user is told must be what they get.

Every fenced block of README.md is checked:

- a block after ``<!-- doc-test: run -->`` runs as written (``bash -euo pipefail`` for
  bash, ``python`` for python) in a fresh copy of the repository (its git-tracked files),
  with this environment's ``irkit`` and ``python`` first on PATH. The only change made to
  block is its ports: ``8080`` (HTTP) and ``9092`` (the embedded Kafka broker, also in
  the copy's ``specs/digits.irk``) become free ports, so that parallel runs and a busy
  machine do not collide. Servers a block leaves in the background are stopped
  (SIGTERM to the block's process group) at the end. The models ``scripts/make_models.py`` writes are copied in
  from the session fixture first (the script is still run, and skips models that exist).
- a ``text`` block after ``<!-- doc-test: output -->`` is what the run block before it
  prints (stdout and stderr together): each line appears, in order, inside a line of the
  output; ``...`` stands for any number of lines.
- every other bash block is checked without running it (it may serve forever, need a
  broker or take minutes): each ``irkit ...`` command must parse with irkit's own
  argument parser, each ``python path.py`` / ``scripts/...`` must name a file that
  exists; python blocks must compile.
- every relative link of the README points at a file of the repository.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from irkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(\w+)\s*-->\s*$")


@dataclass
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    directive: str | None


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        directive = DIRECTIVE.match(lines[start - 1]) if start > 0 else None
        blocks.append(Block(match.group(1), "\n".join(lines[start + 1:j]) + "\n", start + 1,
                            directive.group(1) if directive else None))
        i = j + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a bash block, as word lists: continuation lines joined,
    comments dropped, split at ``;``, ``&&``, ``&``, ``|`` and redirections. A line that
    does not tokenize on its own (a quoted string spanning lines) is skipped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:
            continue
        current: list[str] = []
        for token in tokens:
            if token and set(token) <= set(";&|()<>"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def test_directives_are_known_and_outputs_follow_runs() -> None:
    for index, block in enumerate(BLOCKS):
        assert block.directive in (None, "run", "output"), f"README.md:{block.line}"
        if block.directive == "output":
            before = BLOCKS[index - 1]
            assert before.directive == "run", f"README.md:{block.line}: output of no run"
        if block.directive == "run":
            assert block.lang in ("bash", "python"), f"README.md:{block.line}"


def test_every_irkit_command_in_the_readme_parses() -> None:
    checked = 0
    for block in BLOCKS:
        if block.lang != "bash":
            continue
        for words in shell_commands(block.text):
            where = f"README.md:{block.line}: {' '.join(words)}"
            if words[0] == "irkit":
                try:
                    build_parser().parse_args(words[1:])
                except SystemExit as exc:
                    pytest.fail(f"{where}: irkit does not take these arguments ({exc.code})")
                checked += 1
            elif words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
                assert (ROOT / words[1]).is_file(), where
            elif words[0].startswith("scripts/"):
                assert (ROOT / words[0]).is_file(), where
    assert checked >= 15


def test_python_blocks_compile_and_links_resolve() -> None:
    for block in BLOCKS:
        if block.lang == "python":
            compile(block.text, f"README.md:{block.line}", "exec")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README link {target} is not in the repository"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fresh_copy(dest: Path, digits_models: Path) -> Path:
    """The repository's tracked files (what a clone holds) plus the generated models."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell what a clone holds")
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for sub in ("models", "data"):
        shutil.copytree(digits_models.parent / sub, dest / "specs" / sub, dirs_exist_ok=True)
    return dest


def expect_lines(expected: str, output: str, where: str) -> None:
    """Each line of ``expected`` inside a line of ``output``, in order; ``...`` skips."""
    lines = output.splitlines()
    at = 0
    for want in expected.strip().splitlines():
        want = want.strip()
        if want == "...":
            continue
        for k in range(at, len(lines)):
            if want in lines[k]:
                at = k + 1
                break
        else:
            pytest.fail(f"{where}: expected a line with {want!r} (in order) in:\n{output}")


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(digits_models: Path, tmp_path: Path) -> None:
    repo = _fresh_copy(tmp_path / "irkit", digits_models)
    ports = {"8080": str(_free_port()), "9092": str(_free_port())}

    def localize(text: str) -> str:
        for fixed, free in ports.items():
            text = text.replace(fixed, free)
        return text

    spec = repo / "specs" / "digits.irk"
    spec.write_text(localize(spec.read_text()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    env.pop("IRKIT_KAFKA_BROKERS", None)
    groups: list[int] = []
    try:
        _run_blocks(repo, env, localize, groups)
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGTERM)
    assert (repo / "specs" / "out" / "digits_preds.npz" / "manifest.json").is_file()


def _run_blocks(repo: Path, env: dict[str, str], localize: Any, groups: list[int]) -> None:
    ran = 0
    output = ""
    for block in BLOCKS:
        where = f"README.md:{block.line}"
        if block.directive == "output":
            expect_lines(localize(block.text), output, where)
            continue
        if block.directive != "run":
            continue
        text = localize(block.text)
        argv = ["bash", "-euo", "pipefail", "-c", text] if block.lang == "bash" \
            else [sys.executable, "-c", text]
        proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        groups.append(proc.pid)
        try:
            output, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"{where}: still running after 240 s:\n{output}")
        res = proc
        assert res.returncode == 0, f"{where} exited {res.returncode}:\n{output}"
        assert "Traceback" not in output, f"{where}:\n{output}"
        ran += 1
    assert ran >= 7
