"""HigherHRNet's loops, the references the vectorised code must equal.

Plain Python over persons × joints, copied from the official code with the deviations each docstring
names (devices instead of ``.cuda()``, compacted person rows in :func:`joints_loop`). Training and
inference never run them: the tests hold the fast code to them (``higherpose.dataset.target_generators``,
``higherpose.dataset.coco.get_mask``, ``higherpose.core.group``, ``higherpose.core.loss``) and the
benchmark sections (``bench/core.py``, ``bench/data.py``, run by tools/benchmark.py) time them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

# ------------------------------------------------------------------ targets (dataset/target_generators.py)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The official ``(6σ+3, 6σ+3)`` Gaussian patch, peak 1 at its centre ``3σ + 1``."""
    size = 6 * sigma + 3
    x = np.arange(0, size, 1, float)
    y = x[:, np.newaxis]
    x0, y0 = 3 * sigma + 1, 3 * sigma + 1
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))


def heatmaps_loop(joints: np.ndarray, output_res: int, num_joints: int, sigma: float | None) -> np.ndarray:
    """Official HeatmapGenerator.__call__ (σ fixed) or ScaleAwareHeatmapGenerator (σ None: column 3
    of each person). joints: (P, K, 3+) x, y, v in map pixels -> (K, R, R) float32."""
    hms = np.zeros((num_joints, output_res, output_res), dtype=np.float32)
    for p in joints:
        s = p[0, 3] if sigma is None else sigma
        g = gaussian_kernel(s)
        for idx, pt in enumerate(p):
            if pt[2] > 0:
                x, y = int(pt[0]), int(pt[1])
                if x < 0 or y < 0 or x >= output_res or y >= output_res:
                    continue
                ul = int(np.round(x - 3 * s - 1)), int(np.round(y - 3 * s - 1))
                br = int(np.round(x + 3 * s + 2)), int(np.round(y + 3 * s + 2))
                c, d = max(0, -ul[0]), min(br[0], output_res) - ul[0]
                a, b = max(0, -ul[1]), min(br[1], output_res) - ul[1]
                cc, dd = max(0, ul[0]), min(br[0], output_res)
                aa, bb = max(0, ul[1]), min(br[1], output_res)
                hms[idx, aa:bb, cc:dd] = np.maximum(hms[idx, aa:bb, cc:dd], g[a:b, c:d])
    return hms


def heatmaps_udp_loop(joints: np.ndarray, output_res: int, num_joints: int, sigma: float) -> np.ndarray:
    """``DATASET.USE_UDP`` heatmaps by definition, one pixel at a time: a labelled joint at float
    ``(x, y)`` belongs to its nearest pixel ``(floor(x + 0.5), floor(y + 0.5))`` and is skipped when
    that pixel is outside the map; it adds ``exp(-((u - x)² + (v - y)²) / 2σ²)`` at every in-map pixel
    ``(u, v)`` within ``ceil(3σ) + 1`` of the nearest pixel (a square window); overlaps take the max.
    joints: (P, K, 3+) -> (K, R, R) float32."""
    hms = np.zeros((num_joints, output_res, output_res), dtype=np.float32)
    radius = int(np.ceil(3 * sigma)) + 1
    for p in joints:
        for idx, pt in enumerate(p):
            if pt[2] <= 0:
                continue
            mx, my = int(np.floor(pt[0] + 0.5)), int(np.floor(pt[1] + 0.5))
            if not (0 <= mx < output_res and 0 <= my < output_res):
                continue
            for v in range(my - radius, my + radius + 1):
                for u in range(mx - radius, mx + radius + 1):
                    if 0 <= u < output_res and 0 <= v < output_res:
                        g = np.exp(-((u - pt[0]) ** 2 + (v - pt[1]) ** 2) / (2 * sigma**2))
                        hms[idx, v, u] = max(hms[idx, v, u], g)
    return hms


