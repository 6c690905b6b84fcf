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


def joints_loop(
    joints: np.ndarray, max_num_people: int, num_joints: int, output_res: int, tag_per_joint: bool
) -> np.ndarray:
    """Official JointsGenerator.__call__ with compacted person rows (first M persons with joints)."""
    visible_nodes = np.zeros((max_num_people, num_joints, 2))
    row = 0
    for i in range(len(joints)):
        tot = 0
        for idx, pt in enumerate(joints[i]):
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
