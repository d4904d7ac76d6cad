"""qvgen-train: TOML and flags populate the config; bad input is one error line and status 2."""

from __future__ import annotations

import json

import pytest

from trainer.qat.cli import config_from_args, main


def test_toml_and_flags(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[train]\nmethod = "qdm"\nscheme = "w3a3"\nsteps = 40\nbetas = [0.9, 0.95]\n')
    cfg, _ = config_from_args(
        ["--config", str(p), "--steps", "50", "--lr-clip", "0.02", "--no-progress", "--exclude", "proj_out"]
    )
    assert cfg.exclude == ("proj_out",) and cfg.quant_config().exclude == ("proj_out",)
    assert cfg.method.value == "qdm" and cfg.scheme == "w3a3" and cfg.steps == 50
    assert cfg.lr_clip == 0.02 and cfg.progress is False and cfg.betas == (0.9, 0.95)


def test_print_config(capsys):
    assert main(["--method", "lsq", "--print-config"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "lsq" and d["caption_dropout"] == 0.05 and d["betas"] == [0.9, 0.95]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scheme", "w9a9"], "weight_bits must be an integer in 2..8"),
        (["--scheme", "int4"], "unknown scheme"),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--method", "qvgen", "--steps", "5"], "rank-decay stages"),
        (["--caption-dropout", "1.5"], "caption_dropout"),
        (["--config", "/nonexistent/cfg.toml"], "config file not found"),
        (["--strategy", "zero3"], "strategy must be"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qvgen-train: error:") and message in err and "\n" not in err


def test_bad_toml(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text("steps = [\n")
    assert main(["--config", str(p)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    p.write_text("stepz = 3\n")
    assert main(["--config", str(p)]) == 2
    assert "unknown config keys: ['stepz']" in capsys.readouterr().err
