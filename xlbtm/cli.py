"""CLI conventions shared by every `python -m xlbtm.scripts.<name>` entry point.

- `make_parser(stage, description)`: argparse with defaults shown in --help.
- `setup_logging(stage)`: lines look like `2026-11-21 01:02:03 [cluster] message`.
- `main_wrapper(stage, main)`: runs `main(argv)`; an `XlbtmError` (bad input or flags) becomes one clear
  line on stderr and exit status 2; argparse usage errors also exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence

LOG_FORMAT = "%(asctime)s [%(stage)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _StageFilter(logging.Filter):
    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "stage"):
            record.stage = self.stage
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not the stream it was made with: a
    redirected or replaced stderr (an in-process `--run debug` job, a test's capture) must not leave the
    logger writing into a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(stage: str, level: int | str | None = None) -> logging.Logger:
    """Configure the root `xlbtm` logger once per process; later calls only change the stage name."""
    global _STAGE
    _STAGE = stage
    level = level or os.environ.get("XLBTM_LOG_LEVEL", "INFO")
    logger = logging.getLogger("xlbtm")
    logger.setLevel(level)
    for h in list(logger.handlers):
        if getattr(h, "_xlbtm", False):
            logger.removeHandler(h)
    handler = _StderrHandler()
    handler._xlbtm = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    handler.addFilter(_StageFilter(stage))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


_STAGE: str | None = None


def current_stage() -> str | None:
    """The stage name log lines carry now (None before `setup_logging`)."""
    return _STAGE


def get_logger(name: str) -> logging.Logger:
    """Library modules log under `xlbtm.<name>`; the stage shown comes from the running script."""
    return logging.getLogger(f"xlbtm.{name}")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default once: appended as `(default: X)` unless the help already says it, and not at all
    for flags whose default means "not given" (None, False): 123 flags said `(default: None)` before."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.required
            or action.default in (None, False, [], argparse.SUPPRESS)
            or "default" in text
            or "%(default)" in text
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


# How the user typed the command, for --help and usage lines: `xlbtm <name>` when dispatched by `xlbtm`
# (xlbtm.scripts.__main__ sets it), else `python -m xlbtm.scripts.<name>`.
_INVOKED_AS: str | None = None


def set_invoked_as(prefix: str | None) -> None:
    """`xlbtm` or `python -m xlbtm.scripts`: the words before the command name in usage lines."""
    global _INVOKED_AS
    _INVOKED_AS = prefix


def prog_name(stage: str) -> str:
    return f"{_INVOKED_AS} {stage}" if _INVOKED_AS else f"python -m xlbtm.scripts.{stage}"


# argparse takes a value that starts with "-" for a flag unless it looks like one negative number, so
# `--weights -0.5,1.5` died with "expected one argument" before its own check ("non-negative") could speak.
# A comma list of numbers is a value too (no xlbtm flag looks like one).
_NEGATIVE_VALUE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)*,?$")


def make_parser(stage: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name(stage),
        description=description,
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )
    parser._negative_number_matcher = _NEGATIVE_VALUE
    return parser


def main_wrapper(
    stage: str, main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Run a script's main with xlbtm's error conventions; returns the exit status."""
    from xlbtm.errors import XlbtmError

    setup_logging(stage)
    try:
        rc = main(argv)
    except XlbtmError as e:
        print(f"xlbtm {stage}: error: {e}", file=sys.stderr)
        return e.exit_code
    except PermissionError as e:  # a read-only output dir or an unreadable input: the user's to fix
        print(
            f"xlbtm {stage}: error: permission denied: {e.filename or '(unknown path)'}; choose a path you can "
            "read (inputs) or write (outputs)",
            file=sys.stderr,
        )
        return 2
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # writers use temp names (xlbtm.io), so nothing half-written is left under a final name
        print(
            f"xlbtm {stage}: error: no space left on device: {e.filename or '(unknown path)'}; free space or "
            f"choose another output directory, then rerun (finished work is kept)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"xlbtm {stage}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(rc or 0)


def run_script(stage: str, main: Callable[[Sequence[str] | None], int | None]) -> None:
    """`if __name__ == "__main__": run_script("cluster", main)` at the bottom of every script."""
    sys.exit(main_wrapper(stage, main))


SKIP_BAD_LINES_HELP = (
    "skip malformed lines (bad JSON, missing/non-string 'text', invalid UTF-8) and report how many "
    "were skipped, instead of stopping at the first one with exit status 2"
)
PARALLEL_SIDE_HELP = (
    'the corpus is parallel data ({"src", "tgt", "src_lang", "tgt_lang"} lines): cluster each '
    "pair by the text of this side (both: src and tgt together) and, for typological clusterers, by "
    "tgt_lang (src_lang with src). tgt puts a pair with the expert of the language it translates into"
)


def add_skip_bad_lines_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-bad-lines", action="store_true", help=SKIP_BAD_LINES_HELP)


def add_parallel_side_arg(parser: argparse.ArgumentParser) -> None:
    """`--parallel-side`: read the corpus as translation pairs."""
    parser.add_argument("--parallel-side", choices=["src", "tgt", "both"], default=None, help=PARALLEL_SIDE_HELP)
