"""Training targets: per-joint Gaussian heatmaps and associative-embedding joint indices.

Same results as HigherHRNet's ``target_generators.py`` (integer-truncated centres, a ``6σ+3`` patch,
max-merge of overlapping Gaussians, joints outside ``[0, R)`` skipped, ``v > 0`` counts as labelled),
computed with array operations instead of the official Python loop over persons × joints. The plain
loop lives in ``higherpose.bench.reference`` as the reference these must equal.

Joint arrays are ``(P, K, 3)`` = ``(x, y, v)`` in output-resolution pixels (``(P, K, 4)`` with a
per-person sigma in column 3 for :class:`ScaleAwareHeatmapGenerator`).

With ``udp=True`` (``DATASET.USE_UDP``, NEW) the Gaussians are centred at the exact float positions
instead of the truncated ones, and a joint belongs to the pixel nearest to it: the unbiased encoding
of Huang et al. (UDP, CVPR 2020). Truncation moves every target by up to one output pixel (half a
pixel on average) toward the top left, which is label noise the network cannot learn away.
"""

from __future__ import annotations

import numpy as np


def gaussian_patch(sigma: float) -> np.ndarray:
    """HigherHRNet's ``(6σ+3) × (6σ+3)`` Gaussian patch, peak 1 at ``(3σ+1, 3σ+1)`` (float64)."""
    size = 6 * sigma + 3
    x = np.arange(0, size, 1, float)
    y = x[:, np.newaxis]
    x0 = y0 = 3 * sigma + 1
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))


