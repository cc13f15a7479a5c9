"""Keep the README's settings table equal to the settings declarations (`python -m jetdag.readme`)."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- settings-table:start -->\n).*?(\n<!-- settings-table:end -->)", re.S)


def main() -> None:
    text = README.read_text()
    README.write_text(BLOCK.sub(lambda m: m.group(1) + markdown_table() + m.group(2), text))


if __name__ == "__main__":
    main()
