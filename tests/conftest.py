"""Shared fixtures: config loading, paths to the real sample data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from higherpose.config import cfg as _default_cfg
from higherpose.config import update_config

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
SHARED_DATA = Path(os.environ.get("HIGHERPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY_HRNET = EXPERIMENTS / "synthetic" / "higher_hrnet_tiny.yaml"
TINY_SAT = EXPERIMENTS / "synthetic" / "higher_pose_tiny.yaml"
W32_COCO_512 = EXPERIMENTS / "coco" / "higher_hrnet" / "w32_512_adam_lr1e-3.yaml"


def load_cfg(path: str | os.PathLike, *opts: object):
    """A fresh, merged and checked config (the global default is never mutated)."""
    cfg = _default_cfg.clone()
    update_config(cfg, SimpleNamespace(cfg=str(path), opts=[str(o) for o in opts]))
    return cfg


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data; skips the test with the reason when the sample data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"sample data not found: {path} (set HIGHERPOSE_SHARED_DATA to ../shared/data)")
    return path


@pytest.fixture
def coco_sample() -> Path:
    return shared_path("coco_sample")


@pytest.fixture
def crowdpose_sample() -> Path:
    return shared_path("crowdpose_sample")


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is a folder of scripts, not a package). The
    scripts import only the ``higherpose`` package, so nothing is added to ``sys.path``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def perfect_model(monkeypatch) -> list:
    """A list to fill with ``(RGB picture, annotations)``: every network that
    :func:`~higherpose.apis.eval_model.load_eval_model` builds (valid.py, demo.py,
    ``PoseEstimator.from_config``) loads its weights strictly, then outputs the perfect heatmaps and
    tags of those annotations for those pictures (:class:`tests.core.test_inference.PerfectModel`)."""
    from higherpose.apis import eval_model
    from tests.core.test_inference import PerfectModel

    samples: list = []
    build = eval_model.build_model

    def build_perfect(cfg, is_train=False):
        model = build(cfg, is_train=is_train)
        model.forward = PerfectModel(cfg, samples).forward
        return model

    monkeypatch.setattr(eval_model, "build_model", build_perfect)
    return samples
