"""How a plan's lines are written: colours from rich's styles, and nothing a terminal would act on."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.cli import planout


@pytest.fixture
def colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planout, "out", Console(force_terminal=True, color_system="standard", width=40))


def test_plain_when_the_console_has_no_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planout, "out", Console(force_terminal=True, color_system=None, width=40))
    assert planout.diff_line("+A=1") == "+A=1"
    assert planout.rule("h1 · d") == "h1 · d " + "─" * 33


def test_a_pipe_gets_one_heading_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planout, "out", Console(file=io.StringIO(), width=40))
    assert planout.rule("h1 · d") == "── h1 · d"


def test_diff_lines_take_rich_styles(colour: None) -> None:
    assert planout.diff_line("+A=1") == "\x1b[32m+A=1\x1b[0m"
    assert planout.diff_line("-A=0") == "\x1b[31m-A=0\x1b[0m"
    assert planout.diff_line("+++ h:/etc/x (desired)") == "\x1b[1m+++ h:/etc/x (desired)\x1b[0m"
    assert planout.diff_line(" same") == " same"


def test_unprintable_characters_are_escapes_in_reverse_video(colour: None) -> None:
    line = planout.diff_line("+a\x1b[2Jb\u2028c\td")
    assert "\x1b[2J" not in line and "\u2028" not in line
    assert line == (
        "\x1b[32m+a\x1b[0m\x1b[7;32m\\x1b\x1b[0m\x1b[32m[2Jb\x1b[0m"
        "\x1b[7;32m\\u2028\x1b[0m\x1b[32mc\td\x1b[0m"
    )


def test_a_title_wider_than_the_console_is_one_heading_line(colour: None) -> None:
    title = "x" * 45
    assert planout.rule(title) == f"── \x1b[1m{title}\x1b[0m"
