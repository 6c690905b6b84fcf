"""Benchmarks of lib/core: the AE loss (vectorised vs HigherHRNet's loop), grouping with adjust + refine
(batched refine vs the official per-person refine; the whole parse vs the official parse on a crowded
image and on the COCO sample images) and keypoint evaluation.

    python -m higherpose.bench.core [--quick]   # this section alone; all: python tools/benchmark.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from higherpose.bench.reference import loop_ae_loss, ref_parse, ref_refine

# The checkout the package is installed from (editable): its experiments/ and the sample data beside it.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("HIGHERPOSE_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))


def _cfg(*opts):
    from higherpose.config import cfg, update_config

    c = cfg.clone()
    path = os.path.join(REPO, "experiments", "coco", "higher_hrnet", "w32_512_adam_lr1e-3.yaml")
    update_config(c, SimpleNamespace(cfg=path, opts=[str(o) for o in opts]))
    return c


def _best(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ------------------------------------------------------------------ sections


def bench_loss(quick: bool) -> list[dict]:
    from higherpose.core.loss import AELoss

    b, m, k, res = 12, 30, 17, 128  # batch 12 at input 512: 1/4 tag map 128 x 128
    g = torch.Generator().manual_seed(0)
    joints = torch.zeros(b, m, k, 2, dtype=torch.int64)
    for i in range(b):
        for p in range(m):
            vis = torch.rand(k, generator=g) < 0.75
            pix = torch.randint(0, res * res, (k,), generator=g)
            js = torch.nonzero(vis).flatten()
            joints[i, p, : len(js), 0] = js * res * res + pix[js]
            joints[i, p, : len(js), 1] = 1
    base = torch.randn(b, k * res * res, 1, generator=g)
    loss = AELoss("exp")

    def step(fn):
        tags = base.clone().requires_grad_(True)
        push, pull = fn(tags, joints)
        (push.sum() + pull.sum()).backward()

    reps = 2 if quick else 5
    fast = _best(lambda: step(loss), reps)
    slow = _best(lambda: step(lambda t, j: loop_ae_loss(t, j, "exp")), 1 if quick else 2)
    detail = f"B={b}, M={m} persons, K={k}, 128x128 tag maps, forward+backward, CPU 1 thread"
    return [
        {"name": "ae_loss_vectorised", "value": fast * 1e3, "unit": "ms", "detail": detail},
        {"name": "ae_loss_official_loop", "value": slow * 1e3, "unit": "ms", "detail": detail},
        {"name": "ae_loss_speedup", "value": slow / fast, "unit": "x", "detail": detail},
    ]


_BLOB_RADIUS = 12  # px: 3 sigma of the sigma-4 joints of the synthetic maps


def _gaussian_blob() -> np.ndarray:
    """(25, 25) float32 Gaussian of sigma 4 px, peak 1, centred: one joint of the synthetic maps."""
    yy, xx = np.mgrid[-_BLOB_RADIUS : _BLOB_RADIUS + 1, -_BLOB_RADIUS : _BLOB_RADIUS + 1]
    return np.exp(-(xx**2 + yy**2) / (2 * 4.0**2)).astype(np.float32)


def _synthetic_maps(num_people: int, k: int, h: int, w: int, seed: int = 0):
    """Projected network outputs at input resolution: Gaussian joints (20% missing), one tag per person."""
    rng = np.random.default_rng(seed)
    det = (rng.random((1, k, h, w), dtype=np.float32) * 0.02).astype(np.float32)
    tag = rng.normal(0, 0.05, (1, k, h, w, 2)).astype(np.float32)
    r, blob = _BLOB_RADIUS, _gaussian_blob()
    for p in range(num_people):
        for j in range(k):
            if rng.random() < 0.2:
                continue
            cx, cy = rng.integers(r, w - r), rng.integers(r, h - r)
            win = (0, j, slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1))
            det[win] = np.maximum(det[win], blob * rng.uniform(0.4, 1.0))
            tag[win] = 1.5 * p + rng.normal(0, 0.05, (2 * r + 1, 2 * r + 1, 2))
    return torch.from_numpy(det), torch.from_numpy(tag)


def bench_parse(quick: bool) -> list[dict]:
    from higherpose.core.group import HeatmapParser

    cfg = _cfg()
    parser = HeatmapParser(cfg)
    k, h, w = 17, 512, 768  # a 4:3 COCO image at input 512, PROJECT2IMAGE
    det, tag = _synthetic_maps(30, k, h, w)
    reps = 1 if quick else 3

    def fast():
        return parser.parse(det, tag, adjust=True, refine=True)

    def official_refine():
        ans = parser.adjust(parser.match(**parser.top_k(det, tag)), det)[0]
        for i in range(len(ans)):  # the official re-copied the maps per person
            ans[i] = ref_refine(det[0].cpu().numpy(), tag[0].cpu().numpy(), ans[i])
        return ans

    t_fast = _best(fast, reps)
    t_match = _best(lambda: parser.parse(det, tag, adjust=True, refine=False), reps)  # the same path, no refine
    t_official_match = _best(lambda: parser.adjust(parser.match(**parser.top_k(det, tag)), det), reps)
    t_slow = _best(official_refine, 1)
    t_refine = t_fast - t_match  # a difference of medians: below ~1 ms it is timing noise
    grouped, _ = fast()
    ref = official_refine()
    same = bool(np.array_equal(grouped[0], ref))
    persons = len(grouped[0])
    detail = f"17x{h}x{w} maps, 2 tags, {persons} persons found, NMS 5, top-30, CPU 1 thread; equal={same}"
    return [
        {"name": "parse_adjust_refine", "value": t_fast * 1e3, "unit": "ms/image", "detail": detail},
        {"name": "parse_nms_topk_match_adjust", "value": t_match * 1e3, "unit": "ms/image", "detail": detail},
        {"name": "parse_official_refine", "value": t_slow * 1e3, "unit": "ms/image", "detail": detail},
        {
            "name": "refine_speedup",
            "value": (t_slow - t_official_match) / t_refine if t_refine > 1e-3 else None,
            "unit": "x",
            "detail": "refine alone: per-person official loop vs ours"
            + ("" if t_refine > 1e-3 else f" (ours {t_refine * 1e3:.2f} ms: below the timing noise, no ratio)"),
        },  # fmt: skip
        {"name": "parse_speedup", "value": t_slow / t_fast, "unit": "x", "detail": "whole parse"},
    ]


def crowded_maps(num_people: int = 30, k: int = 17, size: int = 512, seed: int = 0, drop: float = 0.2):
    """A crowded image: ``num_people`` persons as Gaussian blobs (sigma 4 px, peak 0.4 to 1) on (1, K,
    size, size) heatmaps with uniform noise below 0.02; one tag channel (1, K, size, size, 1), person p
    tagged ``2 p`` (+- 0.05 noise) within 3 sigma of its joints (blobs of one joint do not overlap),
    N(0, 0.05) elsewhere. Every person has joint 0 (first in the COCO grouping order); each other joint
    is missing with probability ``drop``."""
    rng = np.random.default_rng(seed)
    det = (rng.random((1, k, size, size), dtype=np.float32) * 0.02).astype(np.float32)
    tag = rng.normal(0, 0.05, (1, k, size, size, 1)).astype(np.float32)
    r, blob = _BLOB_RADIUS, _gaussian_blob()
    placed: list[list[tuple[int, int]]] = [[] for _ in range(k)]
    for p in range(num_people):
        for j in range(k):
            if j > 0 and rng.random() < drop:
                continue
            for _ in range(1000):  # blobs of one joint do not overlap (while there is room)
                cx, cy = rng.integers(r, size - r), rng.integers(r, size - r)
                if all(max(abs(cx - x), abs(cy - y)) > 2 * r for x, y in placed[j]):
                    break
            placed[j].append((cx, cy))
            win = (0, j, slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1))
            det[win] = np.maximum(det[win], blob * rng.uniform(0.4, 1.0))
            tag[win] = 2.0 * p + rng.normal(0, 0.05, (2 * r + 1, 2 * r + 1, 1))
    return torch.from_numpy(det), torch.from_numpy(tag)


def coco_sample_maps(root: str, seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Maps like the network's for the COCO sample images, built from their ground truth (the sample has
    no model outputs): each image at its test input size (short side 512, long side rounded up to 64,
    as ``get_multi_scale_size``), a Gaussian blob (sigma 4 px, peak 0.5 to 1) at every labelled joint on
    (1, 17, H, W) heatmaps with uniform noise below 0.02, and two tag channels (image and flip) per
    joint: person p's tag ``2 p`` within 3 sigma of its joints (flip channel +- 0.1), N(0, 0.05)
    elsewhere. Unlabelled joints get nothing, so refine has work. -> [(file name, det, tag)]."""
    from higherpose.utils.transforms import get_multi_scale_size

    ann = json.load(open(os.path.join(root, "annotations", "person_keypoints_val2017.json")))
    rng = np.random.default_rng(seed)
    out = []
    for image in sorted(ann["images"], key=lambda i: i["id"]):
        (w, h), center, scale = get_multi_scale_size(np.empty((image["height"], image["width"], 3)), 512, 1.0, 1.0)
        det = (rng.random((1, 17, h, w), dtype=np.float32) * 0.02).astype(np.float32)
        tag = rng.normal(0, 0.05, (1, 17, h, w, 2)).astype(np.float32)
        people = [a for a in ann["annotations"] if a["image_id"] == image["id"] and a["num_keypoints"] > 0]
        for p, person in enumerate(people):
            kp = np.asarray(person["keypoints"], np.float64).reshape(-1, 3)
            x = (kp[:, 0] - center[0]) * w / (scale[0] * 200) + w / 2
            y = (kp[:, 1] - center[1]) * h / (scale[1] * 200) + h / 2
            person_tag = 2.0 * p + rng.normal(0, 0.1)
            for j in np.nonzero(kp[:, 2] > 0)[0]:
                x0, x1 = max(int(x[j]) - 12, 0), min(int(x[j]) + 13, w)
                y0, y1 = max(int(y[j]) - 12, 0), min(int(y[j]) + 13, h)
                if x0 >= x1 or y0 >= y1:
                    continue
                ys, xs = np.mgrid[y0:y1, x0:x1]
                g = np.exp(-((xs - x[j]) ** 2 + (ys - y[j]) ** 2) / (2 * 4.0**2)) * rng.uniform(0.5, 1.0)
                det[0, j, y0:y1, x0:x1] = np.maximum(det[0, j, y0:y1, x0:x1], g)
                win = tag[0, j, y0:y1, x0:x1]
                win[..., 0] = person_tag + rng.normal(0, 0.05, win.shape[:2])
                win[..., 1] = win[..., 0] + rng.normal(0, 0.1, win.shape[:2])
        out.append((image["file_name"], torch.from_numpy(det), torch.from_numpy(tag)))
    return out