def joints_loop(
    joints: np.ndarray,
    max_num_people: int,
    num_joints: int,
    output_res: int,
    tag_per_joint: bool,
    udp: bool = False,
) -> np.ndarray:
    """Official JointsGenerator.__call__ with compacted person rows: the first M persons that have a
    joint in the map fill rows 0..M-1 (the official code indexes rows by person and crashes past M).
    ``udp``: the joint's pixel is the nearest one, ``floor(x + 0.5)``, instead of ``int(x)``.
    joints: (P, K, 3+) -> (M, K, 2) int64 (flat tag-map index, 1)."""
    visible_nodes = np.zeros((max_num_people, num_joints, 2))
    row = 0
    for i in range(len(joints)):
        tot = 0
        for idx, pt in enumerate(joints[i]):
            if udp:
                x, y = int(np.floor(pt[0] + 0.5)), int(np.floor(pt[1] + 0.5))
            else:
                x, y = int(pt[0]), int(pt[1])
            if pt[2] > 0 and x >= 0 and y >= 0 and x < output_res and y < output_res:
                if row < max_num_people:
                    if tag_per_joint:
                        visible_nodes[row][tot] = (idx * output_res**2 + y * output_res + x, 1)
                    else:
                        visible_nodes[row][tot] = (y * output_res + x, 1)
                tot += 1
        if tot > 0:
            row += 1
    return visible_nodes.astype(np.int64)


def joints_official(
    joints: np.ndarray, max_num_people: int, num_joints: int, output_res: int, tag_per_joint: bool
) -> np.ndarray:
    """Official JointsGenerator.__call__ verbatim (rows indexed by person position; P <= M).
    joints: (P, K, 3+) -> (M, K, 2) int64."""
    visible_nodes = np.zeros((max_num_people, num_joints, 2))
    for i in range(len(joints)):
        tot = 0
        for idx, pt in enumerate(joints[i]):
            x, y = int(pt[0]), int(pt[1])
            if pt[2] > 0 and x >= 0 and y >= 0 and x < output_res and y < output_res:
                if tag_per_joint:
                    visible_nodes[i][tot] = (idx * output_res**2 + y * output_res + x, 1)
                else:
                    visible_nodes[i][tot] = (y * output_res + x, 1)
                tot += 1
    return visible_nodes.astype(np.int64)


def mask_loop(anns: Sequence[dict], height: int, width: int) -> np.ndarray:
    """Official get_mask: decode and add every crowd / unlabelled person's region separately.
    -> (H, W) bool, True where the loss applies."""
    m = np.zeros((height, width))
    for obj in anns:
        if obj["iscrowd"]:
            m += mask_utils.decode(mask_utils.frPyObjects(obj["segmentation"], height, width))
        elif obj["num_keypoints"] == 0:
            for rle in mask_utils.frPyObjects(obj["segmentation"], height, width):
                m += mask_utils.decode(rle)
    return m < 0.5


# ------------------------------------------------------------------ grouping (core/group.py)

Assignment = Callable[[np.ndarray], list[tuple[int, int]]]


def brute_force_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """Min-cost assignment of every row of ``cost`` (R, C), R <= C, by enumeration: [(row, col)] sorted
    by row (what Munkres returns, found the slow, obviously correct way)."""
    rows, cols = cost.shape
    best, best_cols = None, None
    for perm in itertools.permutations(range(cols), rows):
        total = sum(cost[r, c] for r, c in enumerate(perm))
        if best is None or total < best:
            best, best_cols = total, perm
    return list(enumerate(best_cols))


def ref_match_by_tag(
    tag_k: np.ndarray, loc_k: np.ndarray, val_k: np.ndarray, params: Any, assign: Assignment = brute_force_assignment
) -> np.ndarray:
    """HigherHRNet's match_by_tag (a dict keyed by each person's first tag value) with ``assign`` in
    place of Munkres. tag_k (K, T, L), loc_k (K, T, 2), val_k (K, T); ``params``: a
    ``higherpose.core.group.Params``. -> (P, K, 3+L) float32 persons (x, y, value, tags)."""
    default_ = np.zeros((params.num_joints, 3 + tag_k.shape[2]))
    joint_dict, tag_dict = {}, {}
    for i in range(params.num_joints):
        idx = params.joint_order[i]
        tags = tag_k[idx]
        joints = np.concatenate((loc_k[idx], val_k[idx, :, None], tags), 1)
        mask = joints[:, 2] > params.detection_threshold
        tags, joints = tags[mask], joints[mask]
        if joints.shape[0] == 0:
            continue
        if i == 0 or len(joint_dict) == 0:
            for tag, joint in zip(tags, joints):
                key = tag[0]
                joint_dict.setdefault(key, np.copy(default_))[idx] = joint
                tag_dict[key] = [tag]
        else:
            grouped_keys = list(joint_dict.keys())[: params.max_num_people]
            grouped_tags = [np.mean(tag_dict[i], axis=0) for i in grouped_keys]
            if params.ignore_too_much and len(grouped_keys) == params.max_num_people:
                continue
            diff = joints[:, None, 3:] - np.array(grouped_tags)[None, :, :]
            diff_normed = np.linalg.norm(diff, ord=2, axis=2)
            diff_saved = np.copy(diff_normed)
            if params.use_detection_val:
                diff_normed = np.round(diff_normed) * 100 - joints[:, 2:3]
            num_added, num_grouped = diff.shape[0], diff.shape[1]
            if num_added > num_grouped:
                diff_normed = np.concatenate(
                    (diff_normed, np.zeros((num_added, num_added - num_grouped)) + 1e10), axis=1
                )
            for row, col in assign(diff_normed):
                if row < num_added and col < num_grouped and diff_saved[row][col] < params.tag_threshold:
                    key = grouped_keys[col]
                    joint_dict[key][idx] = joints[row]
                    tag_dict[key].append(tags[row])
                else:
                    key = tags[row][0]
                    joint_dict.setdefault(key, np.copy(default_))[idx] = joints[row]
                    tag_dict[key] = [tags[row]]
    return np.array([joint_dict[i] for i in joint_dict]).astype(np.float32)


