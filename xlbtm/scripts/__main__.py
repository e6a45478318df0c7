"""`xlbtm <command> [flags]` (and `python -m xlbtm.scripts <command>`): the same as
`python -m xlbtm.scripts.<command> [flags]`, with the same flags; `xlbtm --help` lists the commands."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence

from xlbtm.cli import main_wrapper, set_invoked_as


def commands() -> list[str]:
    import xlbtm.scripts

    return sorted(m.name for m in pkgutil.iter_modules(xlbtm.scripts.__path__) if not m.name.startswith("_"))


def _first_line(name: str) -> str:
    doc = importlib.import_module(f"xlbtm.scripts.{name}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv: Sequence[str] | None = None, invoked_as: str = "xlbtm") -> int:
    """`invoked_as`: the words before the command name in usage lines (the console script is `xlbtm`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: xlbtm <command> [flags]   (= python -m xlbtm.scripts.<command> [flags])\n\ncommands:")
        for n in names:
            print(f"  {n:<18} {_first_line(n)}")
        print("\n`xlbtm <command> --help` explains a command's flags.")
        return 0 if argv else 2
    name = argv[0].replace("-", "_")
    if name not in names:
        print(f"xlbtm: error: unknown command {argv[0]!r}; one of: {', '.join(names)}", file=sys.stderr)
        return 2
    set_invoked_as(invoked_as)  # usage lines name the command as the user typed it
    try:
        return main_wrapper(name, importlib.import_module(f"xlbtm.scripts.{name}").main, argv[1:])
    finally:
        set_invoked_as(None)


if __name__ == "__main__":
    sys.exit(main(invoked_as="python -m xlbtm.scripts"))
