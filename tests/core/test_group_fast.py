"""HeatmapParser.parse with its exact shortcuts (NMS only above the detection threshold, pruned refine)
equals HigherHRNet's whole parse (``higherpose.bench.reference.ref_parse``: max-pool NMS, top-k, the
dict-based matching, adjust, per-person full-map refine) on crowded, COCO-like, random and tied maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higherpose.bench.core import coco_sample_maps, crowded_maps
from higherpose.bench.reference import lsa_assignment, ref_match_by_tag, ref_parse, ref_refine, ref_top_k
from higherpose.core import group_refine
from higherpose.core.group import HeatmapParser
from tests.conftest import TINY_HRNET, W32_COCO_512, load_cfg
from tests.core.test_group import make_maps


def _official(parser: HeatmapParser, det, tag, adjust=True, refine=True):
    return ref_parse(
        det, tag, parser.params, parser.nms_kernel, parser.nms_padding, parser.tag_per_joint, adjust, refine
    )


def assert_same_parse(parser: HeatmapParser, det, tag, adjust=True, refine=True):
    """parse == the official parse: same persons in the same order, every value equal; scores 1e-6."""
    grouped, scores = parser.parse_batch(det, tag, adjust, refine)
    got, got_scores = grouped[0], scores[0]
    official, want_scores = _official(parser, det, tag, adjust, refine)
    want = np.asarray(official[0], dtype=np.float32).reshape(-1, *got.shape[1:])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-6)
    return got


def _w32(*opts):
    return load_cfg(W32_COCO_512, *opts)


def test_crowded_image_equals_official():
    """30 persons on 17x512x512, one tag channel: the benchmark's crowded case."""
    parser = HeatmapParser(_w32())
    det, tag = crowded_maps()
    got = assert_same_parse(parser, det, tag)
    assert len(got) == 30 and (got[:, :, 2] > 0).all()  # refine filled every missing joint


def test_coco_sample_maps_equal_official(coco_sample):
    """Maps built from the COCO sample's ground truth at test input size, two tag channels (flip)."""
    parser = HeatmapParser(_w32())
    for _, det, tag in coco_sample_maps(str(coco_sample)):
        assert_same_parse(parser, det, tag)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("tags_l", [1, 2])
@pytest.mark.parametrize("refine", [True, False])
def test_random_maps_equal_official(seed, tags_l, refine):
    parser = HeatmapParser(load_cfg(TINY_HRNET, "DATASET.MAX_NUM_PEOPLE", 8, "DATASET.USE_UDP", False))
    det, tag = make_maps(6, seed=seed, tags_l=tags_l, drop=0.4)
    assert_same_parse(parser, det, tag, refine=refine)
    assert_same_parse(parser, det, tag, adjust=False, refine=refine)


@pytest.mark.parametrize("seed", range(4))
def test_crowded_small_maps_with_shared_tag_map(seed):
    """TAG_PER_JOINT False: one tag map for all joints, odd map size (partial tiles)."""
    parser = HeatmapParser(_w32("MODEL.TAG_PER_JOINT", False))
    det, tag = make_maps(12, h=93, w=77, tags_l=2, seed=seed, drop=0.3)
    assert_same_parse(parser, det, tag[:, :1])


def _quantised_maps(seed: int, k: int = 4, h: int = 37, w: int = 45, tags_l: int = 1):
    """Heatmaps on a 1/8 grid: plateaus, equal peaks and (the scores' rounded tag distances being
    integers) equal refine scores. Tags stay continuous so that no two persons share their first tag
    (the official dict would merge them)."""
    g = torch.Generator().manual_seed(seed)
    det = torch.randint(0, 9, (1, k, h, w), generator=g).float() / 8
    det = torch.where(torch.rand(1, k, h, w, generator=g) < 0.7, det * 0.3, det)  # mostly low, a few peaks
    tag = torch.rand(1, k, h, w, tags_l, generator=g) * 4
    return det, tag


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tags_l", [1, 2])
def test_ties_in_nms_top_k_and_refine_follow_the_official_order(seed, tags_l):
    """Equal candidate values (torch.topk's order decides: those joints take the dense path) and equal
    refine scores (the first pixel in flat order wins) as in the official code."""
    cfg = load_cfg(TINY_HRNET, "DATASET.MAX_NUM_PEOPLE", 6, "DATASET.USE_UDP", False, "TEST.DETECTION_THRESHOLD", 0.2)
    parser = HeatmapParser(cfg)
    det, tag = _quantised_maps(seed, k=parser.params.num_joints, tags_l=tags_l)
    assert_same_parse(parser, det, tag)


