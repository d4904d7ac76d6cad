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


@pytest.mark.parametrize("point", ["tmp-created", "model-written", "late"])
def test_sigkilled_export_leaves_nothing_after_next_run(tmp_path, w4a4_ckpt, point):
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "qvgen_export.cli.export", "--ckpt", str(w4a4_ckpt), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    killed = False
    while time.time() < deadline and proc.poll() is None:
        temps = [tmp_path / n for n in leftovers(tmp_path)]
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
    proc.wait()
    _complete_or_absent(out)
    if not killed:
        pytest.skip(f"the export finished before reaching {point}")
    rerun = subprocess.run([*cmd, "--overwrite"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert leftovers(tmp_path) == []
    _complete_or_absent(out)
    assert out.is_dir()
