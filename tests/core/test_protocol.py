"""TestProtocol: the test settings read once from the config, and a prediction path that reads no
config after that."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higherpose.core.group import HeatmapParser, Params
from higherpose.core.layout import OutputLayout
from higherpose.core.predictor import Predictor
from higherpose.core.protocol import TestProtocol
from higherpose.models import build_model
from tests.conftest import TINY_HRNET, load_cfg

OPTS = ("DEVICE", "cpu", "TEST.DETECTION_THRESHOLD", "0.004", "DATASET.MAX_NUM_PEOPLE", "8")


class _NoConfig:
    """Stands in for the config: any read fails the test."""

    def __getattr__(self, name: str):
        pytest.fail(f"the config was read per image (cfg.{name})")


def test_from_config_reads_the_test_keys() -> None:
    cfg = load_cfg(
        TINY_HRNET, "TEST.SCALE_FACTOR", [2.0, 1.0], "TEST.FLIP_TEST", False, "TEST.INPUT_SIZE", 320,
        "TEST.ADJUST", False, "TEST.IMAGES_PER_GPU", 3, "TEST.FP16", True, "FP16.DTYPE", "bfloat16",
    )  # fmt: skip
    p = TestProtocol.from_config(cfg)
    assert (p.input_size, p.scales, p.flip, p.adjust, p.refine) == (320, (2.0, 1.0), False, False, cfg.TEST.REFINE)
    assert p.images_per_forward == 3 and p.amp_dtype is torch.bfloat16 and p.udp == cfg.DATASET.USE_UDP
    assert p.output_stride == cfg.DATASET.INPUT_SIZE / cfg.DATASET.OUTPUT_SIZE[-1]
    assert p.layout == OutputLayout.from_config(cfg) and p.grouping == Params.from_cfg(cfg)
    assert TestProtocol.of(p) is p and TestProtocol.of(cfg) == p


def test_parser_from_protocol_equals_parser_from_config() -> None:
    cfg = load_cfg(TINY_HRNET, "TEST.NMS_KERNEL", 3, "TEST.NMS_PADDING", 1, "DATASET.USE_UDP", True)
    a, b = HeatmapParser(cfg), HeatmapParser.from_protocol(TestProtocol.from_config(cfg))
    assert (a.params, a.nms_kernel, a.nms_padding, a.tag_per_joint, a.udp) == (
        b.params, b.nms_kernel, b.nms_padding, b.tag_per_joint, b.udp,
    )  # fmt: skip


@pytest.mark.parametrize("threads", [1, 2])
def test_prediction_reads_no_config_after_the_protocol(threads: int) -> None:
    """Predictor builds the protocol once: with the config replaced by an object that fails on every
    read, the same images give the same poses (multi-scale and flip, with 1 and 2 image threads)."""
    cfg = load_cfg(TINY_HRNET, *OPTS, "TEST.SCALE_FACTOR", [2.0, 1.0], "TEST.CPU_IMAGE_THREADS", threads)
    torch.manual_seed(0)
    predictor = Predictor(cfg, build_model(cfg, is_train=False).eval())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    want = predictor.predict_rgb(images)
    predictor.cfg = _NoConfig()
    got = predictor.predict_rgb(images)
    assert sum(len(poses) for poses, _ in want) > 0  # the comparison covers grouped people
    for (want_poses, want_scores), (got_poses, got_scores) in zip(want, got):
        assert got_scores == want_scores
        for w, g in zip(want_poses, got_poses):
            np.testing.assert_array_equal(g, w)
