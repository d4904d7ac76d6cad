"""Package layout only (metadata lives in pyproject.toml).

The trainer lives in ``trainer/`` in the repository but installs as ``qvgen_trainer``: a top-level
``trainer`` package would clash with the unrelated PyPI project of that name. Its modules import
each other relatively, so the same files work under both names (``python -m trainer.qat.cli`` in
a checkout, ``qvgen_trainer.qat.cli`` installed).
"""

from setuptools import find_packages, setup

TRAINER = "qvgen_trainer"
trainer_packages = [TRAINER + p[len("trainer") :] for p in find_packages(include=["trainer", "trainer.*"])]

setup(
    packages=find_packages(
        include=["qvgen_export", "qvgen_export.*", "qvgen_tinyworld", "qvgen_tinyworld.*", "qvgen_eval", "qvgen_eval.*"]
    )
    + trainer_packages,
    package_dir={TRAINER: "trainer"},
)
