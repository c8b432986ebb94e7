"""The `scenerec` command tree: its commands, usage errors, and tools that get their own args."""

from __future__ import annotations

import pytest

from scenerec.cli import TOOLS, cli, main


def test_every_command_is_in_the_tree() -> None:
    names = set(cli.list_commands(None))  # type: ignore[arg-type]
    assert {"up", "down", "worker", "load", "convert", "tail", "demo", "forget"} <= names
    assert set(TOOLS) <= names


def test_a_usage_error_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load"]) == 2
    assert "name a built-in data set or give --dataset DIR" in capsys.readouterr().err


def test_a_tool_gets_every_argument_after_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    # --help is the harness's own (argparse exits 0), not the wrapper's.
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0
    assert "usage: python -m evaluation.cli" in capsys.readouterr().out


def test_a_tool_error_is_the_tools_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["social", "--dataset", "x", "--no-such-option"])
    assert exit_.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err