def _valid_points(
    joints: np.ndarray, output_res: int, udp: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labelled joints whose truncated (``udp``: rounded) position lies in the map.

    Returns ``(person, joint, x, y)`` index arrays, each ``(N,)``, in person-major order.
    """
    joints = np.asarray(joints, dtype=np.float64)
    if joints.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    if udp:  # the pixel whose centre is nearest
        xs = np.floor(joints[..., 0] + 0.5).astype(np.int64)
        ys = np.floor(joints[..., 1] + 0.5).astype(np.int64)
    else:  # int() truncates toward zero, so a joint at x = -0.5 lands on pixel 0 (as in HigherHRNet)
        xs = np.trunc(joints[..., 0]).astype(np.int64)
        ys = np.trunc(joints[..., 1]).astype(np.int64)
    ok = (joints[..., 2] > 0) & (xs >= 0) & (ys >= 0) & (xs < output_res) & (ys < output_res)
    person, joint = np.nonzero(ok)
    return person, joint, xs[person, joint], ys[person, joint]


def _new_maps(num_joints: int, res: int) -> np.ndarray:
    """Zeroed flat float32 buffer for ``(K, R, R)`` maps plus one spare element (see :func:`_paste_max`)."""
    return np.zeros(num_joints * res * res + 1, np.float32)


def _paste_max(
    buf: np.ndarray, res: int, joint: np.ndarray, xs: np.ndarray, ys: np.ndarray, sigma: float, g: np.ndarray
) -> None:
    """Max-merge patch ``g`` (σ) centred at each ``(joint, x, y)`` into the flat maps ``buf``, in place.

    ``buf`` holds ``K·R·R`` map values plus one spare element: window pixels outside the map are sent
    there, so the scatter needs no boolean compaction (the spare value is dropped by the caller).
    """
    if len(xs) == 0:
        return
    # Window corners exactly as HigherHRNet: ul = round(x - 3σ - 1), br = round(x + 3σ + 2) (exclusive).
    ul_x = np.round(xs - 3 * sigma - 1).astype(np.int64)
    ul_y = np.round(ys - 3 * sigma - 1).astype(np.int64)
    br_x = np.round(xs + 3 * sigma + 2).astype(np.int64)
    br_y = np.round(ys + 3 * sigma + 2).astype(np.int64)
    span = int(max((br_x - ul_x).max(), (br_y - ul_y).max()))
    patch = np.zeros((span, span), np.float32)  # g cut or zero-padded to the widest window
    h, w = min(span, g.shape[0]), min(span, g.shape[1])
    patch[:h, :w] = g[:h, :w]
    spare = len(buf) - 1
    itype = np.int32 if spare < 2**31 - 2 * res * res else np.int64
    off = np.arange(span, dtype=itype)
    px = ul_x.astype(itype)[:, None] + off  # (N, S) map columns / rows covered by each window
    py = ul_y.astype(itype)[:, None] + off
    bad_x = (px < 0) | (px >= res) | (px >= br_x[:, None]) | (off >= g.shape[1])
    bad_y = (py < 0) | (py >= res) | (py >= br_y[:, None]) | (off >= g.shape[0])
    _scatter_max(buf, res, joint.astype(itype), px, py, bad_x, bad_y, np.broadcast_to(patch, (len(xs), span, span)))


def _scatter_max(
    buf: np.ndarray,
    res: int,
    joint: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    bad_x: np.ndarray,
    bad_y: np.ndarray,
    patches: np.ndarray,
) -> None:
    """Max-merge ``patches (N, S, S)`` into the flat maps ``buf`` at map ``joint (N,)``, columns ``px``
    and rows ``py`` (each (N, S)); columns / rows flagged in ``bad_x`` / ``bad_y`` go to the spare element."""
    spare = len(buf) - 1
    rows = (joint[:, None] * res + py) * res
    rows[bad_y] = spare  # any sum with an out-of-window row or column is >= spare
    px = np.where(bad_x, spare, px)
    flat = np.minimum(rows[:, :, None] + px[:, None, :], spare).reshape(-1)  # (N·S·S,)
    np.maximum.at(buf, flat, patches.reshape(-1))


def _paste_max_exact(buf: np.ndarray, res: int, joint: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float) -> None:
    """UDP: max-merge a Gaussian (σ) centred at each float ``(x, y)`` of map ``joint`` into ``buf``.

    Sampled at the pixels within ``ceil(3σ) + 1`` of the nearest pixel (the official window's size);
    ``buf`` is the flat buffer of :func:`_paste_max` with its spare element.
    """
    if len(x) == 0:
        return
    radius = int(np.ceil(3 * sigma)) + 1
    off = np.arange(-radius, radius + 1)
    px = np.floor(x + 0.5).astype(np.int64)[:, None] + off  # (N, S)
    py = np.floor(y + 0.5).astype(np.int64)[:, None] + off
    gx = np.exp(-((px - x[:, None]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((py - y[:, None]) ** 2) / (2 * sigma**2))
    patches = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)  # (N, S, S)
    _scatter_max(buf, res, joint, px, py, (px < 0) | (px >= res), (py < 0) | (py >= res), patches)


class HeatmapGenerator:
    """``(P, K, ≥3)`` joints → ``(K, R, R)`` float32 heatmaps with a fixed σ (HigherHRNet's name and call).

    ``udp``: Gaussians at the exact joint positions (see the module docstring)."""

    def __init__(self, output_res: int, num_joints: int, sigma: float = -1, udp: bool = False) -> None:
        self.output_res = int(output_res)
        self.num_joints = int(num_joints)
        self.sigma = self.output_res / 64 if sigma < 0 else sigma
        self.g = gaussian_patch(self.sigma)
        self.udp = bool(udp)

    def __call__(self, joints: np.ndarray) -> np.ndarray:
        res = self.output_res
        buf = _new_maps(self.num_joints, res)
        person, joint, xs, ys = _valid_points(joints, res, self.udp)
        if self.udp:
            joints = np.asarray(joints, dtype=np.float64)
            _paste_max_exact(buf, res, joint, joints[person, joint, 0], joints[person, joint, 1], self.sigma)
        else:
            _paste_max(buf, res, joint, xs, ys, self.sigma, self.g)
        return buf[:-1].reshape(self.num_joints, res, res)


class ScaleAwareHeatmapGenerator:
    """Heatmaps with a per-person σ taken from ``joints[p, 0, 3]`` (``(P, K, 4)`` joints).

    HigherHRNet's constructor takes ``(output_res, num_joints)`` but its ``build_dataset`` calls it with
    a third ``sigma`` argument (a TypeError); both calls work here and the third argument is unused.
    """

    def __init__(self, output_res: int, num_joints: int, sigma: float | None = None) -> None:
        del sigma  # per-person σ comes from the joints
        self.output_res = int(output_res)
        self.num_joints = int(num_joints)

    def get_gaussian_kernel(self, sigma: float) -> np.ndarray:
        return gaussian_patch(sigma)

    def __call__(self, joints: np.ndarray) -> np.ndarray:
        res = self.output_res
        buf = _new_maps(self.num_joints, res)
        joints = np.asarray(joints, dtype=np.float64)
        if joints.size == 0:
            return buf[:-1].reshape(self.num_joints, res, res)
        if joints.shape[-1] < 4:
            raise ValueError(
                f"ScaleAwareHeatmapGenerator needs (P, K, 4) joints with σ in column 3, got {joints.shape}"
            )
        person, joint, xs, ys = _valid_points(joints, res)
        sigmas = joints[:, 0, 3][person]
        # One patch per distinct σ (at most one per person): a loop over persons, not persons × joints.
        for sigma in np.unique(sigmas):
            sel = sigmas == sigma
            _paste_max(buf, res, joint[sel], xs[sel], ys[sel], float(sigma), gaussian_patch(float(sigma)))
        return buf[:-1].reshape(self.num_joints, res, res)


class JointsGenerator:
    """``(P, K, ≥3)`` joints → ``(M, K, 2)`` int64 ``(flat tag-map index, 1)`` rows for the AE loss.

    The flat index is ``j·R² + y·R + x`` (``y·R + x`` when ``tag_per_joint`` is False); each person's
    labelled, in-map joints fill its row from slot 0 on; unused slots are ``(0, 0)``.

    Difference from HigherHRNet: rows are compacted — persons without any in-map joint take no row —
    and only the first ``M`` persons with joints are kept (HigherHRNet indexes rows by person position
    and raises IndexError past ``M``). The AE loss skips empty rows, so losses are unchanged.
    ``last_overflow`` is the number of persons dropped by the last call; ``overflow`` the running total.
    """

    def __init__(
        self, max_num_people: int, num_joints: int, output_res: int, tag_per_joint: bool, udp: bool = False
    ) -> None:
        self.max_num_people = int(max_num_people)
        self.num_joints = int(num_joints)
        self.output_res = int(output_res)
        self.tag_per_joint = bool(tag_per_joint)
        self.udp = bool(udp)  # the tag is read at the nearest pixel, not the truncated one
        self.last_overflow = 0
        self.overflow = 0

    def __call__(self, joints: np.ndarray) -> np.ndarray:
        res = self.output_res
        out = np.zeros((self.max_num_people, self.num_joints, 2), dtype=np.int64)
        person, joint, xs, ys = _valid_points(joints, res, self.udp)
        self.last_overflow = 0
        if len(person) == 0:
            return out
        num_people = np.asarray(joints).shape[0]
        has_any = np.bincount(person, minlength=num_people) > 0
        row_of_person = np.cumsum(has_any) - 1  # compacted row of each person with joints
        self.last_overflow = int(max(0, has_any.sum() - self.max_num_people))
        self.overflow += self.last_overflow
        row = row_of_person[person]
        # Slot = rank of the joint among its person's valid joints (entries are person-major, joint-sorted).
        starts = np.searchsorted(person, person, side="left")
        slot = np.arange(len(person)) - starts
        flat = ys * res + xs
        if self.tag_per_joint:
            flat = flat + joint * res * res
        keep = row < self.max_num_people
        out[row[keep], slot[keep], 0] = flat[keep]
        out[row[keep], slot[keep], 1] = 1
        return out
