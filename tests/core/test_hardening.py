"""Hardening: a generated bad-input corpus (one line, exit 2, no leftovers), a seeded fuzz of the
checkpoint reader (only CheckpointError escapes), deterministic bytes, umask modes, stale temps
of killed processes, and SIGKILLed exports that never leave a half-written folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hardening_corpus import build_corpus, run_fuzz, score, train_toml

from qvgen_export.utils.atomic import atomic_dir, atomic_file, clean_stale, leftovers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A qvgen-train run stopped after one step (the state the corpus forges)."""
    from trainer.qat.cli import main

    d = tmp_path_factory.mktemp("run")
    cfg = train_toml(d / "cfg.toml", d / "run")
    assert main(["--config", str(cfg), "--stop-after", "1"]) == 0
    return d / "run"


def test_bad_input_corpus(tmp_path, w4a4_ckpt, w4a4_export, base_run, capsys):
    cases = build_corpus(w4a4_ckpt, w4a4_export, base_run, tmp_path)
    counts, bad = score(cases)
    with capsys.disabled():
        print("\ncorpus:", json.dumps(counts))
    assert counts["cases"] >= 60
    detail = [f"{n}: exit {o.code} {o.stderr[-2:]} left={o.leftovers}" for n, o in bad]
    assert not bad, "\n".join(detail)


def test_disk_full_during_export(tmp_path, w4a4_ckpt, capsys):
    """A 64 KiB tmpfs: the export fails writing, one line names the output and what was written."""
    from qvgen_export.cli import export as export_cli

    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = mnt / "o"
        assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "disk full" in err[0] and str(out) in err[0], err
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- fuzz ----------------------------------------------------------------------------------------


def test_fuzz_only_checkpoint_error_escapes(tmp_path, w4a4_ckpt, capsys):
    counts = run_fuzz(w4a4_ckpt, tmp_path, int(os.environ.get("QVGEN_FUZZ_N", "300")), seed=1234)
    with capsys.disabled():
        print("\nfuzz:", dict(counts))
    assert set(counts) <= {"CheckpointError", "accepted"}, dict(counts)
    # Only mutations that change nothing the reader looks at may load (e.g. an offset edit of 0).
    assert counts["accepted"] <= counts["CheckpointError"] // 20


# -- deterministic bytes, modes, stale temps ----------------------------------------------------


def test_same_content_same_bytes_across_processes(tmp_path, w4a4_ckpt):
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from qvgen_export.checkpoint import load_quantized_model, save_checkpoint\n"
        "m, info = load_quantized_model(sys.argv[1]); save_checkpoint(m, sys.argv[2], extra=info.extra)\n"
    )
    outs = []
    for i, seed in enumerate(("1", "2")):  # different hash seeds: dict/set order differs between them
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        dst = tmp_path / f"c{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(w4a4_ckpt), str(dst)], env=env, check=True, timeout=300)
        outs.append(dst.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] == w4a4_ckpt.read_bytes()


def test_modes_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f") as t:
            t.write_text("x")
        with atomic_dir(tmp_path / "d") as t:
            (t / "a").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    import socket

    host = socket.gethostname().replace("-", "-")
    dead, alive = _dead_pid(), os.getpid()
    (tmp_path / f".out.qvgen-tmp-{host}-{dead}-ab12").mkdir()
    (tmp_path / f".x.qvgen-tmp-{host}-{dead}-cd34").write_text("partial")
    (tmp_path / f".y.qvgen-tmp-{host}-{alive}-ef56").write_text("in use")  # a live writer's
    (tmp_path / f".z.qvgen-tmp-otherhost-{dead}-0a0b").write_text("another machine's")
    (tmp_path / f".prev.qvgen-old-{host}-{dead}-1234").mkdir()  # killed between the two renames
    clean_stale(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f".y.qvgen-tmp-{host}-{alive}-ef56", f".z.qvgen-tmp-otherhost-{dead}-0a0b", "prev"])


