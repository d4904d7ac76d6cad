"""A generated corpus of bad inputs for every CLI, and the harness that scores one run of it.

Each case forges one bad artifact from a good one (truncations, header edits, dtype and shape
swaps, metadata type errors, out-of-range configs, tampered folders and training states, an
unwritable or full output) and runs the command in-process. A case is *clean* when the command
exits 2 with exactly one stderr line that names the forged file, and leaves no temp files or
half-written outputs. ``score`` counts clean rejections, tracebacks (an exception escaped or an
internal-error exit), accepted-when-bad (exit 0) and leftovers; ``scripts/hardening_counts.py``
runs it against any checkout (before/after figures).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt_tools import edit_header, edit_meta_json, read_raw, rehash_meta, rewrite, write_raw

CASE_TIMEOUT_S = 240


class _Hang(BaseException):
    pass


@dataclass
class Case:
    name: str
    cli: str  # export | run | train | eval
    argv: list[str]
    names: str  # the file or folder the one-line message must name
    watch: Path  # folder that must hold no leftovers afterwards
    expect_absent: Path | None = None  # an output that must not exist afterwards


@dataclass
class Outcome:
    code: int | None
    stderr: list[str]
    traceback: bool
    leftovers: list[str]
    hung: bool = False

    def clean(self, case: Case) -> bool:
        return (
            self.code == 2
            and len(self.stderr) == 1
            and case.names in self.stderr[0]
            and not self.traceback
            and not self.leftovers
        )


def _main(cli: str) -> Callable[[list[str]], int]:
    if cli == "export":
        from qvgen_export.cli.export import main
    elif cli == "run":
        from qvgen_export.cli.run import main
    elif cli == "eval":
        from qvgen_eval.cli import main
    else:
        from trainer.qat.cli import main
    return main


def _temps(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ("tmp" in p.name or "old" in p.name))


def run_case(case: Case) -> Outcome:
    err, out = io.StringIO(), io.StringIO()
    code: int | None = None
    tb = False
    hung = False

    def alarm(signum: int, frame: Any) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_TIMEOUT_S)  # old code hung on huge dimensions: count it, move on
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = _main(case.cli)(case.argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except _Hang:
            hung = True
        except Exception:  # noqa: BLE001 (what escapes the CLI is what this harness measures)
            traceback.print_exc()
            tb = True
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    if hung:
        return Outcome(None, ["(hung)"], True, _temps(case.watch), hung=True)
    lines = [x for x in err.getvalue().splitlines() if x.strip() and not x.startswith(("exporting", "\r"))]
    tb = tb or code == 4 or any("Traceback" in x for x in lines)
    left = _temps(case.watch)
    if case.expect_absent is not None and case.expect_absent.exists():
        left.append(case.expect_absent.name)
    return Outcome(code, lines, tb, left)


def score(cases: list[Case]) -> tuple[dict[str, int], list[tuple[str, Outcome]]]:
    counts = {"cases": len(cases), "clean": 0, "tracebacks": 0, "accepted_when_bad": 0, "other_exit": 0}
    counts["leftovers"] = 0
    counts["hangs"] = 0
    bad: list[tuple[str, Outcome]] = []
    for c in cases:
        o = run_case(c)
        counts["leftovers"] += bool(o.leftovers)
        if o.clean(c):
            counts["clean"] += 1
            continue
        bad.append((c.name, o))
        counts["hangs"] += o.hung
        if o.traceback:
            counts["tracebacks"] += 1
        elif o.code == 0:
            counts["accepted_when_bad"] += 1
        else:
            counts["other_exit"] += 1
    return counts, bad


# -- checkpoints (qvgen-export) ----------------------------------------------------------------


def _set_dtype(key: str, dt: str) -> Callable[[dict[str, Any]], None]:
    return lambda h: h[key].__setitem__("dtype", dt)


def _reverse_shape(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda h: h[key].__setitem__("shape", list(reversed(h[key]["shape"])))


def _meta(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda h: h["__metadata__"].__setitem__(key, value)


def _drop_meta(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda h: h["__metadata__"].pop(key, None)


def checkpoint_files(base: Path, d: Path) -> dict[str, Path]:
    """name -> forged checkpoint file under ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    raw = base.read_bytes()
    header, data = read_raw(base)
    hlen = 8 + int.from_bytes(raw[:8], "little")
    out: dict[str, Path] = {}

    def put(name: str, content: bytes) -> None:
        p = d / f"{name}.safetensors"
        p.write_bytes(content)
        out[name] = p

    for name, n in {
        "trunc-empty": 0,
        "trunc-8": 8,
        "trunc-mid-header": hlen // 2,
        "trunc-header-end": hlen,
        "trunc-25pct": hlen + len(data) // 4,
        "trunc-75pct": hlen + 3 * len(data) // 4,
        "trunc-last-byte": len(raw) - 1,
    }.items():
        put(name, raw[:n])
    put("garbage", b"\x00not a safetensors file" * 20)
    put("huge-header-len", (10**12).to_bytes(8, "little") + raw[8:])

    first_float = next(k for k in header if k != "__metadata__" and k.endswith("patch_embedding.weight"))
    layer = "blocks.0.attn1.to_q"

    def hdr(name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        out[name] = edit_header(base, d / f"{name}.safetensors", fn)

    hdr("dtype-f32-to-i32-float", _set_dtype(first_float, "I32"))
    hdr("dtype-f32-to-i32-table", _set_dtype("scale_shift_table", "I32"))
    hdr("dtype-u8-to-i8-codes", _set_dtype(f"{layer}.qweight", "I8"))
    hdr("dtype-f32-to-f16", _set_dtype(f"{layer}.w_scale", "F16"))
    hdr("shape-swap-float", _reverse_shape(first_float))
    hdr("shape-swap-scale", _reverse_shape(f"{layer}.w_scale"))
    hdr("shape-swap-codes", _reverse_shape(f"{layer}.qweight"))

    def shift(h: dict[str, Any]) -> None:
        a, b = h[f"{layer}.clip_lower"]["data_offsets"]
        h[f"{layer}.clip_lower"]["data_offsets"] = [a + 4, b + 4]

    hdr("offsets-shifted", shift)
    hdr("version-1", _meta("format_version", "1"))
    hdr("version-3", _meta("format_version", "3"))
    hdr("format-foreign", _meta("format", "other/format"))
    hdr("model-class", _meta("model_class", "os.system"))
    hdr("no-tensor-digests", _drop_meta("tensor_sha256"))
    hdr("meta-json-broken", _meta("quant_config", "{not json"))

    def data_flip(key: str, offset: int = 0) -> Callable[[], None]:
        def go() -> None:
            h, body = read_raw(base)
            a, _ = h[key]["data_offsets"]
            b = bytearray(body)
            b[a + offset] ^= 0x01  # the lowest mantissa bit: finite, plausible, wrong
            write_raw(d / f"tamper-{key}.safetensors", h, bytes(b))
            out[f"tamper-{key}"] = d / f"tamper-{key}.safetensors"

        return go

    for key in (first_float, f"{layer}.qweight", f"{layer}.clip_lower", "scale_shift_table"):
        data_flip(key)()

    def qc(name: str, field: str, value: Any) -> None:
        out[name] = edit_meta_json(
            base, d / f"{name}.safetensors", "quant_config", lambda q: q.__setitem__(field, value)
        )

    qc("qc-symmetric-str", "weight_symmetric", "yes")
    qc("qc-symmetric-int", "weight_symmetric", 1)
    qc("qc-include-int", "include", [1])
    qc("qc-include-str", "include", "blocks.*")
    qc("qc-exclude-null", "exclude", None)
    qc("qc-bits-float", "weight_bits", 4.0)
    qc("qc-bits-bool", "weight_bits", True)
    qc("qc-group-str", "group_size", "32")
    qc("qc-tgroups-zero", "timestep_groups", 0)
    qc("qc-clip-nan", "act_clip_base", math.nan)
    qc("qc-clip-str", "act_clip_init", "0.9")
    qc("qc-unknown-key", "rounding", "up")
    qc("qc-gran-int", "weight_granularity", 3)

    def lay(name: str, fn: Callable[[list[dict[str, Any]]], Any]) -> None:
        out[name] = edit_meta_json(base, d / f"{name}.safetensors", "layers", fn)

    lay("layer-name-int", lambda v: v[0].__setitem__("name", 5))
    lay("layer-name-path", lambda v: v[0].__setitem__("name", "../../etc"))
    lay("layer-in-str", lambda v: v[0].__setitem__("in_features", "64"))
    lay("layer-bias-str", lambda v: v[0].__setitem__("bias", "true"))
    lay("layer-bias-flip", lambda v: v[0].__setitem__("bias", not v[0]["bias"]))
    lay("layer-groups-neg", lambda v: v[0].__setitem__("groups", -1))
    lay("layer-dup", lambda v: v.append(dict(v[0])))
    lay("layer-extra-key", lambda v: v[0].__setitem__("evil", 1))
    lay("layers-object", lambda v: {"a": 1})
    lay("layers-empty", lambda v: [])

    def mc(name: str, field: str, value: Any) -> None:
        def fn(c: dict[str, Any]) -> None:
            if value is _DROP:
                c.pop(field)
            else:
                c[field] = value

        out[name] = edit_meta_json(base, d / f"{name}.safetensors", "model_config", fn)

    mc("mc-heads-zero", "num_attention_heads", 0)
    mc("mc-heads-neg", "num_attention_heads", -2)
    mc("mc-heads-other", "num_attention_heads", 4)
    mc("mc-headdim-huge", "attention_head_dim", 10**6)
    mc("mc-layers-huge", "num_layers", 10**6)
    mc("mc-layers-many", "num_layers", 500)
    mc("mc-ffn-huge", "ffn_dim", 10**9)
    mc("mc-rope-huge", "rope_max_seq_len", 10**9)
    mc("mc-patch-short", "patch_size", [1, 4])
    mc("mc-patch-str", "patch_size", "x")
    mc("mc-missing-layers", "num_layers", _DROP)
    mc("mc-unknown-key", "os_command", "rm -rf /")
    mc("mc-qknorm-int", "qk_norm", 5)
    mc("mc-crossnorm-str", "cross_attn_norm", "yes")
    mc("mc-eps-neg", "eps", -1.0)
    out["mc-not-object"] = edit_meta_json(base, d / "mc-not-object.safetensors", "model_config", lambda c: [1, 2])
    out["extra-not-object"] = edit_meta_json(base, d / "extra-not-object.safetensors", "extra", lambda c: "x")

    def tens(name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        out[name] = rewrite(base, d / f"{name}.safetensors", fn)

    import torch

    tens("unknown-under-layer", lambda t: t.__setitem__(f"{layer}.payload", torch.zeros(3)))
    tens("unknown-weight-under-layer", lambda t: t.__setitem__(f"{layer}.weight", torch.zeros(64, 64)))
    tens("nan-float", lambda t: t[first_float].view(-1).__setitem__(0, float("nan")))
    tens("int-float-tensor", lambda t: t.__setitem__("scale_shift_table", t["scale_shift_table"].to(torch.int32)))
    return out


class _Drop:
    pass


_DROP = _Drop()


# -- exported folders (qvgen-run --model) ------------------------------------------------------


def export_folders(good: Path, d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def make(name: str, fn: Callable[[Path, dict[str, Any]], Any]) -> None:
        f = d / name
        shutil.copytree(good, f)
        doc = json.loads((f / "manifest.json").read_text())
        fn(f, doc)
        if doc is not None:
            (f / "manifest.json").write_text(json.dumps(doc))
        out[name] = f

    make("no-files-table", lambda f, m: m.pop("files"))
    make("empty-files-table", lambda f, m: m.__setitem__("files", {}))
    make("no-model-config", lambda f, m: m.pop("model_config"))
    make("model-config-list", lambda f, m: m.__setitem__("model_config", [1]))

    def tamper(f: Path, m: dict[str, Any]) -> None:
        p = f / m["model_file"]
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 1
        p.write_bytes(bytes(b))

    make("tampered-model", tamper)

    def tamper_unlisted(f: Path, m: dict[str, Any]) -> None:
        tamper(f, m)
        m["files"].pop(m["model_file"])

    make("tampered-model-unlisted", tamper_unlisted)
    make("traversal-entry", lambda f, m: m["files"].__setitem__("../x", {"sha256": "0" * 64, "bytes": 1}))
    make("sha-not-hex", lambda f, m: m["files"][m["model_file"]].__setitem__("sha256", "zz"))
    make("files-list", lambda f, m: m.__setitem__("files", ["model.onnx"]))

    def not_json(f: Path, m: dict[str, Any]) -> None:
        m.clear()

    make("manifest-empty-object", not_json)
    f = d / "manifest-garbage"
    shutil.copytree(good, f)
    (f / "manifest.json").write_bytes(b"\xff\xfe{")
    out["manifest-garbage"] = f
    f = d / "manifest-array"
    shutil.copytree(good, f)
    (f / "manifest.json").write_text("[1, 2]")
    out["manifest-array"] = f
    return out


# -- training states (qvgen-train resume) ------------------------------------------------------


def train_toml(path: Path, out_dir: Path) -> Path:
    from qvgen_export.models.wan import TINY_WAN_CONFIG

    mc = ", ".join(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in TINY_WAN_CONFIG.items())
    path.write_text(
        '[train]\nmethod = "qdm"\nteacher = "random"\nsteps = 4\nbatch_size = 2\nsave_every = 1\n'
        "threads = 1\nprogress = false\nvideo_frames = 4\nvideo_height = 16\nvideo_width = 16\n"
        f'out_dir = "{out_dir}"\nmodel_config = {{ {mc} }}\n'
    )
    return path


def state_cases(base_run: Path, d: Path) -> list[Case]:
    """``base_run``: a run stopped after one step (``states/step-0000001``)."""
    cases: list[Case] = []

    def make(name: str, fn: Callable[[Path], Any], names: str = "tensors.safetensors") -> None:
        run = d / name
        shutil.copytree(base_run, run)
        st = run / "states" / "step-0000001"
        fn(st)
        cfg = train_toml(d / f"{name}.toml", run)
        cases.append(Case(f"state-{name}", "train", ["--config", str(cfg)], str(st / names), run / "states"))

    make(
        "truncated", lambda s: (s / "tensors.safetensors").write_bytes((s / "tensors.safetensors").read_bytes()[:-100])
    )
    make("empty", lambda s: (s / "tensors.safetensors").write_bytes(b""))
    make("no-next-step", lambda s: _edit_json(s / "state.json", lambda m: m.pop("next_step")), "state.json")
    make(
        "next-step-str", lambda s: _edit_json(s / "state.json", lambda m: m.__setitem__("next_step", "1")), "state.json"
    )
    make("state-json-garbage", lambda s: (s / "state.json").write_text("{"), "state.json")

    def nan_param(s: Path) -> None:
        def fn(t: dict[str, Any]) -> None:
            k = next(k for k in t if k.startswith("model/") and t[k].is_floating_point())
            t[k].view(-1)[0] = float("nan")

        p = s / "tensors.safetensors"
        rewrite(p, s / "forged.safetensors", fn)  # not in place: the source is memory-mapped
        (s / "forged.safetensors").replace(p)

    make("nan-param", nan_param)

    def flip(s: Path) -> None:
        p = s / "tensors.safetensors"
        h, body = read_raw(p)
        k = next(k for k in h if k.startswith("optim/"))
        b = bytearray(body)
        b[h[k]["data_offsets"][0]] ^= 1
        write_raw(p, h, bytes(b))

    make("tampered-moment", flip)
    return cases


def _edit_json(p: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def build_corpus(ckpt: Path, export: Path, base_run: Path | None, work: Path) -> list[Case]:
    cases: list[Case] = []
    outs = work / "outs"
    outs.mkdir(parents=True, exist_ok=True)
    for name, p in checkpoint_files(ckpt, work / "ckpts").items():
        o = outs / name
        cases.append(Case(f"ckpt-{name}", "export", ["--ckpt", str(p), "--out", str(o), "--quiet"], str(p), outs, o))
    for name, f in export_folders(export, work / "folders").items():
        o = outs / f"run-{name}"
        argv = ["--model", str(f), "--steps", "1", "--frames", "2", "--quiet", "--out", str(o)]
        cases.append(Case(f"folder-{name}", "run", argv, str(f), outs, o))
    if base_run is not None:
        cases += state_cases(base_run, work / "states")
    blocker = work / "a_file"
    blocker.write_text("x")
    cases.append(Case("eval-out-under-file", "eval", ["--out", str(blocker / "eval")], str(blocker), work))
    cases.append(
        Case("export-out-under-file", "export", ["--ckpt", str(ckpt), "--out", str(blocker / "o")], str(blocker), work)
    )
    return cases


# -- fuzz -----------------------------------------------------------------------------------------


def _mutate(rng: random.Random, header: dict, data: bytes) -> tuple[dict, bytes]:
    keys = [k for k in header if k != "__metadata__"]
    kind = rng.randrange(7)
    if kind == 0:  # a metadata JSON value replaced by a random typed value
        meta = header["__metadata__"]
        mk = rng.choice(["quant_config", "model_config", "layers"])
        doc = json.loads(meta[mk])
        vals = [0, -1, 1.5, 10**12, "x", None, True, [], {}, [1], float("nan")]
        if isinstance(doc, dict) and doc:
            doc[rng.choice(list(doc))] = rng.choice(vals)
        elif isinstance(doc, list) and doc:
            e = doc[rng.randrange(len(doc))]
            e[rng.choice(list(e))] = rng.choice(vals)
        meta[mk] = json.dumps(doc)
        rehash_meta(meta)
    elif kind == 1:
        header[rng.choice(keys)]["dtype"] = rng.choice(["F32", "I32", "U8", "F16", "BF16", "I64", "BOOL", "F64"])
    elif kind == 2:
        k = rng.choice(keys)
        header[k]["shape"] = [rng.choice([0, 1, 2, 3, 64, 10**9]) for _ in range(rng.randrange(4))]
    elif kind == 3:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b)
    elif kind == 4:
        data = data[: rng.randrange(len(data))]
    elif kind == 5:
        k = rng.choice(keys)
        a, b = header[k]["data_offsets"]
        header[k]["data_offsets"] = [a + rng.randrange(-8, 9), b + rng.randrange(-8, 9)]
    else:
        header.pop(rng.choice(keys))
    return header, data


def run_fuzz(ckpt: Path, work: Path, n: int, seed: int) -> Counter:
    from qvgen_export.checkpoint import CheckpointError, load_quantized_model

    rng = random.Random(seed)
    base_h, base_d = read_raw(ckpt)
    out: Counter = Counter()
    for i in range(n):
        h, d = _mutate(rng, json.loads(json.dumps(base_h)), base_d)
        p = write_raw(work / f"f{i % 4}.safetensors", h, d)
        t0 = time.perf_counter()
        try:
            load_quantized_model(p)
            out["accepted"] += 1
        except CheckpointError:
            out["CheckpointError"] += 1
        except Exception as e:  # noqa: BLE001 (counted and reported)
            out[type(e).__name__] += 1
        if time.perf_counter() - t0 > 20:
            out["slow"] += 1
    return out
