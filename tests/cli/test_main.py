"""The `cryorefine` command: eight sub-commands, each with its own options."""

import subprocess
import sys

import pytest

from cryorefine.cli.main import COMMANDS, main

COMMAND_NAMES = [
    "refine",
    "reconstruct",
    "extract",
    "star-handler",
    "postprocess",
    "simulate",
    "report",
    "demo",
    "image-handler",
]


def test_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "cryorefine", "--help"], capture_output=True, text=True, check=True
    )
    for command in COMMAND_NAMES:
        assert command in result.stdout
    assert sorted(COMMANDS) == sorted(COMMAND_NAMES)


def test_star_handler_help_uses_relions_option_names(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["star-handler", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--i",
        "--o",
        "--center",
        "--center_X",
        "--center_Y",
        "--center_Z",
        "--select",
        "--minval",
        "--maxval",
        "--combine",
    ):
        assert option in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_option_of_a_built_command_is_refused():
    with pytest.raises(SystemExit) as stop:
        main(["star-handler", "--i", "a.star", "--o", "b.star", "--no_such_option"])
    assert stop.value.code == 2
