"""Bad input at the command line: one line naming the file and the problem, exit 2, nothing written."""

import subprocess
import sys

import pytest

from qvgen_export.cli import export as export_cli
from qvgen_export.cli import run as run_cli


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("qvgen-")
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_missing_checkpoint(tmp_path, capsys):
    assert export_cli.main(["--ckpt", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    _one_line_error(capsys, "nope.safetensors", "file not found")
    assert _leftovers(tmp_path) == []


def test_truncated_checkpoint(tmp_path, capsys, w4a4_ckpt):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(w4a4_ckpt.read_bytes()[:1000])
    assert export_cli.main(["--ckpt", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    _one_line_error(capsys, str(bad), "not a readable safetensors file")
    assert _leftovers(tmp_path) == ["cut.safetensors"]


def test_unknown_target(tmp_path, capsys, w4a4_ckpt):
    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--target", "tflite", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "unknown target 'tflite'")
    assert _leftovers(tmp_path) == []


def test_unwritable_output(tmp_path, capsys, w4a4_ckpt):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--out", str(blocker / "sub" / "o"), "--quiet"]) == 2
    _one_line_error(capsys, "a_file")
    assert _leftovers(tmp_path) == ["a_file"]


def test_existing_output_needs_overwrite(tmp_path, capsys, w4a4_ckpt):
    out = tmp_path / "o"
    out.mkdir()
    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, str(out), "--overwrite")


def test_failed_export_leaves_nothing(tmp_path, capsys, w4a4_ckpt, monkeypatch):
    def half_written(info, tensors, out_dir, *args, **kwargs):
        (out_dir / "model.onnx").write_bytes(b"partial")
        raise ValueError("simulated failure in the middle of the export")

    monkeypatch.setattr("qvgen_export.export.block_stitch.export_checkpoint_blocks", half_written)
    out = tmp_path / "o"
    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "simulated failure")
    assert _leftovers(tmp_path) == []


def test_failed_overwrite_keeps_previous_export(tmp_path, capsys, w4a4_ckpt, w4a4_export, monkeypatch):
    import shutil

    out = tmp_path / "prev"
    shutil.copytree(w4a4_export, out)
    before = (out / "manifest.json").read_bytes()

    def fail(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr("qvgen_export.export.block_stitch.export_checkpoint_blocks", fail)
    assert export_cli.main(["--ckpt", str(w4a4_ckpt), "--out", str(out), "--overwrite", "--quiet"]) == 2
    assert (out / "manifest.json").read_bytes() == before
    assert _leftovers(tmp_path) == ["prev"]


def test_run_rejects_incomplete_export_folder(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert run_cli.main(["--model", str(tmp_path / "m"), "--quiet"]) == 2
    _one_line_error(capsys, "manifest.json")


def test_run_rejects_bad_sizes(capsys, w4a4_export):
    assert run_cli.main(["--model", str(w4a4_export), "--height", "10", "--quiet"]) == 2
    _one_line_error(capsys, "multiples of the patch")


def test_help_explains():
    out = subprocess.run(
        [sys.executable, "-m", "qvgen_export.cli.export", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0
    assert "--target" in out.stdout and "DequantizeLinear" in out.stdout and "atomically" in out.stdout


@pytest.mark.parametrize("module", ["qvgen_export.cli.run", "qvgen_export.cli.demo"])
def test_other_helps(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "--prompt" in out.stdout


def test_run_int4_backend_from_checkpoint(tmp_path, capsys, w4a4_ckpt):
    from qvgen_export.native import reference_available

    if not reference_available():
        pytest.skip("native reference library not built (scripts/build_native.sh)")
    rc = run_cli.main(
        ["--ckpt", str(w4a4_ckpt), "--int4", "--steps", "1", "--frames", "2", "--quiet", "--out", str(tmp_path)]
    )
    assert rc == 0
    assert (tmp_path / "int4_sheet.png").is_file() and (tmp_path / "int4_latents.safetensors").is_file()


def test_int4_needs_a_checkpoint(capsys, w4a4_export):
    assert run_cli.main(["--model", str(w4a4_export), "--int4"]) == 2
    _one_line_error(capsys, "--int4")
