"""The shell commands that README.md and docs/*.md show, as a user would copy them.

A fenced block marked ``sh``, ``bash``, ``shell`` or ``console`` holds commands. In a block
with ``$ `` prompts only the prompted lines are commands and the lines after one are its
output (an output starting with ``error:`` is the error the command is documented to give);
without prompts every line is a command, except blank lines and ``#`` comments. A command
continues over lines that end in a backslash or leave a quote open.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>"}


def documented_pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class DocCommand:
    """One command of a page: where it is, its text, and the error it is shown to give."""

    page: str
    line: int
    text: str
    documented_error: str | None = None

    @property
    def key(self) -> str:
        """The command without comments, on one line: how the skip-list names it."""
        words = shlex.split(self.text.replace("\\\n", " "), comments=True)
        return " ".join(" ".join(words).split())

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.key}"


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def page_commands(path: Path) -> list[DocCommand]:
    """Every command in the shell blocks of ``path``, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = str(path.relative_to(ROOT))
    commands: list[DocCommand] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if fence.group(1) in SHELL_LANGUAGES:
            commands += _block_commands(page, list(enumerate(lines[i + 1 : j], start=i + 2)))
        i = j + 1
    return commands


def _block_commands(page: str, block: list[tuple[int, str]]) -> list[DocCommand]:
    prompted = any(text.startswith("$ ") for _, text in block)
    out: list[DocCommand] = []
    k = 0
    while k < len(block):
        number, text = block[k]
        k += 1
        if prompted and not text.startswith("$ "):
            continue
        if not prompted and (not text.strip() or text.lstrip().startswith("#")):
            continue
        command = text[2:] if prompted else text
        while not _complete(command) and k < len(block):
            command += "\n" + block[k][1]
            k += 1
        error = None
        if prompted and k < len(block) and block[k][1].startswith("error:"):
            error = block[k][1]
        out.append(DocCommand(page, number, command, error))
    return out


def segments(command: str) -> list[list[str]]:
    """The simple commands of a pipeline or list, each without ``VAR=value`` and ``sudo``."""
    lexer = shlex.shlex(command.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    out = []
    for words in parts:
        while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] == "sudo"):
            words = words[1:]
        if words:
            out.append(words)
    return out


def unknown_edgedl_options(words: list[str]) -> list[str]:
    """What in ``edgedl WORDS...`` the CLI does not know: a subcommand or an option."""
    from edgedl.cli import cli

    command: click.Command = cli
    ctx = click.Context(cli, info_name="edgedl")
    rest = words[1:]
    while isinstance(command, click.Group) and rest:
        if rest[0].startswith("-"):
            if rest[0] not in _option_names(command):
                return [rest[0]]
            rest = rest[1:]
            continue
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            return [f"command {rest[0]!r}"]
        command, rest = sub, rest[1:]
    known = _option_names(command)
    return [w for w in rest if w.startswith("-") and w != "-" and w.split("=", 1)[0] not in known]


def _option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


__all__ = [
    "ROOT",
    "DocCommand",
    "documented_pages",
    "page_commands",
    "segments",
    "unknown_edgedl_options",
]
