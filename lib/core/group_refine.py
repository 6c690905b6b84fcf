"""Placing grouped joints: HigherHRNet's ``adjust`` and ``refine``, vectorised over persons and joints.

:func:`adjust_people` moves every detected joint from its peak pixel to its decoded position (the
official +0.5 and quarter-pixel shift, or with UDP the Taylor offset). :func:`refine_people` fills each
person's missing joints at the argmax of ``det - round(tag distance)`` from the person's mean tag.

On CPU that argmax comes from few pixels (:func:`refine_pruned`): every pixel scores at most its
``det`` value, and at most ``D - round(d)`` inside a tile whose det maximum is ``D`` and whose tags are
at least ``d`` from the person's mean tag. Step 1 scores the pixels above a share of the joint's
maximum (a winner above that share is final); step 2 scores only the tiles whose bound reaches the
best score found so far. Ties go to the first pixel in flat order, as ``np.argmax``;
:func:`refine_people` evaluates the pairs the bounds leave open on the full map. Tests force each path
by changing the constants below.
"""

from __future__ import annotations

import numpy as np
import torch

from higherpose.core.udp import device_indices, peak_neighbourhood, taylor_from_neighbourhood
from higherpose.utils.host import to_host

NP_FLOATS = (torch.float16, torch.float32, torch.float64)  # dtypes whose maps are read as numpy arrays

# Candidate pixels of the first pruned step of refine: det above this fraction of the joint's maximum.
_PEAK_FRACTION = 0.25

# Side of the square tiles whose det maximum and tag ranges bound refine's score.
_TILE = 8

# Step 1 is skipped where more than this share of a joint's pixels are above its threshold (no peaks).
_PEAK_SHARE = 1 / 32

# Tiles of highest bound scored first for each (person, joint) pair, to raise its lower bound.
_FIRST_TILES = 8

# A pair is scored on the full map once more than this share of its pixels remain candidates.
_DENSE_SHARE = 0.25