def ref_adjust(ans: list[np.ndarray], det: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """HigherHRNet's adjust, in place: each found joint moves a quarter pixel towards its higher
    neighbour, then by half a pixel. ans: per image (P, K, 3+) persons; det: (B, K, H, W) heatmaps."""
    for batch_id, people in enumerate(ans):
        for people_id, i in enumerate(people):
            for joint_id, joint in enumerate(i):
                if joint[2] > 0:
                    y, x = joint[0:2]
                    xx, yy = int(x), int(y)
                    tmp = det[batch_id][joint_id]
                    if tmp[xx, min(yy + 1, tmp.shape[1] - 1)] > tmp[xx, max(yy - 1, 0)]:
                        y += 0.25
                    else:
                        y -= 0.25
                    if tmp[min(xx + 1, tmp.shape[0] - 1), yy] > tmp[max(0, xx - 1), yy]:
                        x += 0.25
                    else:
                        x -= 0.25
                    ans[batch_id][people_id, joint_id, 0:2] = (y + 0.5, x + 0.5)
    return ans


def ref_refine(det: np.ndarray, tag: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """HigherHRNet's per-person refine, in place: each missing joint takes the heatmap maximum after
    subtracting the rounded tag distance to the person's mean tag. det (K, H, W), tag (K, H, W, L),
    keypoints (K, 3+L) of one person -> keypoints."""
    tags = []
    for i in range(keypoints.shape[0]):
        if keypoints[i, 2] > 0:
            x, y = keypoints[i][:2].astype(np.int32)
            tags.append(tag[i, y, x])
    prev_tag = np.mean(tags, axis=0)
    ans = []
    for i in range(keypoints.shape[0]):
        tmp = det[i, :, :]
        tt = ((tag[i, :, :] - prev_tag[None, None, :]) ** 2).sum(axis=2) ** 0.5
        tmp2 = tmp - np.round(tt)
        y, x = np.unravel_index(np.argmax(tmp2), tmp.shape)
        xx, yy = x, y
        val = tmp[y, x]
        x += 0.5
        y += 0.5
        x += 0.25 if tmp[yy, min(xx + 1, tmp.shape[1] - 1)] > tmp[yy, max(xx - 1, 0)] else -0.25
        y += 0.25 if tmp[min(yy + 1, tmp.shape[0] - 1), xx] > tmp[max(0, yy - 1), xx] else -0.25
        ans.append((x, y, val))
    ans = np.array(ans)
    for i in range(det.shape[0]):
        if ans[i, 2] > 0 and keypoints[i, 2] == 0:
            keypoints[i, :2] = ans[i, :2]
            keypoints[i, 2] = ans[i, 2]
    return keypoints


def lsa_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """Min-cost assignment of every row of ``cost`` (R, C), R <= C, by scipy's linear_sum_assignment:
    [(row, col)] sorted by row. Stands in for the pure-Python Munkres (not installed here) where the
    brute force is too slow; both are optimal, and faster than Munkres, so timings of the official
    pipeline made with it are, if anything, too low."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    return list(zip(rows.tolist(), cols.tolist()))


def ref_nms(det: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    """HigherHRNet's HeatmapParser.nms: ``det * (MaxPool2d(kernel, 1, padding)(det) == det)``."""
    maxm = torch.nn.MaxPool2d(kernel, 1, padding)(det)
    maxm = torch.eq(maxm, det).float()
    return det * maxm


def ref_top_k(
    det: torch.Tensor, tag: torch.Tensor, params: Any, kernel: int, padding: int, tag_per_joint: bool = True
) -> dict[str, np.ndarray]:
    """HigherHRNet's HeatmapParser.top_k: NMS, then the ``max_num_people`` largest values per joint.
    det (B, K, H, W), tag (B, K or 1, H, W, L) -> numpy tag_k (B, K, T, L), loc_k (B, K, T, 2) (x, y),
    val_k (B, K, T). ``(ind / w).long()`` is written as a floor division (same for ind >= 0)."""
    det = ref_nms(det, kernel, padding)
    num_images, num_joints, h, w = det.size(0), det.size(1), det.size(2), det.size(3)
    det = det.view(num_images, num_joints, -1)
    val_k, ind = det.topk(params.max_num_people, dim=2)
    tag = tag.view(tag.size(0), tag.size(1), w * h, -1)
    if not tag_per_joint:
        tag = tag.expand(-1, params.num_joints, -1, -1)
    tag_k = torch.stack([torch.gather(tag[:, :, :, i], 2, ind) for i in range(tag.size(3))], dim=3)
    x = ind % w
    y = torch.div(ind, w, rounding_mode="floor").long()
    ind_k = torch.stack((x, y), dim=3)
    return {"tag_k": tag_k.cpu().numpy(), "loc_k": ind_k.cpu().numpy(), "val_k": val_k.cpu().numpy()}


def ref_parse(
    det: torch.Tensor,
    tag: torch.Tensor,
    params: Any,
    kernel: int,
    padding: int,
    tag_per_joint: bool = True,
    adjust: bool = True,
    refine: bool = True,
    assign: Assignment = lsa_assignment,
) -> tuple[list[np.ndarray], list[float]]:
    """HigherHRNet's HeatmapParser.parse: top-k, match (``assign`` for Munkres), adjust, scores (before
    refine), then refine of every person of image 0 with det / tag copied to numpy per person.
    det (B, K, H, W), tag (B, K or 1, H, W, L) -> ([persons of each image (P, K, 3+L)], scores of image 0)."""
    top = ref_top_k(det, tag, params, kernel, padding, tag_per_joint)
    ans = [ref_match_by_tag(t, loc, v, params, assign) for t, loc, v in zip(top["tag_k"], top["loc_k"], top["val_k"])]
    if adjust:
        ans = ref_adjust(ans, det)
    scores = [i[:, 2].mean() for i in ans[0]]
    if refine:
        ans = ans[0]
        for i in range(len(ans)):
            det_numpy = det[0].cpu().numpy()
            tag_numpy = tag[0].cpu().numpy()
            if not tag_per_joint:
                tag_numpy = np.tile(tag_numpy, (params.num_joints, 1, 1, 1))
            ans[i] = ref_refine(det_numpy, tag_numpy, ans[i])
        ans = [ans]
    return ans, scores


# ------------------------------------------------------------------ loss (core/loss.py)


def loop_single_tag_loss(
    pred_tag: torch.Tensor, joints: list[list[list[int]]], loss_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """HigherHRNet's AELoss.singleTagLoss, zeros on the tags' device instead of ``.cuda()``.
    pred_tag (N, 1) one image's flat tag map; joints (M, K, 2) nested lists (flat index, visible)
    -> (push, pull) scalars."""
    tags, pull = [], 0
    for joints_per_person in joints:
        tmp = [pred_tag[j[0]] for j in joints_per_person if j[1] > 0]
        if not tmp:
            continue
        tmp = torch.stack(tmp)
        tags.append(torch.mean(tmp, dim=0))
        pull = pull + torch.mean((tmp - tags[-1].expand_as(tmp)) ** 2)
    n = len(tags)
    zero = pred_tag.new_zeros(1).sum()
    if n == 0:
        return zero, zero
    if n == 1:
        return zero, pull / n
    tags = torch.stack(tags)
    a = tags.expand(n, n)
    diff = a - a.permute(1, 0)
    if loss_type == "exp":
        push = torch.exp(-torch.pow(diff, 2)).sum() - n
    else:
        push = torch.clamp(1 - torch.abs(diff), min=0).sum() - n
    return push / ((n - 1) * n) * 0.5, pull / n


def loop_ae_loss(tags: torch.Tensor, joints: torch.Tensor, loss_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """HigherHRNet's AELoss.forward: :func:`loop_single_tag_loss` per image. tags (B, N, 1) flat tag
    maps, joints (B, M, K, 2) -> (push (B,), pull (B,))."""
    pushes, pulls = [], []
    for i in range(tags.size(0)):
        push, pull = loop_single_tag_loss(tags[i], joints[i].tolist(), loss_type)
        pushes.append(push)
        pulls.append(pull)
    return torch.stack(pushes), torch.stack(pulls)
