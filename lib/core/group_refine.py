"""The exact shortcut of grouping's ``refine`` on CPU: each missing joint's argmax of
``det - round(tag distance)`` found from few pixels.

Every pixel scores at most its ``det`` value, and at most ``D - round(d)`` inside a tile whose det
maximum is ``D`` and whose tags are at least ``d`` from the person's mean tag. Step 1 scores the
pixels above a share of the joint's maximum (a winner above that share is final); step 2 scores only
the tiles whose bound reaches the best score found so far. Ties go to the first pixel in flat order,
as ``np.argmax``; :func:`higherpose.core.group._refine_people` evaluates the pairs the bounds leave
open on the full map. Tests force each path by changing the constants below.
"""

from __future__ import annotations

import numpy as np

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
