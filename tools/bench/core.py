"""Benchmarks of lib/core: the AE loss (vectorised vs HigherHRNet's loop), grouping with adjust + refine
(batched refine vs the official per-person refine) and keypoint evaluation.

    python tools/bench/core.py [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

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


# ------------------------------------------------------------------ official loops (timing references)


def _loop_ae_loss(tags, joints, loss_type="exp"):
    """HigherHRNet's AELoss.forward: Python loop over images x persons x joints."""
    pushes, pulls = [], []
    joints = joints.cpu().numpy()
    for i in range(tags.size(0)):
        pred_tag, persons, pull = tags[i], [], 0
        for row in joints[i]:
            tmp = [pred_tag[j[0]] for j in row if j[1] > 0]
            if not tmp:
                continue
            tmp = torch.stack(tmp)
            persons.append(torch.mean(tmp, dim=0))
            pull = pull + torch.mean((tmp - persons[-1].expand_as(tmp)) ** 2)
        n = len(persons)
        persons = torch.stack(persons)
        diff = persons.expand(n, n) - persons.expand(n, n).permute(1, 0)
        push = torch.exp(-torch.pow(diff, 2)).sum() - n
        pushes.append(push / ((n - 1) * n) * 0.5)
        pulls.append(pull / n)
    return torch.stack(pushes), torch.stack(pulls)


def _loop_refine(det, tag, keypoints):
    """HigherHRNet's HeatmapParser.refine for one person (numpy, all K joint maps scanned)."""
    tags = [
        tag[i, int(keypoints[i, 1]), int(keypoints[i, 0])] for i in range(keypoints.shape[0]) if keypoints[i, 2] > 0
    ]
    prev_tag = np.mean(tags, axis=0)
    ans = []
    for i in range(keypoints.shape[0]):
        tmp = det[i]
        tt = ((tag[i] - prev_tag[None, None, :]) ** 2).sum(axis=2) ** 0.5
        y, x = np.unravel_index(np.argmax(tmp - np.round(tt)), tmp.shape)
        val = tmp[y, x]
        x2 = x + 0.5 + (0.25 if tmp[y, min(x + 1, tmp.shape[1] - 1)] > tmp[y, max(x - 1, 0)] else -0.25)
        y2 = y + 0.5 + (0.25 if tmp[min(y + 1, tmp.shape[0] - 1), x] > tmp[max(0, y - 1), x] else -0.25)
        ans.append((x2, y2, val))
    ans = np.array(ans)
    for i in range(det.shape[0]):
        if ans[i, 2] > 0 and keypoints[i, 2] == 0:
            keypoints[i, :3] = ans[i]
    return keypoints


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
    slow = _best(lambda: step(_loop_ae_loss), 1 if quick else 2)
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
            ans[i] = _loop_refine(det[0].cpu().numpy(), tag[0].cpu().numpy(), ans[i])
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
