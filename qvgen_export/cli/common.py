"""What every console script shares: one-line errors, exit codes, default paths."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qvgen_export.targets.registry import EngineUnavailableError

EXIT_BAD_INPUT = 2
# The folder was written but a stage needing hardware this machine lacks (a TensorRT engine) was not.
EXIT_ENGINE_UNAVAILABLE = 3
# A bug (an exception no check anticipated): one line, the traceback only with --debug/QVGEN_DEBUG=1.
EXIT_INTERNAL_ERROR = 4
EXIT_INTERRUPTED = 130
EXIT_CODES_HELP = (
    "exit codes: 0 done, 2 bad input or unusable output (one line names the file and the problem; "
    "disk full included), 3 folder written but no TensorRT engine built, 4 internal error (a bug: "
    "rerun with --debug or QVGEN_DEBUG=1 for the traceback), 130 interrupted"
)

# Errors a user can cause (bad file, bad flag, unwritable or full output folder, missing extra):
# one line, no traceback. OSError covers unreadable inputs and a full disk (DiskFullError names
# the path and what was being written). Anything else is a bug: exit 4.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    NotImplementedError,
    ImportError,
)


def artifacts_dir() -> Path:
    """Where outputs go by default: ``$QVGEN_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("QVGEN_ARTIFACTS", "artifacts"))


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _os_error_line(e: OSError) -> str:
    """``path: reason`` for an OSError (its str() lacks the path when only ``filename`` has it)."""
    from qvgen_export.utils.atomic import DISK_FULL_ERRNOS, DiskFullError

    if isinstance(e, DiskFullError) or not e.filename:
        line = _first_line(e)
    else:
        line = f"{e.filename}: {e.strerror or _first_line(e)}"
    if e.errno in DISK_FULL_ERRNOS and not isinstance(e, DiskFullError):
        line = f"disk full: {line}"
    return line


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` (removed from ``argv``, so no parser needs to know it) or ``QVGEN_DEBUG=1``."""
    env = os.environ.get("QVGEN_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return env or "--debug" in argv, [a for a in argv if a != "--debug"]


def run_guarded(prog: str, fn: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Call ``fn(argv)`` inside the error boundary every console script shares (exit codes above)."""
    debug, args = debug_requested(list(sys.argv[1:] if argv is None else argv))
    try:
        return fn(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except EngineUnavailableError as e:
        print(f"{prog}: engine not built: {_first_line(e)}", file=sys.stderr)
        return EXIT_ENGINE_UNAVAILABLE
    except USER_ERRORS as e:
        if debug:
            traceback.print_exc()
        line = _os_error_line(e) if isinstance(e, OSError) else _first_line(e)
        print(f"{prog}: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit:
        raise  # argparse's own exits (--help: 0, a bad flag: 2) keep their codes
    except Exception as e:  # noqa: BLE001 (the boundary: every other exception is a bug, reported in one line)
        if debug:
            traceback.print_exc()
            print(f"{prog}: internal error: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        else:
            print(
                f"{prog}: internal error: {type(e).__name__}: {_first_line(e)} "
                "(a bug; rerun with --debug or QVGEN_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
        return EXIT_INTERNAL_ERROR


def cli_entry(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    def wrap(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            return run_guarded(prog, fn, argv)

        return main

    return wrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; ``(default: X)`` only where it tells something: not for
    flags, ``None`` defaults, or help texts that already state their default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default is None
            or action.default is False  # store_true flags (``is``: a default of 0 is shown)
            or action.default is argparse.SUPPRESS
            or (isinstance(action.default, (str, list, tuple)) and len(action.default) == 0)
            or "default" in text.lower()
            or action.option_strings in (["-h", "--help"],)
            or not action.option_strings
        ):
            return text
        return super()._get_help_string(action)


def add_sampling_args(p: argparse.ArgumentParser, steps: int = 20) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--prompt", action="append", help="text prompt (repeatable); default: a fixed demo set")
    g.add_argument("--negative-prompt", default="", help="prompt for the unconditional branch of CFG")
    g.add_argument("--steps", type=int, default=steps, help="denoising steps")
    g.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (<=1 disables CFG)")
    g.add_argument("--scheduler", choices=["unipc", "euler"], default="unipc", help="diffusers flow-matching scheduler")
    g.add_argument("--shift", type=float, default=3.0, help="flow shift of the sampling schedule")
    g.add_argument("--seed", type=int, default=0, help="noise seed")


def positive_int(name: str, v: int) -> int:
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def progress_enabled(args: Any) -> bool:
    return not getattr(args, "quiet", False)
