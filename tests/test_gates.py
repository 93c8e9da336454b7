"""Each skip for a missing service or package (tests/gates.py) turns into a failure under the variable CI
sets, and only a package that is not installed at all is skipped: one that is installed but broken fails."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import gates, haproxy


def _skips_unless_required(monkeypatch: pytest.MonkeyPatch, variable: str, gate: Callable[[], object],
                           reason: str) -> None:  # fmt: skip
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(pytest.skip.Exception, match=reason):
        gate()
    monkeypatch.setenv(variable, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{variable} is set but .*{reason}"):
        gate()


@pytest.mark.parametrize(
    ("gate", "package"), [(haproxy.haproxy_binary, "haproxy"), (haproxy.nginx_binary, "nginx-light")]
)
def test_a_missing_proxy_skips_only_when_not_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gate: Callable[[], str], package: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(haproxy, "SBIN", (str(tmp_path),))
    _skips_unless_required(monkeypatch, "VOXPORT_REQUIRE_PROXIES", gate, f"{package} is not installed")


def test_a_proxy_on_the_path_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "haproxy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("VOXPORT_REQUIRE_PROXIES", "1")
    assert haproxy.haproxy_binary() == str(binary)


@pytest.mark.parametrize("module", ["triton", "nanovllm_voxcpm", "matplotlib"])
def test_a_missing_package_skips_only_when_not_required(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # hidden, installed or not: find_spec answers None
    gate = lambda: gates.require_module(module, "the dev extra installs it")  # noqa: E731
    _skips_unless_required(monkeypatch, gates.PACKAGES, gate, f"{module} is not installed")


def test_an_installed_package_that_fails_to_import_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "voxport_broken_package").mkdir()
    (tmp_path / "voxport_broken_package" / "__init__.py").write_text("import voxport_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(gates.PACKAGES, raising=False)
    with pytest.raises(ModuleNotFoundError, match="voxport_no_such_dependency"):
        gates.require_module("voxport_broken_package", "installed, but broken")