def _same(got: tuple, want: tuple) -> bool:
    """Equal persons (every value) and scores (1e-6) of a parse and the official parse."""
    (g_people,), (w_people,) = got[0][:1], want[0][:1]
    if len(g_people) != len(w_people):
        return False
    same = len(g_people) == 0 or bool(np.array_equal(g_people, np.asarray(w_people)))
    return same and bool(np.allclose(got[1], want[1], rtol=0, atol=1e-6))


def _versus_official(cases: list, reps: int) -> tuple[float, float, bool]:
    """Median seconds of the official parse and of ``HeatmapParser.parse`` (adjust + refine) over all
    ``cases`` [(parser, det, tag)], the two timed alternately in each repetition; and whether every
    output was equal."""
    cfg_params = list(cases)

    def official(parser, det, tag):
        return ref_parse(det, tag, parser.params, parser.nms_kernel, parser.nms_padding, parser.tag_per_joint)

    def ours(parser, det, tag):
        return parser.parse(det, tag, adjust=True, refine=True)

    same = all(_same(ours(*c), official(*c)) for c in cfg_params)  # also the warm-up
    t_off, t_ours = [], []
    for _ in range(reps):
        for fn, acc in ((official, t_off), (ours, t_ours)):
            start = time.perf_counter()
            for c in cfg_params:
                fn(*c)
            acc.append(time.perf_counter() - start)
    return float(np.median(t_off)), float(np.median(t_ours)), same


