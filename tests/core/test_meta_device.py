"""The paths that run off the CPU keep every tensor on the maps' device: grouping's dense top-k, adjust and
refine, the UDP resampling, image_maps with the network there, the overlapped predictor and the
ground-truth oracle run on ``torch.device("meta")`` (tensors with shapes and no data).

A meta tensor cannot be read back, so the one host copy of each step
(:func:`higherpose.utils.host.to_host`) is replaced here by a reader that checks the tensors are on the
meta device and returns arrays of their shapes and dtypes (floats 1, integers 0). A tensor made on the
CPU in those branches meets a meta tensor in an operation (an error) or reaches the reader (a failed
check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higherpose.core import group, group_refine, udp
from higherpose.core.group import HeatmapParser
from higherpose.core.group_refine import adjust_people, refine_people
from higherpose.core.inference import image_maps
from higherpose.core.layout import OutputLayout
from higherpose.core.predictor import Predictor
from higherpose.core.protocol import TestProtocol
from higherpose.models import build_model
from higherpose.studies.oracle import match_to_ground_truth
from higherpose.utils.host import numpy_dtype
from tests.conftest import TINY_HRNET, load_cfg

META = torch.device("meta")
K = 17


@pytest.fixture
def reads(monkeypatch) -> list[list[tuple[tuple[int, ...], torch.dtype]]]:
    """The host copies made, as (shape, dtype) per tensor; each checked to come from the meta device."""
    seen: list[list[tuple[tuple[int, ...], torch.dtype]]] = []

    def read(*tensors: torch.Tensor, packed: bool | None = None) -> list[np.ndarray]:
        devices = {t.device.type for t in tensors}
        assert devices == {"meta"}, f"host copy of tensors on {devices}"
        seen.append([(tuple(t.shape), t.dtype) for t in tensors])
        return [np.full(tuple(t.shape), 1 if t.is_floating_point() else 0, numpy_dtype(t.dtype)) for t in tensors]

    for module in (group, group_refine, udp):
        monkeypatch.setattr(module, "to_host", read)
    return seen


def _parser(*opts: object) -> HeatmapParser:
    return HeatmapParser(load_cfg(TINY_HRNET, "DATASET.MAX_NUM_PEOPLE", 8, *opts))


@pytest.mark.parametrize("tag_per_joint", [True, False])
def test_top_k_and_candidates_stay_on_the_device(reads, tag_per_joint: bool) -> None:
    parser = _parser("MODEL.TAG_PER_JOINT", tag_per_joint)
    det = torch.empty(2, K, 30, 41, device=META)
    tag = torch.empty(2, K if tag_per_joint else 1, 30, 41, 2, device=META)
    tag_k, loc_k, val_k = parser.top_k_tensors(det, tag)
    assert {t.device for t in (tag_k, loc_k, val_k)} == {META}
    assert (tag_k.shape, loc_k.shape, val_k.shape) == ((2, K, 8, 2), (2, K, 8, 2), (2, K, 8))
    found = parser.candidates(det, tag)  # off the CPU: the dense NMS + top-k, one host copy
    assert reads == [[((2, K, 8, 2), torch.float32), ((2, K, 8, 2), torch.int64), ((2, K, 8), torch.float32)]]
    assert found["loc_k"].shape == (2, K, 8, 2) and found["tag_k"].dtype == np.float32


def _people(num_people: int, detected: list[tuple[int, int, float, float]], tags: int = 2) -> np.ndarray:
    """(P, K, 3 + tags) with the joints (person, joint, x, y) detected (value 0.5)."""
    people = np.zeros((num_people, K, 3 + tags), np.float32)
    for p, j, x, y in detected:
        people[p, j, :3] = (x, y, 0.5)
    return people


@pytest.mark.parametrize("udp_on", [False, True])
def test_adjust_reads_each_images_peak_neighbourhoods_once(reads, udp_on: bool) -> None:
    det = torch.empty(2, K, 24, 32, device=META)
    ans = [_people(2, [(0, 0, 5, 6), (1, 3, 7, 8), (1, 4, 0, 0)]), _people(1, [])]
    adjust_people(ans, det, udp_on)
    assert reads == [[((9, 3), torch.float32)]]  # image 1 has no joints: nothing read
    # equal neighbours (all 1): the quarter shift goes left / up; the Taylor offset is 0
    want_x = np.array([5, 7, 0]) + (0.0 if udp_on else 0.25)
    np.testing.assert_array_equal(ans[0][[0, 1, 1], [0, 3, 4], 0], want_x)


@pytest.mark.parametrize("udp_on", [False, True])
@pytest.mark.parametrize("chunk", [1 << 22, 24 * 32])  # one full-map chunk, or one missing joint a chunk
def test_refine_off_the_cpu_reads_the_tags_then_the_peaks(reads, monkeypatch, udp_on: bool, chunk: int) -> None:
    monkeypatch.setattr(group_refine, "_REFINE_CHUNK", chunk)
    det = torch.empty(K, 24, 32, device=META)
    tag = torch.empty(K, 24, 32, 2, device=META)
    people = _people(2, [(0, 0, 5.25, 6.75), (0, 1, 3.0, 4.0), (1, 2, 7.0, 8.0)])
    refine_people(det, tag, people, K, udp_on)
    missing = 2 * K - 3
    # the tags at the 3 detected joints; then the argmaxes with the neighbourhoods of their peaks
    assert reads == [[((3, 2), torch.float32)], [((missing,), torch.int64), ((9, missing), torch.float32)]]
    filled = people[:, :, 2] > 0
    assert filled.all()  # every missing joint got pixel 0 with value 1 from the reader
    np.testing.assert_array_equal(people[0, 2:, 0], 0.0 if udp_on else 0.25)


def test_parse_batch_off_the_cpu(reads) -> None:
    parser = _parser("DATASET.USE_UDP", True)
    det = torch.empty(1, K, 24, 32, device=META)
    tag = torch.empty(1, K, 24, 32, 1, device=META)
    grouped, scores = parser.parse_batch(det, tag)
    # candidates, adjust, refine (no joint is missing: the reader puts all 8 candidates of each joint
    # at pixel 0 with one tag, so 8 persons have every joint)
    assert len(reads) == 2 and grouped[0].shape == (8, K, 4) and len(scores[0]) == 8


def _layout() -> OutputLayout:
    return OutputLayout.from_config(load_cfg(TINY_HRNET))


def test_udp_resampling_off_the_cpu_is_dense_and_on_the_device(monkeypatch) -> None:
    layout = _layout()
    built = []
    whole = udp.Banded.whole
    monkeypatch.setattr(udp.Banded, "whole", lambda matrix, device=None: built.append(device) or whole(matrix, device))
    udp._resampling_matrices.cache_clear()
    shapes = [(2, 2 * K, 16, 24), (2, K, 32, 48)]
    outputs = [torch.empty(s, device=META) for s in shapes]
    grid = ((64, 96), (48, 32), 2.0, (96, 64), 1.0)  # input (H, W), destination (W', H'), stride, base, ratio
    heat, tags = udp.udp_resampled_maps(layout, outputs, outputs, *grid)
    assert built and set(built) == {META}
    zeros = [torch.zeros(s) for s in shapes]
    cpu_heat, cpu_tags = udp.udp_resampled_maps(layout, zeros, zeros, *grid)
    assert [t.device for t in heat + tags] == [META] * len(heat + tags)
    assert [t.shape for t in heat + tags] == [t.shape for t in cpu_heat + cpu_tags]


def _meta_model(cfg) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(cfg, is_train=False).eval()


@pytest.mark.parametrize("udp_on", [False, True])
def test_image_maps_with_the_network_on_the_device(reads, udp_on: bool) -> None:
    cfg = load_cfg(TINY_HRNET, "DATASET.USE_UDP", udp_on, "DATASET.MAX_NUM_PEOPLE", 8)
    protocol = TestProtocol.from_config(cfg)
    images = [np.zeros((90, 120, 3), np.uint8), np.zeros((90, 120, 3), np.uint8)]
    on_meta = image_maps(protocol, _meta_model(cfg), images, META)
    torch.manual_seed(0)
    with torch.no_grad():
        on_cpu = image_maps(protocol, build_model(cfg, is_train=False).eval(), images, torch.device("cpu"))
    assert on_meta.det.device == on_meta.tags.device == META
    assert on_meta.det.shape == on_cpu.det.shape and on_meta.tags.shape == on_cpu.tags.shape
    assert on_meta.heatmap_size == on_cpu.heatmap_size

    # the whole prediction, overlapped as on a GPU: maps here, grouping on a second thread
    predictor = Predictor(cfg, _meta_model(cfg))
    assert predictor.overlaps and predictor.image_threads == 1
    results = predictor.predict_rgb([*images, np.zeros((70, 120, 3), np.uint8)])
    assert len(results) == 3 and all(len(poses) == 8 for poses, _ in results)


def test_oracle_candidates_off_the_cpu(reads) -> None:
    parser = _parser("DATASET.USE_UDP", True, "TEST.DETECTION_THRESHOLD", 0.1)
    det = torch.empty(K, 24, 32, device=META)
    gt = np.zeros((2, K, 3))
    gt[0, 0] = (1.0, 1.0, 2)  # near pixel 0, where the reader puts every candidate
    gt[1, 5] = (20.0, 20.0, 2)  # beyond the radius
    poses = match_to_ground_truth(det, gt, np.array([3.0, 3.0]), parser)
    assert [len(r) for r in reads] == [3, 1]  # candidates; then the neighbourhoods of the matched peaks
    assert reads[1] == [((9, 1), torch.float32)]
    np.testing.assert_array_equal(poses[0, 0], (0.0, 0.0, 1.0))
    assert not poses[1].any()
