import subprocess
import sys

HEAVY = ("tensorrt", "onnxruntime", "polygraphy", "qvgen_export.native", "pycuda", "cuda")


def test_import_pulls_no_heavy_runtime():
    # Judged against what torch itself imports: some torch builds import the `cuda` namespace
    # package (cuda-python) on their own when it is installed; qvgen_export must add nothing.
    code = (
        "import sys, torch\n"
        f"before = {{m for m in {HEAVY!r} if m in sys.modules}}\n"
        "import qvgen_export, qvgen_export.checkpoint, qvgen_export.quant.ptq, qvgen_export.export.pipeline, "
        "qvgen_export.runtime.backends, qvgen_export.cli.export\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules and m not in before]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported eagerly: {out.stdout}"


def test_import_works_when_onnxruntime_is_missing():
    # A meta-path blocker makes the heavy packages unimportable, as on a machine without them.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('onnxruntime', 'polygraphy', 'tensorrt'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import qvgen_export, qvgen_export.checkpoint, qvgen_export.export.pipeline, qvgen_export.runtime.backends\n"
        "print(qvgen_export.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