def bench_group_vs_official(quick: bool) -> list[dict]:
    """Whole parse (NMS, top-k, match, adjust, refine) against the official code (reference.ref_parse,
    with scipy's assignment for Munkres) on a crowded image and on the COCO sample images."""
    from higherpose.core.group import HeatmapParser

    parser = HeatmapParser(_cfg())
    reps = 3 if quick else 7
    rows = []
    det, tag = crowded_maps()
    t_off, t_ours, same = _versus_official([(parser, det, tag)], reps)
    found = len(parser.parse(det, tag)[0][0])
    detail = (
        f"30 persons (sigma 4 px, tags 2 apart), 17x512x512, L=1, {found} persons found; "
        f"medians of {reps}, alternating; CPU 1 thread; equal={same}"
    )
    rows += [
        {"name": "group_crowded_official", "value": t_off * 1e3, "unit": "ms/image", "detail": detail},
        {"name": "group_crowded", "value": t_ours * 1e3, "unit": "ms/image", "detail": detail},
        {"name": "group_crowded_speedup", "value": t_off / t_ours, "unit": "x", "detail": detail},
    ]
    root = os.path.join(SHARED, "coco_sample")
    if not os.path.isdir(root):
        detail = f"skipped: COCO sample data not found at {root} (set HIGHERPOSE_SHARED_DATA)"
        return rows + [{"name": "group_coco_sample_speedup", "value": float("nan"), "unit": "x", "detail": detail}]
    maps = coco_sample_maps(root)
    t_off, t_ours, same = _versus_official([(parser, d, t) for _, d, t in maps], reps)
    n = len(maps)
    sizes = ", ".join(f"{d.shape[2]}x{d.shape[3]}" for _, d, _ in maps)
    detail = (
        f"{n} COCO sample images, maps built from ground-truth keypoints (no model outputs in the sample): "
        f"17 x ({sizes}), L=2 (flip); per image, medians of {reps}, alternating; CPU 1 thread; equal={same}"
    )
    rows += [
        {"name": "group_coco_sample_official", "value": t_off / n * 1e3, "unit": "ms/image", "detail": detail},
        {"name": "group_coco_sample", "value": t_ours / n * 1e3, "unit": "ms/image", "detail": detail},
        {"name": "group_coco_sample_speedup", "value": t_off / t_ours, "unit": "x", "detail": detail},
    ]
    return rows


