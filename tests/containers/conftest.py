"""Fixtures of the container tests: the images are built once per test session."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from support.containers import DEPLOY, IMAGES, ROOT, podman_missing


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Every image (deploy/images.sh: a debootstrap base, then podman builds with layer caching).

    Returns podman's environment (CONTAINERS_CONF as images.sh wrote it).
    """
    reason = podman_missing()
    if reason:
        pytest.skip(reason)
    done = subprocess.run([str(DEPLOY / "images.sh"), *IMAGES], capture_output=True, text=True, timeout=1500)
    if done.returncode != 0:
        pytest.fail(f"deploy/images.sh failed:\n{done.stderr[-4000:]}")
    conf = os.environ.get("CONTAINERS_CONF") or str(ROOT / ".data" / "containers.conf")
    return {**os.environ, "CONTAINERS_CONF": conf}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        stack = getattr(item, "funcargs", {}).get("channels") or getattr(item, "funcargs", {}).get("stack")
        stack = getattr(stack, "stack", stack)
        if stack is not None and hasattr(stack, "logs"):
            report.sections.append(("containers", stack.logs()))
    return report
