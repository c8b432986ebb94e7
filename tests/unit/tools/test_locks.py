"""The two locks are what pyproject.toml declares, at the versions the venv was built with."""

from __future__ import annotations

import pytest

from tools.lock import closure, main


def test_locks_are_the_closure_of_the_declared_dependencies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--check"]) == 0, capsys.readouterr().err


def test_closure_follows_requirements_and_pins_installed_versions() -> None:
    from importlib import metadata

    pins = closure(["pytest>=8"])
    assert pins["pytest"] == metadata.version("pytest")
    assert "pluggy" in pins  # pytest's own requirement
    assert "ruff" not in pins
