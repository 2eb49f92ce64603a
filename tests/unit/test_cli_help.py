"""Every command's help reads as plain text (no reStructuredText or Markdown markup leaks from
the docstrings), and the job commands name the jobs they take."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from typer.main import get_command
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.vocabulary import Job

MARKUP = re.compile(r"``|:(class|func|meth|mod|attr|data):`|`[^`\n]+`|\*\*|^\.\. ", re.MULTILINE)


def commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():  # a group (typer's click or click's)
        yield from commands(sub, (*path, name))


def test_no_help_text_carries_markup() -> None:
    found = {}
    for path, cmd in commands(get_command(app)):
        for text in [cmd.help or "", cmd.short_help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]:
            if MARKUP.search(text):
                found[" ".join(path)] = text
    assert len(list(commands(get_command(app)))) > 20  # the walk reached the subcommands
    assert found == {}


def test_the_job_commands_name_their_jobs() -> None:
    for verb in ("run", "pause", "resume"):
        out = CliRunner().invoke(app, ["jobs", verb, "--help"], terminal_width=200)
        assert out.exit_code == 0
        assert all(f"{job.value}:" in out.output for job in Job), out.output