def bench_eval(quick: bool) -> list[dict]:
    from higherpose.core.evaluation import evaluate_keypoints

    out = []
    coco_gt = os.path.join(SHARED, "coco_sample", "annotations", "person_keypoints_val2017.json")
    coco_dt = os.path.join(SHARED, "eval_fixtures", "coco_sample_preds.json")
    if os.path.isfile(coco_gt):
        preds = json.load(open(coco_dt))
        t = _best(lambda: evaluate_keypoints(coco_gt, preds, "coco"), 3)
        out.append({"name": "eval_coco_sample", "value": t * 1e3, "unit": "ms", "detail": "4 images, 73 preds"})
    crowd_gt = os.path.join(SHARED, "eval_fixtures", "crowdpose_val_annotations.json")
    if os.path.isfile(crowd_gt) and not quick:
        gt = json.load(open(crowd_gt))
        rng = np.random.default_rng(0)
        preds = []
        for ann in gt["annotations"]:
            kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            if (kp[:, 2] > 0).sum() == 0:
                continue
            kp[:, :2] += rng.normal(0, 3, (len(kp), 2))
            kp[:, 2] = 1.0
            preds.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                          "score": float(rng.random())})  # fmt: skip
        t = _best(lambda: evaluate_keypoints(crowd_gt, preds, "crowd_pose"), 1)
        out.append({"name": "eval_crowdpose_val", "value": t, "unit": "s",
                    "detail": f"2000 images, {len(preds)} perturbed GT preds, faster-coco-eval"})  # fmt: skip
    return out


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    with torch.no_grad():
        parse = bench_parse(quick) + bench_group_vs_official(quick)
    return bench_loss(quick) + parse + bench_eval(quick)


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']:32s} {r['value']:10.2f} {r['unit']:9s} {r['detail']}")
