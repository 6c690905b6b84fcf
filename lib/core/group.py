"""Associative-embedding grouping: ``HeatmapParser`` (HigherHRNet ``lib/core/group.py``, from pose-ae-train).

``parse(det, tag)`` = NMS by max-pooling -> top-k candidates per joint -> ``match_by_tag`` (joints visited
in the dataset's grouping order, Hungarian matching on ``round(tag distance) * 100 - detection value``)
-> ``adjust`` (quarter-pixel shift toward the larger neighbour, +0.5) -> ``refine`` (fill missing joints
at the best position near the person's mean tag). Results equal the official code; differences:

* persons are kept in a list, not in a dict keyed by the float tag of their first joint (two
  persons with the same first tag value overwrote each other officially);
* ``scipy.optimize.linear_sum_assignment`` replaces the pure-Python Munkres (same optimal assignment);
* on CPU, ``parse`` finds the candidates without pooling the whole map (:meth:`HeatmapParser.candidates`):
  only pixels above the detection threshold are compared with their NMS window, since ``match_by_tag``
  drops every other top-k entry; joints whose kept maxima have equal values (ordered by torch.topk's
  tie rule) take the dense NMS + top-k path. ``top_k`` itself is the official one;
* ``adjust`` and ``refine`` are vectorised over persons and joints. On CPU ``refine`` finds each
  missing joint's argmax of ``det - round(tag distance)`` exactly from few pixels, by upper bounds
  (:mod:`higherpose.core.group_refine`); pairs the bounds do not narrow down, and maps on other
  devices, are evaluated on the full map in batched tensor ops (the official copied the maps to the
  CPU once per person and scanned all K maps per person);
* ``refine`` runs on every image of the batch (officially only image 0; valid.py used batch 1);
* with ``DATASET.USE_UDP`` (NEW) ``adjust`` and ``refine`` place a joint at its peak plus the Taylor
  offset of :func:`~higherpose.core.udp.taylor_offsets`, without the +0.5 and the quarter shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from higherpose.core.group_refine import NP_FLOATS, adjust_people, np_mean0, refine_people
from higherpose.core.layout import OutputLayout
from higherpose.dataset.specs import spec_from_cfg
from higherpose.utils.host import numpy_dtype, to_host


@dataclass
class Params:
    """Grouping settings read once from the config."""

    num_joints: int
    max_num_people: int
    detection_threshold: float
    tag_threshold: float
    use_detection_val: bool
    ignore_too_much: bool
    joint_order: tuple[int, ...]

    @classmethod
    def from_cfg(cls, cfg: Any, layout: OutputLayout | None = None) -> Params:
        """Settings of ``cfg.TEST`` / ``cfg.DATASET``; the joints (and the centre joint's treatment)
        come from the output ``layout``, built here when not given."""
        if layout is None:
            layout = OutputLayout.from_config(cfg)
        order = tuple(spec_from_cfg(cfg).joint_order)
        num_joints = layout.num_joints
        if layout.with_center:
            center = num_joints - 1
            rest = tuple(j for j in order if j != center)
            if layout.drop_center:
                num_joints -= 1
                order = rest
            else:  # HigherHRNet groups from the center joint first
                order = (center,) + rest
        return cls(
            num_joints=num_joints,
            max_num_people=cfg.DATASET.MAX_NUM_PEOPLE,
            detection_threshold=cfg.TEST.DETECTION_THRESHOLD,
            tag_threshold=cfg.TEST.TAG_THRESHOLD,
            use_detection_val=cfg.TEST.USE_DETECTION_VAL,
            ignore_too_much=cfg.TEST.IGNORE_TOO_MUCH,
            joint_order=order,
        )


def match_by_tag(tag_k: np.ndarray, loc_k: np.ndarray, val_k: np.ndarray, params: Params) -> np.ndarray:
    """Group one image's candidates into persons.

    tag_k: (K, T, L) tags, loc_k: (K, T, 2) integer (x, y), val_k: (K, T) detection values of the top-T
    candidates per joint. Returns ``float32 (P, K, 3+L)`` rows ``(x, y, val, tags...)``, zeros for
    joints a person lacks; persons in creation order.
    """
    num_tag = tag_k.shape[2]
    default = np.zeros((params.num_joints, 3 + num_tag))
    persons: list[np.ndarray] = []  # (K, 3+L) each
    person_tags: list[list[np.ndarray]] = []  # tags collected per person
    means: list[np.ndarray | None] = []  # np.mean of each person's tags, None once a tag was added

    def new_person(joint_idx: int, joint: np.ndarray, tag: np.ndarray) -> None:
        person = np.copy(default)
        person[joint_idx] = joint
        persons.append(person)
        person_tags.append([tag])
        means.append(None)

    def mean_tag(p: int) -> np.ndarray:
        if means[p] is None:
            means[p] = np_mean0(person_tags[p])
        return means[p]

    for i, idx in enumerate(params.joint_order):
        tags = tag_k[idx]
        joints = np.concatenate((loc_k[idx], val_k[idx, :, None], tags), 1)
        keep = joints[:, 2] > params.detection_threshold
        tags, joints = tags[keep], joints[keep]
        if joints.shape[0] == 0:
            continue

        if i == 0 or not persons:
            for tag, joint in zip(tags, joints):
                new_person(idx, joint, tag)
            continue

        num_grouped = min(len(persons), params.max_num_people)
        if params.ignore_too_much and num_grouped == params.max_num_people:
            continue
        grouped_tags = np.array([mean_tag(p) for p in range(num_grouped)])

        diff = joints[:, None, 3:] - grouped_tags[None, :, :]
        diff_saved = np.linalg.norm(diff, ord=2, axis=2)
        cost = diff_saved
        if params.use_detection_val:
            cost = np.round(diff_saved) * 100 - joints[:, 2:3]
        num_added = diff.shape[0]
        if num_added > num_grouped:
            # Same padding as HigherHRNet: surplus candidates fall on dummy columns -> new persons.
            cost = np.concatenate((cost, np.zeros((num_added, num_added - num_grouped)) + 1e10), axis=1)

        rows, cols = linear_sum_assignment(cost)
        for row, col in zip(rows, cols):
            if row < num_added and col < num_grouped and diff_saved[row][col] < params.tag_threshold:
                persons[col][idx] = joints[row]
                person_tags[col].append(tags[row])
                means[col] = None
            else:
                new_person(idx, joints[row], tags[row])

    if not persons:
        return np.zeros((0, params.num_joints, 3 + num_tag), dtype=np.float32)
    return np.array(persons).astype(np.float32)


class HeatmapParser:
    """Decode multi-person poses from detection heatmaps and tag maps (``parse``)."""

    def __init__(self, cfg: Any):
        layout = OutputLayout.from_config(cfg)
        self._setup(Params.from_cfg(cfg, layout), layout.tag_per_joint, cfg.TEST.NMS_KERNEL, cfg.TEST.NMS_PADDING)
        # DATASET.USE_UDP: Taylor sub-pixel offsets without HigherHRNet's +0.5 and quarter shift.
        self.udp = bool(cfg.DATASET.USE_UDP)

    @classmethod
    def from_protocol(cls, protocol: Any) -> HeatmapParser:
        """The parser of a :class:`~higherpose.core.protocol.TestProtocol` (no config read)."""
        parser = cls.__new__(cls)
        parser._setup(protocol.grouping, protocol.layout.tag_per_joint, protocol.nms_kernel, protocol.nms_padding)
        parser.udp = protocol.udp
        return parser

    def _setup(self, params: Params, tag_per_joint: bool, nms_kernel: int, nms_padding: int) -> None:
        self.params, self.tag_per_joint = params, tag_per_joint
        self.pool = torch.nn.MaxPool2d(nms_kernel, 1, nms_padding)
        self.nms_kernel, self.nms_padding = nms_kernel, nms_padding

    def nms(self, det: torch.Tensor) -> torch.Tensor:
        """Keep local maxima of det (B, K, H, W), zero elsewhere."""
        if det.device.type == "cpu" and 2 * self.nms_padding == self.nms_kernel - 1:
            maxm = _separable_max(det, self.nms_kernel, self.nms_padding)
        else:
            maxm = self.pool(det)
        return det * torch.eq(maxm, det).float()

    def top_k(self, det: torch.Tensor, tag: torch.Tensor) -> dict[str, np.ndarray]:
        """det: (B, K, H, W); tag: (B, K or 1, H, W, L) -> numpy tag_k (B, K, T, L), loc_k (B, K, T, 2) int
        (x, y), val_k (B, K, T) with T = MAX_NUM_PEOPLE (:meth:`top_k_tensors`, read back in one copy)."""
        tag_k, loc_k, val_k = to_host(*self.top_k_tensors(det, tag))
        return {"tag_k": tag_k, "loc_k": loc_k, "val_k": val_k}

    def top_k_tensors(self, det: torch.Tensor, tag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`top_k` on det's device: ``(tag_k, loc_k, val_k)`` tensors."""
        det = self.nms(det)
        num_images, num_joints, h, w = det.shape
        val_k, ind = det.view(num_images, num_joints, -1).topk(self.params.max_num_people, dim=2)
        tag = tag.reshape(tag.size(0), tag.size(1), w * h, -1)
        if not self.tag_per_joint:
            tag = tag.expand(-1, self.params.num_joints, -1, -1)
        tag_k = torch.gather(tag, 2, ind[..., None].expand(-1, -1, -1, tag.size(3)))
        loc_k = torch.stack((ind % w, ind // w), dim=3)
        return tag_k, loc_k, val_k

    def candidates(self, det: torch.Tensor, tag: torch.Tensor) -> dict[str, np.ndarray]:
        """What :meth:`match` keeps of :meth:`top_k`: per joint the local maxima above the detection
        threshold, largest first, at most MAX_NUM_PEOPLE; the remaining slots hold value 0 (which
        :meth:`match` drops, as it drops every top-k entry not above the threshold).

        On CPU only the pixels above the threshold are tested against their NMS window, instead of
        max-pooling the whole map (:func:`_local_maxima`). Where equal values among the kept maxima
        leave torch.topk's order to its tie rule, that joint takes the dense path (:meth:`top_k`)."""
        thr = self.params.detection_threshold
        window_ok = 2 * self.nms_padding == self.nms_kernel - 1
        if det.device.type != "cpu" or not window_ok or not thr >= 0 or det.dtype not in NP_FLOATS:
            return self.top_k(det, tag)
        num_images, num_joints, h, w = det.shape
        t = self.params.max_num_people
        det_np = det.detach().contiguous().numpy()
        num_tag = tag.size(-1)
        val_k = np.zeros((num_images, num_joints, t), dtype=det_np.dtype)
        loc_k = np.zeros((num_images, num_joints, t, 2), dtype=np.int64)
        tag_k = np.zeros((num_images, num_joints, t, num_tag), dtype=numpy_dtype(tag.dtype))
        tag_flat = tag.detach().reshape(num_images, tag.size(1), h * w, num_tag)
        for b in range(num_images):
            found = _local_maxima(det_np[b], thr, self.nms_padding)
            if found is None:  # too many pixels above the threshold: the dense path is faster
                dense = self.top_k(det[b : b + 1], tag[b : b + 1])
                tag_k[b], loc_k[b], val_k[b] = dense["tag_k"][0], dense["loc_k"][0], dense["val_k"][0]
                continue
            joint, pix, val = found
            order = np.lexsort((-val, joint))  # by joint, then value descending
            joint, pix, val = joint[order], pix[order], val[order]
            first = np.searchsorted(joint, np.arange(num_joints + 1))
            rank = np.arange(len(joint)) - first[joint]
            # Ties among the kept maxima (or at the cut) would be ordered by torch.topk's tie rule.
            tie = (rank[1:] > 0) & (rank[1:] <= t) & (val[1:] == val[:-1])
            dense_joints = np.unique(joint[1:][tie])
            keep = rank < t
            joint, pix, val, rank = joint[keep], pix[keep], val[keep], rank[keep]
            val_k[b, joint, rank] = val
            loc_k[b, joint, rank, 0] = pix % w
            loc_k[b, joint, rank, 1] = pix // w
            src_joint = joint if tag.size(1) == num_joints else np.zeros_like(joint)
            sampled = tag_flat[b, torch.as_tensor(src_joint), torch.as_tensor(pix)]
            tag_k[b, joint, rank] = sampled.cpu().numpy()
            for j in dense_joints:
                tj = tag[b : b + 1, j : j + 1] if tag.size(1) == num_joints else tag[b : b + 1]
                dense = _top_k_dense(self, det[b : b + 1, j : j + 1], tj)
                tag_k[b, j], loc_k[b, j], val_k[b, j] = dense["tag_k"][0, 0], dense["loc_k"][0, 0], dense["val_k"][0, 0]
        return {"tag_k": tag_k, "loc_k": loc_k, "val_k": val_k}

    def match(self, tag_k: np.ndarray, loc_k: np.ndarray, val_k: np.ndarray) -> list[np.ndarray]:
        return [match_by_tag(t, loc, v, self.params) for t, loc, v in zip(tag_k, loc_k, val_k)]

    @staticmethod
    def adjust(ans: list[np.ndarray], det: torch.Tensor) -> list[np.ndarray]:
        """Shift every detected joint by +-0.25 toward its larger horizontal / vertical neighbour in the
        un-suppressed det (B, K, H, W) (ties -> -0.25), then +0.5. ans: per image (P, K, 3+L), in place."""
        return adjust_people(ans, det, udp=False)

    @staticmethod
    def adjust_udp(ans: list[np.ndarray], det: torch.Tensor) -> list[np.ndarray]:
        """``DATASET.USE_UDP``'s adjust: every detected joint moves by the Taylor offset of its peak in
        det (B, K, H, W) (:func:`~higherpose.core.udp.taylor_offsets`), no +0.5. ans: in place."""
        return adjust_people(ans, det, udp=True)

    def refine(self, det: torch.Tensor, tag: torch.Tensor, keypoints: np.ndarray) -> np.ndarray:
        """Fill the missing joints of each person. det: (K, H, W); tag: (K or 1, H, W, L) (or (K, H, W));
        keypoints: (P, K, 3+L) or (K, 3+L), updated in place and returned."""
        single = keypoints.ndim == 2
        people = keypoints[None] if single else keypoints
        if people.shape[0]:
            refine_people(det, tag, people, self.params.num_joints, self.udp)
        return people[0] if single else people

    def parse_batch(
        self, det: torch.Tensor, tag: torch.Tensor, adjust: bool = True, refine: bool = True
    ) -> tuple[list[np.ndarray], list[list[float]]]:
        """Like :meth:`parse` for every image: ``(grouped per image (P, K, 3+L), scores per image)``."""
        ans = self.match(**self.candidates(det, tag))
        if adjust:
            ans = self.adjust_udp(ans, det) if self.udp else self.adjust(ans, det)
        # Person score = mean of all K joint values before refinement (zeros included), as HigherHRNet.
        scores = [[float(s) for s in people[:, :, 2].mean(axis=1)] for people in ans]
        if refine:
            for b, people in enumerate(ans):
                if people.shape[0]:
                    refine_people(det[b], tag[b], people, self.params.num_joints, self.udp)
        return ans, scores

    def parse(
        self, det: torch.Tensor, tag: torch.Tensor, adjust: bool = True, refine: bool = True
    ) -> tuple[list[np.ndarray], list[float]]:
        """det: (B, K, H, W) heatmaps; tag: (B, K, H, W, L) tag maps (L = number of flips/scales).

        Returns ``(grouped, scores)``: ``grouped[b]`` is ``(P, K, 3+L)`` (x, y, val, tags) in heatmap
        pixels; ``scores`` are image 0's person scores (HigherHRNet's return shape)."""
        grouped, scores = self.parse_batch(det, tag, adjust, refine)
        return grouped, scores[0]


def _top_k_dense(parser: HeatmapParser, det: torch.Tensor, tag: torch.Tensor) -> dict[str, np.ndarray]:
    """HigherHRNet's NMS + top-k on det (B, J, H, W) for any J; tag (B, J or 1, H, W, L)."""
    det = parser.nms(det)
    num_images, num_joints, h, w = det.shape
    val_k, ind = det.view(num_images, num_joints, -1).topk(parser.params.max_num_people, dim=2)
    tag = tag.reshape(tag.size(0), tag.size(1), w * h, -1).expand(-1, num_joints, -1, -1)
    tag_k = torch.gather(tag, 2, ind[..., None].expand(-1, -1, -1, tag.size(3)))
    loc_k = torch.stack((ind % w, ind // w), dim=3)
    tag_k, loc_k, val_k = to_host(tag_k, loc_k, val_k)
    return {"tag_k": tag_k, "loc_k": loc_k, "val_k": val_k}


# The NMS shortcut tests pixels one by one; above this share of pixels over the threshold max-pooling the
# whole map is cheaper.
_SPARSE_SHARE = 1 / 8


def _threshold_below(thr: float, dtype: np.dtype) -> np.generic:
    """The largest value of ``dtype`` not above ``thr``: ``x > it`` in ``dtype`` is ``float(x) > thr``."""
    t = dtype.type(thr)
    if float(t) > thr:
        t = np.nextafter(t, dtype.type(-np.inf))
    return t


def _local_maxima(det: np.ndarray, thr: float, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The pixels HigherHRNet's NMS keeps (``det == max_pool2d(det, 2 pad + 1, 1, pad)``) whose value is
    above ``thr``, for det (K, H, W) as numpy: ``(joint, flat pixel index y * W + x, value)``, or None
    when too many pixels are above ``thr``.

    A kept pixel is not smaller than any in-map pixel of its window (the pooling pads with -inf); only
    the pixels above ``thr`` are tested, nearest neighbours first, dropping each pixel at its first
    larger neighbour. Exact: the same comparisons as the pooled map, on the pixels that matter."""
    k, h, w = det.shape
    flat = det.reshape(-1)
    idx = np.flatnonzero(flat > _threshold_below(thr, det.dtype))
    if idx.size > _SPARSE_SHARE * flat.size:
        return None
    offsets = [(0, 1), (0, -1), (1, 0), (-1, 0)]
    offsets += [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                if (dy, dx) not in offsets and (dy, dx) != (0, 0)]  # fmt: skip
    y, x = np.divmod(idx % (h * w), w)
    border = (y < pad) | (y >= h - pad) | (x < pad) | (x >= w - pad)
    # Pixels whose whole window is inside the map: plain comparisons with shifted indices.
    inner = idx[~border]
    val = flat[inner]
    for dy, dx in offsets:
        keep = val >= flat[inner + (dy * w + dx)]
        inner, val = inner[keep], val[keep]
    # The others: off-map neighbours compare with the pixel itself.
    edge, y, x = idx[border], y[border], x[border]
    edge_val = flat[edge]
    for dy, dx in offsets:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        keep = edge_val >= flat[np.where(inside, edge + (dy * w + dx), edge)]
        edge, edge_val, y, x = edge[keep], edge_val[keep], y[keep], x[keep]
    idx = np.concatenate((inner, edge))
    plane, pix = np.divmod(idx, h * w)
    return plane, pix, np.concatenate((val, edge_val))


def _separable_max(x: torch.Tensor, k: int, p: int) -> torch.Tensor:
    """Same values as ``MaxPool2d(k, 1, p)(x)`` for x (B, K, H, W) when ``2p = k - 1``: a k-window max along
    W then along H by shifted ``torch.maximum`` (about 4x faster than CPU max_pool2d at k=5; exact)."""
    h, w = x.shape[2:]
    y = F.pad(x, (p, k - 1 - p, 0, 0), value=float("-inf"))
    out = y[..., 0:w].clone()
    for i in range(1, k):
        torch.maximum(out, y[..., i : i + w], out=out)
    y = F.pad(out, (0, 0, p, k - 1 - p), value=float("-inf"))
    out = y[..., 0:h, :].clone()
    for i in range(1, k):
        torch.maximum(out, y[..., i : i + h, :], out=out)
    return out
