"""``qvgen-train``: QAT from a TOML config and/or flags (flags override the file).

    qvgen-train --config cfg.toml
    qvgen-train --method qvgen --scheme w3a3 --steps 300 --out-dir artifacts/qat/w3a3
    torchrun --nproc_per_node 2 -m trainer.qat.cli --config cfg.toml

Re-running the same command on an existing ``--out-dir`` resumes from its last training state.
Bad input prints one ``qvgen-train: error:`` line and exits with status 2; an internal error exits
with 4 (traceback with ``--debug`` or ``QVGEN_DEBUG=1``); see ``qvgen_export.cli.common``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from trainer.qat.config import Method, TrainConfig


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qvgen-train", description="QVGen quantization-aware training (and baselines).")
    ap.add_argument("--config", help="TOML file with TrainConfig keys (top level or under [train])")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, f in fields.items():
        if name in ("model_config", "betas", "include", "exclude"):
            continue
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool",) or isinstance(f.default, bool):
            ap.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif name == "method":
            ap.add_argument(flag, dest=name, choices=[m.value for m in Method], default=None)
        else:
            kind: Any = str
            if isinstance(f.default, int) or name == "stop_after":
                kind = int
            elif isinstance(f.default, float):
                kind = float
            ap.add_argument(flag, dest=name, type=kind, default=None)
    ap.add_argument("--betas", type=float, nargs=2, default=None)
    ap.add_argument("--include", nargs="+", default=None, metavar="PATTERN", help="quantize these linears (fnmatch)")
    ap.add_argument("--exclude", nargs="+", default=None, metavar="PATTERN", help="keep these linears in float")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return ap


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "print_config")}
    if args.config:
        return TrainConfig.from_toml(args.config, **overrides), args
    return TrainConfig.from_dict(overrides), args


def main(argv: list[str] | None = None) -> int:
    from qvgen_export.cli.common import run_guarded

    return run_guarded("qvgen-train", _main, argv)


def _main(argv: list[str]) -> int:
    from qvgen_export.utils.atomic import check_writable_folder

    try:
        cfg, args = config_from_args(argv)
    except TypeError as e:  # a TOML value of the wrong type is bad input, not a bug
        raise ValueError(str(e)) from None
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    # Before the teacher is loaded or a step runs: a run that cannot save is refused now.
    check_writable_folder(cfg.out_dir)
    from trainer.qat.loop import train

    result = train(cfg)
    import os

    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.history[-1]
        where = result.checkpoint or f"{cfg.out_dir}/states (keep-Phi model: PyTorch only)"
        if result.completed:
            print(f"done: {cfg.method.value} {cfg.scheme}, step {last['step'] + 1}, loss {last['loss']:.5g} -> {where}")
        else:
            print(f"stopped at step {last['step'] + 1} (resume by running the same command)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
