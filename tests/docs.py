"""Reading the project's Markdown the way the doc tests need it: headings and their GitHub anchors, links, and the
command blocks a document marks for its test.

A document marks a fenced block for a test with an HTML comment on the line before it (invisible on GitHub):

    <!-- test: no-worker -->
    ```console
    $ jetdag status <exec>
    ...what it prints...
    ```

`commands(doc, "no-worker")` gives the `$ ` lines of that block (without the `$ `), so the test runs exactly what the
page shows and the page cannot drift from the test. A line ending in `\\` continues on the next one.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Block",
    "anchors",
    "assert_shows",
    "blocks",
    "commands",
    "console_commands",
    "line_pattern",
    "links",
    "prose",
]

FENCE = re.compile(r"^(```|~~~)")
MARKER = re.compile(r"^<!-- test: ([a-z0-9-]+) -->$")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    name: str
    info: str
    lines: list[str]

    @property
    def commands(self) -> list[str]:
        out: list[str] = []
        pending = ""
        for line in self.lines:
            if pending:
                pending += line  # bash drops a backslash-newline and keeps what follows as it is
            elif line.startswith("$ "):
                pending = line[2:].strip()
            else:
                continue
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            out.append(pending)
            pending = ""
        return out

    def output_after(self, command: str) -> list[str]:
        """The lines the block shows between `command` and the next `$ ` line."""
        shown: list[str] = []
        inside = False
        for line in self.lines:
            if line.startswith("$ "):
                if inside:
                    break
                inside = line[2:].strip().startswith(command.split(" \\", 1)[0])
                continue
            if inside:
                shown.append(line)
        return shown


def blocks(doc: Path) -> dict[str, Block]:
    """Every marked block of `doc`, by name (a name used twice is an error in the document)."""
    found: dict[str, Block] = {}
    lines = doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i].strip())
        if marker and i + 1 < len(lines) and FENCE.match(lines[i + 1]):
            fence = lines[i + 1][:3]
            info = lines[i + 1][3:].strip()
            body: list[str] = []
            i += 2
            while i < len(lines) and not lines[i].startswith(fence):
                body.append(lines[i])
                i += 1
            name = marker.group(1)
            assert name not in found, f"{doc.name}: block {name!r} is marked twice"
            found[name] = Block(name, info, body)
        i += 1
    return found


def commands(doc: Path, name: str) -> list[str]:
    found = blocks(doc)
    assert name in found, f"{doc.name} has no block marked `<!-- test: {name} -->`"
    return found[name].commands


def prose(text: str) -> str:
    """`text` without its fenced code blocks (links and headings inside them are not links or headings)."""
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and fence is None:
            fence = match.group(1)
            continue
        if fence is not None:
            if line.startswith(fence):
                fence = None
            continue
        out.append(line)
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.strip().lower()
    kept = "".join(
        ch
        for ch in text
        if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N") or unicodedata.category(ch) == "Mn"
    )
    return kept.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives `doc`'s headings (a repeated heading gets -1, -2, …)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose(doc.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def links(doc: Path) -> list[str]:
    """Every link target in `doc`'s prose (images too)."""
    return [a or b for a, b in LINK.findall(prose(doc.read_text()))]


# --- running a document's commands and checking what it shows ---------------------------------------------------

OUTPUT_PLACEHOLDERS = ("<exec>", "<host>")
"""Placeholders a document writes in an output line for what differs in every run."""


DURATION = r"(?:\d+(?:\.\d+)?(?:h|ms|µs|ns|m|s))+\b"
"""A Go duration as the nats CLI prints one (`853ms`, `31.80s`, `2m4s`): any duration stands for any other."""


def line_pattern(shown: str) -> re.Pattern[str]:
    """The regex of a line a document shows as output: digits stand for any number (ids, times, sizes and counts
    differ in every run), a duration for any duration, runs of blanks for any blanks (table columns size to their
    content), a placeholder of OUTPUT_PLACEHOLDERS for any word; the rest is literal. A line starting with `... `
    (and maybe ending in ` ...`) may be part of a longer line."""
    partial = shown.startswith("... ")
    text = shown[4:] if partial else shown
    if partial and text.endswith(" ..."):
        text = text[:-4]  # `... middle ...`: the line contains it
    alternatives = "|".join(re.escape(p) for p in OUTPUT_PLACEHOLDERS)
    parts: list[str] = []
    for token in re.split(rf"({alternatives}|{DURATION}|\d+|\s+)", text.strip()):
        if not token:
            continue
        if re.fullmatch(DURATION, token):
            parts.append(DURATION)
        elif token in OUTPUT_PLACEHOLDERS:
            parts.append(r"\S+")
        elif token.isdigit():
            parts.append(r"\d+")
        elif token.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(token))
    body = "".join(parts)
    return re.compile(body if partial else rf"^\s*{body}\s*$")


def assert_shows(block: Block, command: str, output: str) -> None:
    """Every output line `block` shows after `command` (`...` lines aside) is a line of `output`, in order."""
    lines = output.splitlines()
    at = 0
    for shown in block.output_after(command):
        if shown.strip() in ("", "..."):
            continue
        pattern = line_pattern(shown)
        for i in range(at, len(lines)):
            if pattern.search(lines[i]):
                at = i + 1
                break
        else:
            raise AssertionError(
                f"{block.name}: `{command}` should show the line\n  {shown}\nin order; it printed:\n{output}"
            )


def console_commands(doc: Path) -> list[str]:
    """Every `$ ` command of every console block of `doc`, marked or not (to prove each is in a marked block)."""
    out: list[str] = []
    fence: str | None = None
    info = ""
    for line in doc.read_text().splitlines():
        match = FENCE.match(line)
        if match and fence is None:
            fence, info = match.group(1), line[3:].strip()
            continue
        if fence is not None and line.startswith(fence):
            fence = None
            continue
        if fence is not None and info == "console" and line.startswith("$ "):
            out.append(line[2:].strip())
    return out


@dataclass
class Shell:
    """Runs a document's commands with bash the way a reader would, after swapping what the document writes for
    `jetdag up`'s addresses (`swap`: the gateway, the monitoring port, paths) and its placeholders (`<exec>`) for
    this test's. stdout and stderr are one text, as a terminal shows them."""

    env: dict[str, str]
    cwd: Path
    swap: dict[str, str]

    def expand(self, command: str, **placeholders: str) -> str:
        for old, new in {**self.swap, **{f"<{k.replace('_', '-')}>": v for k, v in placeholders.items()}}.items():
            command = command.replace(old, new)
        return command

    def run(self, command: str, **placeholders: str) -> tuple[int, str]:
        import subprocess

        proc = subprocess.run(
            ["bash", "-c", self.expand(command, **placeholders)],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        return proc.returncode, proc.stdout