def _tile_reduce(x: np.ndarray, largest: bool | None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Max (``largest``) or min of x (N, H, W, C) over ``_TILE x _TILE`` pixel tiles -> (N, Hb, Wb, C),
    ``Hb = ceil(H / _TILE)``, by elementwise extrema of strided slices (rows, then columns); ``largest``
    None: ``(min, max)`` in one sweep. Partial border tiles are padded with their own edge values."""
    n, h, w, c = x.shape
    s = _TILE
    hb, wb = -(-h // s), -(-w // s)
    if hb * s != h or wb * s != w:
        x = np.pad(x, ((0, 0), (0, hb * s - h), (0, wb * s - w), (0, 0)), mode="edge")
    ops = [np.maximum] if largest else [np.minimum] if largest is not None else [np.minimum, np.maximum]
    rows = x.reshape(n, hb, s, wb * s * c)
    outs = [rows[:, :, 0].copy() for _ in ops]
    for i in range(1, s):
        for op, out in zip(ops, outs):
            op(out, rows[:, :, i], out=out)
    result = []
    for op, out in zip(ops, outs):
        cols = out.reshape(n, hb, wb, s, c)
        red = cols[:, :, :, 0].copy()
        for i in range(1, s):
            op(red, cols[:, :, :, i], out=red)
        result.append(red)
    return result[0] if len(result) == 1 else (result[0], result[1])


def _scores(det_px: np.ndarray, tag_px: np.ndarray, prev_px: np.ndarray) -> np.ndarray:
    """refine's score ``det - round(||tag - mean tag||)`` at pixels, broadcasting det_px (...),
    tag_px (..., L) and prev_px (..., L): the official elementwise operations, in its order (the sum
    over L runs channel by channel), so bit-identical to its full-map numpy computation."""
    dist = None
    for li in range(tag_px.shape[-1]):
        diff = tag_px[..., li] - prev_px[..., li]
        diff *= diff
        dist = diff if dist is None else np.add(dist, diff, out=dist)
    np.sqrt(dist, out=dist)
    np.round(dist, out=dist)
    return det_px - dist


def _first_max(score: np.ndarray, pix: np.ndarray, pair: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each value of ``pair`` (sorted) present: the smallest ``pix`` among its maximal ``score``
    -> (those pair values, their pixels)."""
    starts = np.flatnonzero(np.diff(pair, prepend=-1))
    top = np.maximum.reduceat(score, starts)
    tied = score == np.repeat(top, np.diff(starts, append=len(pair)))
    return pair[starts], np.minimum.reduceat(np.where(tied, pix, size), starts)


def refine_pruned(det: np.ndarray, tag: np.ndarray, prev: np.ndarray, p_mis: np.ndarray, j_mis: np.ndarray,
                   best: np.ndarray) -> None:  # fmt: skip
    """Exact shortcuts of refine's full-map argmax for the missing (person, joint) pairs (p_mis, j_mis):
    set ``best`` to the flat index ``y * W + x`` of the official argmax, or leave -1 (full map needed).

    det (K, H, W), tag (K, H, W, L), prev (P, L) mean tags, numpy. A pixel scores
    ``det - round(dist) <= det`` (``round(dist) >= 0``):

    1. Peaks: with ``t`` a quarter of the joint's maximum, the pixels ``det > t`` are scored; a best
       score above ``t`` is the full-map maximum and its smallest index among ties the official argmax
       (no pixel outside can tie). Otherwise the best score is a lower bound ``low`` of the maximum.
       Skipped where over ``_PEAK_SHARE`` of the pixels are above ``t`` (a map without peaks).
    2. Tiles: in a ``_TILE``-pixel tile whose det maximum is ``D`` and whose tags lie in the box
       ``[lo, hi]`` (per channel), every pixel scores at most ``D - round(d)``, ``d`` the distance from
       the mean tag to the box (computed by the same floating-point operations as the scores, each
       monotone, so it never exceeds a computed pixel distance). Where ``round`` of the nearest and of
       the farthest distance to the box agree, the bound is the score of the tile's det maximum and
       raises ``low``; so does scoring the ``_FIRST_TILES`` tiles of highest bound. Every pixel scoring
       ``>= low`` -- the maximum and all its ties -- has ``det >= low`` and lies in a tile of bound
       ``>= low``; those pixels are scored and the smallest index among the maximal scores is taken.
       Pairs with more than ``_DENSE_SHARE`` of the pixels left stay at -1.
    """
    k, h, w = det.shape
    num_tag = tag.shape[-1]
    s = _TILE
    hb, wb = -(-h // s), -(-w // s)
    partial = hb * s != h or wb * s != w
    sdtype = np.result_type(det.dtype, tag.dtype)
    quarter = det.dtype.type(_PEAK_FRACTION)
    r = np.arange(s)
    in_tile = (r[:, None] * w + r[None, :]).reshape(-1)  # pixel offsets inside a tile
    if partial:
        in_y, in_x = r.repeat(s), np.tile(r, s)

    def tile_pixels(tiles: np.ndarray, pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ty, tx = np.divmod(tiles, wb)
        pix = ((ty * (s * w) + tx * s)[:, None] + in_tile[None, :]).reshape(-1)
        pair = np.repeat(pair, s * s)
        if partial:  # drop the pixels of border tiles that are off the map
            inside = ((ty * s)[:, None] + in_y[None, :] < h) & ((tx * s)[:, None] + in_x[None, :] < w)
            pix, pair = pix[inside.reshape(-1)], pair[inside.reshape(-1)]
        return pix, pair

    joints = np.unique(j_mis)
    # Tile maxima of det for all those joints in one sweep (all K without copying the maps).
    all_joints = len(joints) == k
    tile_maxima = _tile_reduce((det if all_joints else det[joints])[..., None], largest=True)[..., 0]
    for ji, j in enumerate(joints):
        rows = np.flatnonzero(j_mis == j)
        det_j, tag_j = det[j].reshape(-1), tag[j].reshape(-1, num_tag)
        tile_max = tile_maxima[j if all_joints else ji]  # (Hb, Wb)
        t = tile_max.max() * quarter
        low = np.full(len(rows), -np.inf, dtype=sdtype)
        peak_tiles = np.flatnonzero(tile_max > t)
        if t > 0 and peak_tiles.size * (s * s) <= _PEAK_SHARE * h * w:  # else a flat map: no peaks
            cand, _ = tile_pixels(peak_tiles, peak_tiles)
            cand = cand[det_j[cand] > t]
            score = _scores(det_j[cand][None, :], tag_j[cand][None], prev[p_mis[rows]][:, None, :])  # (n, C)
            value = score.max(axis=1)
            first = np.where(score == value[:, None], cand[None, :], h * w).min(axis=1)
            ok = value > t
            best[rows[ok]] = first[ok]
            rows, low = rows[~ok], value[~ok]
        n = rows.size
        if n == 0:
            continue

        prev_j = prev[p_mis[rows]]  # (n, L)
        lo, hi = (x[0] for x in _tile_reduce(tag[j][None], largest=None))  # (Hb, Wb, L)
        # The nearest and farthest distances to each tile's tag box, by the operations of _scores in its
        # order and precision: each is monotone, so they bound every computed pixel distance exactly.
        near = far = None
        for li in range(num_tag):
            m = prev_j[:, li][:, None, None]  # (n, 1, 1)
            below, over = lo[None, :, :, li] - m, m - hi[None, :, :, li]  # (n, Hb, Wb)
            gap = np.maximum(below, 0) + np.maximum(over, 0)
            gap *= gap
            near = gap if near is None else np.add(near, gap, out=near)
            gap = np.maximum(np.abs(below, out=below), np.abs(over, out=over), out=below)
            gap *= gap
            far = gap if far is None else np.add(far, gap, out=far)
        near = np.round(np.sqrt(near, out=near), out=near)
        far = np.round(np.sqrt(far, out=far), out=far)
        bound = (tile_max[None].astype(sdtype) - near.astype(sdtype)).reshape(n, -1)  # (n, tiles)
        # Where round(dist) is the same over the whole tile, the bound is the score of the tile's max.
        exact = np.where((near == far).reshape(n, -1), bound, -np.inf).max(axis=1)
        low = np.maximum(low, exact.astype(sdtype))

        first = min(_FIRST_TILES, bound.shape[1])
        top = np.argpartition(-bound, first - 1, axis=1)[:, :first]
        pix, pair = tile_pixels(top.reshape(-1), np.arange(n).repeat(first))
        score = _scores(det_j[pix], tag_j[pix], prev_j[pair])
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
        low = np.maximum(low, np.maximum.reduceat(score, starts))

        need = bound >= low[:, None]
        by_tile = need.sum(axis=1) * (s * s) <= _DENSE_SHARE * h * w
        pair, tiles = np.nonzero(need[by_tile])
        pix, pair = tile_pixels(tiles, pair)
        rows_t, low_t = rows[by_tile], low[by_tile]
        if (low_t > 0).any():  # score <= det: drop pixels with det < low (useless if low <= 0 <= det)
            keep = det_j[pix] >= low_t[pair]
            pix, pair = pix[keep], pair[keep]
        if pix.size:
            score = _scores(det_j[pix], tag_j[pix], prev_j[by_tile][pair])
            present, first = _first_max(score, pix, pair, h * w)
            best[rows_t[present]] = first
        for i in np.flatnonzero(~by_tile):  # many tiles: select pixels by det first
            above = det_j >= low[i]
            if np.count_nonzero(above) > _DENSE_SHARE * h * w:
                continue
            pix = np.flatnonzero(above)
            pix = pix[need[i][(pix // w) // s * wb + (pix % w) // s]]
            if pix.size == 0:
                continue
            score = _scores(det_j[pix], tag_j[pix], prev_j[i])
            best[rows[i]] = pix[score.argmax()]


def np_mean0(rows: list[np.ndarray]) -> np.ndarray:
    """``np.mean(rows, axis=0)`` by the same two ufunc calls numpy's ``_mean`` makes (bit-identical),
    without its Python overhead. rows: a list of (L,) float arrays."""
    arr = np.asanyarray(rows)
    total = np.add.reduce(arr, axis=0)
    return np.true_divide(total, np.intp(arr.shape[0]), out=total, casting="unsafe", subok=False)


def decode_peaks(
    vals: np.ndarray, row: np.ndarray, col: np.ndarray, h: int, w: int, udp: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded ``(x, y)`` of peaks at ``row``, ``col`` (n,) on an (h, w) map from their
    :func:`~higherpose.core.udp.peak_neighbourhood` values (9, n): HigherHRNet's ``peak + 0.5 ± 0.25``
    (+0.25 toward the larger of the right / left and of the lower / upper neighbours, borders clamped,
    ties -0.25), or with ``udp`` the peak plus its Taylor offset."""
    if udp:
        ox, oy = taylor_from_neighbourhood(vals, row, col, h, w)
    else:
        ox = np.where(vals[2] > vals[1], 0.25, -0.25) + 0.5
        oy = np.where(vals[4] > vals[3], 0.25, -0.25) + 0.5
    return col + ox, row + oy


def _subpixel(
    det: torch.Tensor, joint: np.ndarray, row: np.ndarray, col: np.ndarray, udp: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decode_peaks` of the peaks ``det[joint, row, col]`` (det (K, H, W) on any device): one
    gather of their neighbourhoods and one read back."""
    if len(joint) == 0:
        return col + 0.0, row + 0.0
    (vals,) = to_host(peak_neighbourhood(det, *device_indices(det.device, joint, row, col)))
    return decode_peaks(vals, row, col, det.shape[1], det.shape[2], udp)


def adjust_people(ans: list[np.ndarray], det: torch.Tensor, udp: bool) -> list[np.ndarray]:
    """Move every detected joint of ``ans`` (per image (P, K, 3+L), in place) from its peak pixel to
    its decoded position in det (B, K, H, W)."""
    for b, people in enumerate(ans):
        p_idx, j_idx = np.nonzero(people[:, :, 2] > 0)
        if p_idx.size == 0:
            continue
        col = people[p_idx, j_idx, 0].astype(np.int64)
        row = people[p_idx, j_idx, 1].astype(np.int64)
        people[p_idx, j_idx, 0], people[p_idx, j_idx, 1] = _subpixel(det[b], j_idx, row, col, udp)
    return ans


# Upper bound on elements of one batched distance map (missing joints x H x W) in refine.
_REFINE_CHUNK = 1 << 22


def refine_people(det: torch.Tensor, tag: torch.Tensor, people: np.ndarray, num_joints: int, udp: bool = False) -> None:
    """Vectorised HigherHRNet ``refine`` for all persons of one image, in place.

    det: (K, H, W); tag: (K or 1, H, W, L) or (K, H, W); people: (P, K, 3+L). A missing joint j of
    person p goes to ``argmax(det[j] - round(||tag[j] - mean_tag[p]||))`` (+0.5 and the quarter shift;
    ``udp``: the Taylor offset) when the det value there is > 0. Only missing joints are evaluated (the
    official evaluated all K and kept the missing ones: same result).
    """
    if tag.dim() == 3:
        tag = tag[..., None]
    if tag.size(0) != num_joints:  # one tag map shared by all joints (TAG_PER_JOINT False)
        tag = tag.expand(num_joints, -1, -1, -1)
    k, h, w = det.shape
    detected = people[:, :, 2] > 0  # (P, K)
    has_any = detected.any(axis=1)
    missing = (people[:, :, 2] == 0) & has_any[:, None]
    if not missing.any():
        return

    # Mean tag of each person's detected joints, sampled at the truncated positions (float32 numpy,
    # exactly as the official np.mean over the list of sampled tags). Truncating peak + 0.5 +- 0.25
    # gives the peak pixel back; a UDP position (peak + Taylor offset in (-0.5, 0.5)) needs rounding.
    xy = np.floor(people[:, :, :2] + 0.5).astype(np.int32) if udp else people[:, :, :2].astype(np.int32)
    p_det, j_det = np.nonzero(detected)
    dev = tag.device
    (sampled,) = to_host(tag[tuple(device_indices(dev, j_det, xy[p_det, j_det, 1], xy[p_det, j_det, 0]))].detach())
    prev_tags = np.zeros((people.shape[0], tag.size(3)), dtype=sampled.dtype)
    for p in np.nonzero(has_any)[0]:
        prev_tags[p] = np_mean0(sampled[p_det == p])

    p_mis, j_mis = np.nonzero(missing)
    prev = torch.as_tensor(prev_tags, device=dev, dtype=tag.dtype)
    det_f = det.detach()
    # Tag planes (K, L, H, W) so each squared difference is one contiguous in-place pass; the sum over
    # L runs in the official order, so distances are bit-identical to its ((t - m) ** 2).sum(2) ** 0.5.
    planes = tag.detach().permute(0, 3, 1, 2)
    best = np.full(len(p_mis), -1, dtype=np.int64)
    on_cpu = det.device.type == "cpu" and dev.type == "cpu"
    if on_cpu and det.dtype in NP_FLOATS and tag.dtype in NP_FLOATS:
        refine_pruned(det_f.numpy(), tag.detach().numpy(), prev.numpy(), p_mis, j_mis, best)
    todo = np.nonzero(best < 0)[0]
    j_all, p_all = device_indices(dev, j_mis, p_mis)
    found: list[torch.Tensor] = []  # off the CPU: the argmaxes, read back once with their neighbourhoods
    step = max(1, _REFINE_CHUNK // (h * w))
    for start in range(0, len(todo), step):
        sel = todo[start : start + step]
        j_t, p_t = (j_all, p_all) if len(sel) == len(j_mis) else (j_all[sel], p_all[sel])
        dist = None
        for li in range(planes.size(1)):
            diff = planes[j_t, li] - prev[p_t, li][:, None, None]  # (n, H, W)
            diff.square_()
            dist = diff if dist is None else dist.add_(diff)
        dist.sqrt_().round_()
        score = torch.sub(det_f[j_t], dist, out=dist)
        flat_score = score.reshape(score.size(0), -1)
        if on_cpu:  # numpy's argmax (first maximum, as torch's) is much faster on CPU
            best[sel] = flat_score.numpy().argmax(axis=1)
        else:
            found.append(flat_score.argmax(dim=1))

    if on_cpu:
        rows, cols = best // w, best % w
        val = det_f[tuple(device_indices(det.device, j_mis, rows, cols))]
        val = val.float().numpy()
        x, y = _subpixel(det_f, j_mis, rows, cols, udp)
    else:
        # Every pair took the full-map path, in order: the peaks' neighbourhoods are gathered on the
        # device and read back with the argmaxes in one copy (their centre is the value at the peak).
        best_t = torch.cat(found)
        near = peak_neighbourhood(det_f, j_all, best_t // w, best_t % w)
        best, near = to_host(best_t, near)
        rows, cols = best // w, best % w
        val = near[0].astype(np.float32)
        x, y = decode_peaks(near, rows, cols, h, w, udp)
    fill = val > 0
    people[p_mis[fill], j_mis[fill], 0] = x[fill]
    people[p_mis[fill], j_mis[fill], 1] = y[fill]
    people[p_mis[fill], j_mis[fill], 2] = val[fill]
