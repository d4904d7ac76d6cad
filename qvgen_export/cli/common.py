"""What every console script shares: one-line errors, exit codes, default paths."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qvgen_export.targets.registry import EngineUnavailableError

EXIT_BAD_INPUT = 2
# The folder was written but a stage needing hardware this machine lacks (a TensorRT engine) was not.
EXIT_ENGINE_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

# Errors a user can cause (bad file, bad flag, unwritable folder, missing extra): one line, no
# traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
    NotImplementedError,
    ImportError,
)


def artifacts_dir() -> Path:
    """Where outputs go by default: ``$QVGEN_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("QVGEN_ARTIFACTS", "artifacts"))


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def cli_entry(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    def wrap(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            try:
                return fn(argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
            except EngineUnavailableError as e:
                print(f"{prog}: engine not built: {_first_line(e)}", file=sys.stderr)
                return EXIT_ENGINE_UNAVAILABLE
            except USER_ERRORS as e:
                print(f"{prog}: error: {_first_line(e)}", file=sys.stderr)
                return EXIT_BAD_INPUT

        return main

    return wrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


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
