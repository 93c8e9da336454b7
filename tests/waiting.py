"""Waiting on a condition with a deadline: a test that waits for something that never comes fails, saying
what it waited for, instead of hanging (the per-test pytest-timeout is the backstop, not the message)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def until(
    check: Callable[[], T | Awaitable[T]], what: str, timeout: float = 120, every: float = 0.01
) -> T:
    """Polls `check` (a function, or a coroutine function) on the event loop until it returns something
    true, and returns that; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)
