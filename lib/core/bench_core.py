"""Benchmarks of lib/core: the AE loss (vectorised vs HigherHRNet's loop), grouping with adjust + refine
(batched refine vs the official per-person refine) and keypoint evaluation.

    python -m higherpose.core.bench_core [--quick]   # this section alone; all: python tools/benchmark.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from higherpose.core.reference import loop_ae_loss, ref_refine

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


def _synthetic_maps(num_people: int, k: int, h: int, w: int, seed: int = 0):
    """Projected network outputs at input resolution: Gaussian joints (20% missing), one tag per person."""
    rng = np.random.default_rng(seed)
    det = (rng.random((1, k, h, w), dtype=np.float32) * 0.02).astype(np.float32)
    tag = rng.normal(0, 0.05, (1, k, h, w, 2)).astype(np.float32)
    r = 12
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    blob = np.exp(-(xx**2 + yy**2) / (2 * 4.0**2)).astype(np.float32)
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
    t_match = _best(lambda: parser.adjust(parser.match(**parser.top_k(det, tag)), det), reps)
    t_slow = _best(official_refine, 1)
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
            "value": (t_slow - t_match) / max(t_fast - t_match, 1e-9),
            "unit": "x",
            "detail": "refine alone: per-person official loop vs batched",
        },  # fmt: skip
        {"name": "parse_speedup", "value": t_slow / t_fast, "unit": "x", "detail": "whole parse"},
    ]


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
        parse = bench_parse(quick)
    return bench_loss(quick) + parse + bench_eval(quick)


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']:32s} {r['value']:10.2f} {r['unit']:9s} {r['detail']}")
