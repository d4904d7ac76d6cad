"""Many short ``qvgen-train`` runs, each in its own process, without paying the imports each time.

A server process imports the trainer (torch, diffusers: ~8 s of CPU on the test machine) once and
forks one child per run. Each child is a real, separate process running ``trainer.qat.cli.main``
on its own argv and working folder; its global generators are reseeded from OS entropy, as a new
interpreter's are, so nothing of one run's RNG reaches the next. A kill point makes the child
SIGKILL itself at an exact place (no polling races): inside a step, while a state's tensors are
being written, before a rename, between the two renames of an overwrite, while an old state is
being deleted, while the final model is being written.

Every step of every child also draws from torch's, numpy's and Python's global generators (an
optimizer pre-step hook), as dropout or a random augmentation would: a resume that failed to save
or restore any of them then shows up in the saved ``rng/*`` tensors.

Protocol: one JSON request per stdin line ``{"argv", "cwd", "kill", "log"}``, one JSON reply per
stdout line ``{"code": int}`` (exit status) or ``{"signal": int}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qvgen_export.utils.atomic import leftovers

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300


def leftovers_under(root: Path) -> list[str]:
    """Every temp name anywhere under ``root``: qvgen temps (``leftovers``) and the old ``.step-*`` form."""
    found = []
    for folder, dirs, files in os.walk(root):
        names = [*dirs, *files]
        found += [str(Path(folder, n)) for n in leftovers(folder)]
        found += [str(Path(folder, n)) for n in names if n.startswith(".step-") or n.endswith(".tmp")]
    return sorted(set(found))


# -- the server (runs in its own process) ---------------------------------------------------------


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(kill: dict[str, Any] | None) -> None:
    """Per-step RNG draws, and the hooks of the kill point ``kill`` (see ``KILL_POINTS`` below)."""
    import random
    import shutil

    import numpy as np
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from qvgen_export.checkpoint.stream_writer import StreamingSafetensorsWriter

    point = kill["point"] if kill else None
    target = kill.get("target", "") if kill else ""
    calls = {"step": 0, "write": 0}

    def pre_step(_opt: Any, _args: Any, _kwargs: Any) -> None:
        calls["step"] += 1
        if point == "mid-step" and calls["step"] == kill["step"]:  # type: ignore[index]
            _die()  # after forward and backward, before the update: between two saves
        torch.rand(3)
        np.random.rand(3)
        random.random()

    register_optimizer_step_pre_hook(pre_step)

    orig_write = StreamingSafetensorsWriter.write

    def write(self: Any, key: str, t: Any) -> None:
        # the temp of a state folder (``.step-N.qvgen-tmp-*/tensors.safetensors``) or of a file
        if point == "partial" and any(n.startswith(f".{target}.") for n in (self.path.name, self.path.parent.name)):
            calls["write"] += 1
            if calls["write"] == 3:  # two tensors written, the rest not
                _die()
        orig_write(self, key, t)

    StreamingSafetensorsWriter.write = write  # type: ignore[method-assign]

    orig_replace = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        s, d = Path(src), Path(dst)
        if point == "before-rename" and d.name == target:
            _die()  # the temp folder is complete, its final name not yet taken
        if point == "before-latest" and d.name == "latest" and s.read_text().strip() == target:
            _die()  # the state folder is in place, the pointer still names the previous one
        orig_replace(src, dst, **kw)
        if point == "aside" and d.name.startswith(f".{target}.qvgen-old-"):
            _die()  # between the two renames of an overwrite: the old folder aside, the new not in

    os.replace = replace  # type: ignore[assignment]

    orig_rmtree = shutil.rmtree

    def rmtree(path: Any, *a: Any, **kw: Any) -> None:
        p = Path(path)
        if point == "pruning" and (p.name == target or p.name.startswith(f".{target}.")):
            next(iter(sorted(p.iterdir()))).unlink()  # deletion under way: one file gone
            _die()
        orig_rmtree(path, *a, **kw)

    shutil.rmtree = rmtree  # type: ignore[assignment]


def _child(req: dict[str, Any]) -> int:
    import random

    import numpy as np
    import torch

    os.chdir(req["cwd"])
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.seed()  # a new interpreter's generators: from OS entropy
    np.random.seed()
    random.seed()
    _install(req.get("kill"))
    from trainer.qat.cli import main

    return int(main(req["argv"]))


def serve() -> None:
    # Import everything a run imports (the lazy diffusers model class included) before forking.
    import diffusers  # noqa: F401
    from diffusers import WanTransformer3DModel  # noqa: F401

    import trainer.qat.cli
    import trainer.qat.loop  # noqa: F401
    from qvgen_export.checkpoint import save_checkpoint  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                code = _child(req)
            except BaseException:  # noqa: BLE001 - the child must never return into the server loop
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.time() + RUN_TIMEOUT_S
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -1
                break
            time.sleep(0.01)
        if status == -1:
            reply: dict[str, Any] = {"timeout": True}
        elif os.WIFSIGNALED(status):
            reply = {"signal": os.WTERMSIG(status)}
        else:
            reply = {"code": os.WEXITSTATUS(status)}
        print(json.dumps(reply), flush=True)


# -- the client (pytest side) --------------------------------------------------------------------


class ForkServer:
    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-u", __file__],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def run(self, cwd: Path, argv: list[str], kill: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``qvgen-train argv`` in ``cwd`` in a fresh child; output appended to ``cwd/log.txt``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        req = {"argv": argv, "cwd": str(cwd), "kill": kill, "log": str(cwd / "log.txt")}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the fork server died"
        return json.loads(reply)  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
