"""Install the `higherpose` package from lib/ (``pip install -e .``)."""

from setuptools import setup

SUBPACKAGES = ["config", "models", "dataset", "dataset.synthetic", "core", "utils", "apis", "bench", "studies"]

setup(
    name="higherpose",
    version="0.1.0",
    description="Bottom-up multi-person pose estimation: HigherHRNet + structure-aware transformer head",
    python_requires=">=3.10",
    package_dir={"higherpose": "lib", **{f"higherpose.{p}": "lib/" + p.replace(".", "/") for p in SUBPACKAGES}},
    packages=["higherpose", *[f"higherpose.{p}" for p in SUBPACKAGES]],
)