# -- SIGKILL a real export ----------------------------------------------------------------------


def _complete_or_absent(out: Path) -> None:
    from qvgen_export.artifact.manifest import verify_manifest

    if out.exists():
        verify_manifest(out)  # a final name is only ever a complete, hash-checked folder


KILL_POINTS = ("tmp-created", "model-written", "late")


def _temps_of(folder: Path, pid: int) -> list[str]:
    """``leftovers`` of one process (``.NAME.qvgen-tmp-HOST-PID-RAND``)."""
    return [n for n in leftovers(folder) if n.rsplit("-", 2)[-2] == str(pid)]


@dataclass
class _Killed:
    pid: int
    killed: bool
    final_name_error: str | None  # _complete_or_absent(out) right after the kill, if it failed
    left_after_next_run: list[str] | None = None  # this run's temps once the next run got past its start


@dataclass
class _KillChain:
    points: dict[str, _Killed]
    last_code: int | None  # exit code of the run that completed
    last_stderr: str
    leftovers: list[str]  # in the folder after the completing run
    final_name_error: str | None  # _complete_or_absent(out) after it
    out_is_dir: bool


def _final_name_error(out: Path) -> str | None:
    try:
        _complete_or_absent(out)
    except ValueError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def sigkilled_exports(tmp_path_factory, w4a4_ckpt) -> _KillChain:
    """Real exports into one folder, SIGKILLed at each point in turn, then one run to completion.

    Each run is the *next run* of the one killed before it: by the time it reaches its own kill
    point (or finishes) the killed run's temps must be gone. One export per point instead of a
    killed one and a complete one per point; the last completing run is every point's final check.
    """
    work, logs = tmp_path_factory.mktemp("sigkill"), tmp_path_factory.mktemp("sigkill_logs")
    out = work / "exp"
    cmd = [sys.executable, "-m", "qvgen_export.cli.export", "--ckpt", str(w4a4_ckpt), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    points: dict[str, _Killed] = {}
    previous: _Killed | None = None
    code: int | None = None
    for point in KILL_POINTS:
        # out exists only if a run before was not killed in time (it then finished): replace it
        argv = [*cmd, "--overwrite"] if out.exists() else cmd
        with (logs / f"{point}.err").open("w") as err:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 240
        killed = False
        while time.time() < deadline and proc.poll() is None:
            temps = [work / n for n in _temps_of(work, proc.pid)]
            ready = bool(temps) and (
                point == "tmp-created"
                or (point == "model-written" and any((t / "model.onnx").exists() for t in temps))
                or (point == "late" and any((t / "manifest.json").exists() for t in temps))
            )
            if ready:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        code = proc.wait()
        if previous is not None:
            previous.left_after_next_run = _temps_of(work, previous.pid)
        previous = points[point] = _Killed(proc.pid, killed, _final_name_error(out))
    stderr = (logs / f"{KILL_POINTS[-1]}.err").read_text()
    if previous is not None and previous.killed:
        rerun = subprocess.run([*cmd, "--overwrite"], env=env, capture_output=True, text=True, timeout=300, check=False)
        code, stderr = rerun.returncode, rerun.stderr
        previous.left_after_next_run = _temps_of(work, previous.pid)
    return _KillChain(points, code, stderr, leftovers(work), _final_name_error(out), out.is_dir())


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkilled_export_leaves_nothing_after_next_run(sigkilled_exports, point):
    chain = sigkilled_exports
    run = chain.points[point]
    assert run.final_name_error is None, run.final_name_error
    if not run.killed:
        pytest.skip(f"the export finished before reaching {point}")
    assert run.left_after_next_run == [], f"the next run left the killed run's {run.left_after_next_run}"
    assert chain.last_code == 0, chain.last_stderr
    assert chain.leftovers == []
    assert chain.final_name_error is None, chain.final_name_error
    assert chain.out_is_dir
