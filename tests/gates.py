"""Skips for a missing service or package, each behind the variable CI sets to make it a failure.

A test that needs something this machine may lack skips here, and fails instead where the variable is set
(.ci/run sets each): a missing dependency must never pass for a working one in CI.

    VOXPORT_REQUIRE_BROWSER     Chromium and playwright (tests/test_playground.py)
    VOXPORT_REQUIRE_PROXIES     HAProxy and nginx (tests/haproxy.py)
    VOXPORT_REQUIRE_PACKAGES    the dev extra's optional packages: triton, nano-vllm-voxcpm, matplotlib
    VOXPORT_REQUIRE_GPU_WHEELS  the carried wheel set, .whl/, and python3.12 (tests/test_gpu_wheels.py)

A package that is installed but fails to import is never skipped: the import error is the failure.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import NoReturn

import pytest

PACKAGES = "VOXPORT_REQUIRE_PACKAGES"


def missing(variable: str, what: str) -> NoReturn:
    """Skip for `what` is missing, or fail where `variable` is set."""
    if os.environ.get(variable):
        pytest.fail(f"{variable} is set but {what}")
    pytest.skip(what, allow_module_level=True)  # also at import, for a module that needs it throughout


def installed(module: str) -> bool:
    """Whether a top-level module can be found, without importing it."""
    return importlib.util.find_spec(module) is not None


def require_module(module: str, install: str) -> ModuleType:
    """Import `module`; skip (or fail under VOXPORT_REQUIRE_PACKAGES) only if it is not installed at all."""
    if not installed(module):
        missing(PACKAGES, f"{module} is not installed ({install})")
    return importlib.import_module(module)