def test_candidates_equal_official_top_k_above_threshold():
    """The kept entries of the shortcut top-k equal the official top-k's, in order."""
    parser = HeatmapParser(_w32())
    det, tag = crowded_maps(num_people=12, size=192, seed=3)
    det = torch.cat([det, det.flip(3)])
    tag = torch.cat([tag, tag.flip(3)])
    fast = parser.candidates(det, tag)
    ref = ref_top_k(det, tag, parser.params, parser.nms_kernel, parser.nms_padding)
    keep = ref["val_k"] > parser.params.detection_threshold
    np.testing.assert_array_equal(fast["val_k"] > parser.params.detection_threshold, keep)
    for key in ("val_k", "loc_k", "tag_k"):
        np.testing.assert_array_equal(fast[key][keep], ref[key][keep])
    for b in range(2):
        np.testing.assert_array_equal(
            parser.match(**fast)[b],
            ref_match_by_tag(ref["tag_k"][b], ref["loc_k"][b], ref["val_k"][b], parser.params, lsa_assignment),
        )


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"_TILE": 5, "_FIRST_TILES": 1},  # partial tiles on every map size
        {"_DENSE_SHARE": 1e-3},  # pairs with many tiles: pixels selected by det, or the full map
        {"_DENSE_SHARE": 0.0},  # every pair left by the peaks on the full map
        {"_PEAK_SHARE": 0.0, "_FIRST_TILES": 2},  # no peak step: tiles only
    ],
)
@pytest.mark.parametrize("tags_l", [1, 2])
def test_every_refine_path_equals_the_official_loop(monkeypatch, settings, tags_l):
    for name, value in settings.items():
        monkeypatch.setattr(group_refine, name, value)
    parser = HeatmapParser(_w32())
    cases = [make_maps(8, h=61, w=50, tags_l=tags_l, seed=s, drop=0.5) for s in range(2)]
    cases += [_quantised_maps(s, k=17, tags_l=tags_l) for s in range(2)]
    for det, tag in cases:
        ans = parser.adjust(parser.match(**parser.top_k(det, tag)), det)[0]
        want = np.stack([ref_refine(det[0].numpy(), tag[0].numpy(), p.copy()) for p in ans])
        np.testing.assert_array_equal(parser.refine(det[0], tag[0], ans.copy()), want)


def test_refine_steps_each_settle_pairs(monkeypatch):
    """On the crowded image the peaks settle nothing (every missing joint's blob is absent), the tile
    bounds settle the pairs, and the result equals the official loop."""
    parser = HeatmapParser(_w32())
    det, tag = crowded_maps(num_people=16, size=256, seed=1)
    ans = parser.adjust(parser.match(**parser.candidates(det, tag)), det)[0]
    settled = []
    real = group_refine.refine_pruned

    def spy(*args):
        real(*args)
        settled.append((int((args[-1] >= 0).sum()), len(args[-1])))

    monkeypatch.setattr(group_refine, "refine_pruned", spy)
    want = np.stack([ref_refine(det[0].numpy(), tag[0].numpy(), p.copy()) for p in ans])
    np.testing.assert_array_equal(parser.refine(det[0], tag[0], ans.copy()), want)
    ((done, total),) = settled
    assert total > 10 and done >= total - 2  # at most the person tagged like the background is left


def test_parse_batch_refines_every_image_like_the_official_image_0():
    parser = HeatmapParser(_w32())
    maps = [crowded_maps(num_people=10, size=160, seed=s) for s in range(3)]
    det = torch.cat([d for d, _ in maps])
    tag = torch.cat([t for _, t in maps])
    grouped, scores = parser.parse_batch(det, tag)
    for b in range(3):
        (want,), want_scores = _official(parser, det[b : b + 1], tag[b : b + 1])
        np.testing.assert_array_equal(grouped[b], np.asarray(want, dtype=np.float32))
        np.testing.assert_allclose(scores[b], want_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tags_l", [1, 2])
def test_udp_parse_equals_the_dense_path(monkeypatch, tags_l):
    """DATASET.USE_UDP has no official code: the shortcuts must give what the dense top-k and the
    full-map refine give (the latter equal to the official loop, tested above)."""
    parser = HeatmapParser(load_cfg(TINY_HRNET, "DATASET.MAX_NUM_PEOPLE", 8, "DATASET.USE_UDP", True))
    assert parser.udp
    for seed in range(3):
        det, tag = make_maps(7, tags_l=tags_l, seed=seed, drop=0.4)
        got = parser.parse_batch(det, tag)
        with monkeypatch.context() as m:
            m.setattr(parser, "candidates", parser.top_k)
            m.setattr(group_refine, "refine_pruned", lambda *args: None)
            want = parser.parse_batch(det, tag)
        np.testing.assert_array_equal(got[0][0], want[0][0])
        assert got[1] == want[1]


def test_float64_maps_equal_official():
    parser = HeatmapParser(load_cfg(TINY_HRNET, "DATASET.MAX_NUM_PEOPLE", 8, "DATASET.USE_UDP", False))
    det, tag = make_maps(6, seed=5, tags_l=2, drop=0.5)
    assert_same_parse(parser, det.double(), tag.double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_maps_give_the_cpu_result():
    parser = HeatmapParser(_w32())
    det, tag = crowded_maps(num_people=10, size=192, seed=2)
    got = parser.parse_batch(det.cuda(), tag.cuda())
    want = parser.parse_batch(det, tag)
    np.testing.assert_array_equal(got[0][0], want[0][0])
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=0, atol=1e-6)
