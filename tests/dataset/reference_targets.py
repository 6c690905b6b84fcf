"""HigherHRNet's target generators as plain Python loops (persons × joints): the reference that the
vectorised ``higherpose.dataset.target_generators`` must equal exactly. Also imported by
``tools/bench/data.py`` for the speed comparison.

Copied from the official code; the only change is in :func:`joints_loop`, which compacts persons
without joints and keeps the first M (the official code indexes rows by person and crashes past M).
"""

from __future__ import annotations

import numpy as np


def gaussian_kernel(sigma: float) -> np.ndarray:
    size = 6 * sigma + 3
    x = np.arange(0, size, 1, float)
    y = x[:, np.newaxis]
    x0, y0 = 3 * sigma + 1, 3 * sigma + 1
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))


def heatmaps_loop(joints: np.ndarray, output_res: int, num_joints: int, sigma: float) -> np.ndarray:
    """Official HeatmapGenerator.__call__ (σ fixed) or ScaleAwareHeatmapGenerator (σ = None: per person)."""
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
    ``(u, v)`` within ``ceil(3σ) + 1`` of the nearest pixel (a square window); overlaps take the max."""
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
    """Official JointsGenerator.__call__ with compacted person rows (first M persons with joints);
    ``udp``: the joint's pixel is the nearest one, ``floor(x + 0.5)``, instead of ``int(x)``."""
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
    """Official JointsGenerator.__call__ verbatim (rows indexed by person position)."""
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


def random_joints(rng: np.random.Generator, num_people: int, num_joints: int, res: int) -> np.ndarray:
    """(P, K, 4) joints spread a bit beyond the map (so clipping and truncation are exercised)."""
    joints = np.zeros((num_people, num_joints, 4))
    joints[..., 0] = rng.uniform(-0.1 * res, 1.1 * res, (num_people, num_joints))
    joints[..., 1] = rng.uniform(-0.1 * res, 1.1 * res, (num_people, num_joints))
    joints[..., 2] = rng.integers(0, 3, (num_people, num_joints))
    joints[..., 3] = rng.uniform(0.5, 4.0, (num_people, 1))
    return joints


# Coordinates around both borders of a map of size R (R - offset for the negative entries): a joint
# exactly on a pixel centre, half a pixel either side of the first and the last pixel, and beyond.
BORDER_OFFSETS = (-1.0, -0.51, -0.5, -0.49, -0.2, 0.0, 0.3, 0.49, 0.5, 1.0)


def border_joints(rng: np.random.Generator, num_joints: int, res: int) -> np.ndarray:
    """(P, K, 4) joints, each with x or y (or both) at a coordinate of :data:`BORDER_OFFSETS` near
    column / row 0 or R - 1, the other coordinate random in the map; all labelled (v = 2), σ 2."""
    coords = list(BORDER_OFFSETS) + [res - 1 + o for o in BORDER_OFFSETS] + [res - 0.6, res - 0.4]
    coords = np.array(coords)
    num = len(coords)
    persons = int(np.ceil(3 * num / num_joints))
    joints = np.zeros((persons, num_joints, 4))
    flat = joints.reshape(-1, 4)
    free = rng.uniform(1, res - 2, 3 * num)
    for i in range(3 * num):
        c = coords[i % num]
        kind = i // num  # 0: x at the border, 1: y at the border, 2: both (a corner)
        flat[i, 0] = c if kind != 1 else free[i]
        flat[i, 1] = c if kind != 0 else free[i]
        flat[i, 2] = 2
    joints[..., 3] = 2.0
    return joints
