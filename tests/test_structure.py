"""The layout stays the one docs/architecture.md draws: small modules, thin handlers, HTTP only in api/,
imports downwards only, and a CLI that imports only what its subcommand uses."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "voxport"
MAX_MODULE_LINES = 300
MAX_HANDLER_LINES = 15
_ROUTE_DECORATORS = {"get", "post", "put", "delete", "patch", "head", "api_route"}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "engine" not in p.relative_to(SRC).parts)


def _docstring_gives_a_reason(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return "longer than" in doc and "lines because" in doc


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_outside_the_engine_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES or _docstring_gives_a_reason(path), f"{path.name}: {lines} lines"


def _handlers() -> list[tuple[str, ast.AsyncFunctionDef | ast.FunctionDef]]:
    found = []
    for path in sorted((SRC / "api" / "routes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(call, ast.Attribute) and call.attr in _ROUTE_DECORATORS:
                    found.append((f"{path.stem}.{node.name}", node))
    return found


def test_there_are_route_handlers_to_check() -> None:
    assert len(_handlers()) >= 15


@pytest.mark.parametrize("name,node", _handlers(), ids=lambda v: v if isinstance(v, str) else "")
def test_route_handlers_are_thin(name: str, node: ast.AsyncFunctionDef) -> None:
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring
    lines = body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]
    assert lines <= MAX_HANDLER_LINES, f"{name}: {lines} lines"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_only_the_api_and_the_composition_root_import_the_api() -> None:
    allowed = {SRC / "app.py", SRC / "cli.py"}
    offenders = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "api" not in p.relative_to(SRC).parts[:1]
        and p not in allowed
        and any(m == "voxport.api" or m.startswith("voxport.api.") for m in _imports(p))
    ]
    assert offenders == []


# A status code: a 4xx/5xx number on its own (not a size such as `500 * 2**20`), or an HTTP header or library.
_HTTP = re.compile(r"\b[45]\d\d\b(?!\s*\*)|Retry-After|WWW-Authenticate|starlette|fastapi", re.IGNORECASE)


def test_nothing_below_the_api_speaks_http() -> None:
    below = [SRC / "errors.py", *(p for d in ("speech", "voices", "cluster") for p in (SRC / d).glob("*.py"))]
    hits = [
        f"{p.relative_to(SRC)}:{n}: {line.strip()}"
        for p in below
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if _HTTP.search(line)
    ]
    assert hits == []


def test_importing_the_cli_imports_neither_httpx_nor_the_bench() -> None:
    code = (
        "import sys, voxport.cli; "
        "print(sorted(m for m in sys.modules if m == 'httpx' or m.startswith('voxport.bench')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bench_subcommand_is_dispatched_to_the_bench_package() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voxport", "bench", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--concurrency" in result.stdout
