"""Keypoint metadata per dataset: joint names, flip index, OKS sigmas, skeleton, grouping order.

This is the ONE place these facts live; datasets, transforms, grouping, evaluation, the SAT head and
visualisation all read them from here (through :func:`spec_from_cfg` for config-driven code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeypointSpec:
    """Keypoint metadata of one dataset (K joints).

    Attributes:
        name: dataset family ('COCO', 'CROWDPOSE', or a custom name).
        joint_names: K names, in the order of the annotation's keypoint triplets.
        flip_index: K ints; joint ``i`` becomes joint ``flip_index[i]`` under a horizontal flip.
        sigmas: K OKS sigmas (as used by the evaluator).
        skeleton: edges ``(a, b)`` between 0-based joint indices.
        joint_order: the order in which grouping (match_by_tag) visits the joints.
    """

    name: str
    joint_names: tuple[str, ...]
    flip_index: tuple[int, ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...]
    joint_order: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.joint_names)
        for field in ("flip_index", "sigmas", "joint_order"):
            if len(getattr(self, field)) != k:
                raise ValueError(f"{self.name}: {field} has {len(getattr(self, field))} entries, expected {k}")
        if sorted(self.flip_index) != list(range(k)):
            raise ValueError(f"{self.name}: flip_index {self.flip_index} is not a permutation of 0..{k - 1}")
        if sorted(self.joint_order) != list(range(k)):
            raise ValueError(f"{self.name}: joint_order {self.joint_order} is not a permutation of 0..{k - 1}")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """Left/right pairs ``(i, j)`` with ``i < j`` (joints that map to themselves are left out)."""
        return tuple((i, j) for i, j in enumerate(self.flip_index) if i < j)


COCO = KeypointSpec(
    name="COCO",
    joint_names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_index=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    sigmas=(
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ),  # fmt: skip
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),  # fmt: skip
    # HigherHRNet / pose-ae-train: head, shoulders, hips, elbows, wrists, knees, ankles.
    joint_order=(0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16),
)

CROWDPOSE = KeypointSpec(
    name="CROWDPOSE",
    joint_names=(
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
        "top_head",
        "neck",
    ),
    flip_index=(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13),
    sigmas=(0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079),
    # mmpose configs/_base_/datasets/crowdpose.py
    skeleton=(
        (10, 8),
        (8, 6),
        (11, 9),
        (9, 7),
        (6, 7),
        (0, 6),
        (1, 7),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (12, 13),
        (1, 13),
        (0, 13),
    ),  # fmt: skip
    # HigherHRNet uses the first 14 entries of COCO's order, which happen to cover 0..13.
    joint_order=(0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13),
)

_BY_TRAIN_NAME = {"coco_kpt": COCO, "crowd_pose_kpt": CROWDPOSE}
_BY_TEST_NAME = {"coco": COCO, "crowd_pose": CROWDPOSE}


def _with_center(spec: KeypointSpec) -> KeypointSpec:
    """HigherHRNet's WITH_CENTER: one extra 'center' joint that flips onto itself."""
    k = spec.num_joints
    return KeypointSpec(
        name=spec.name + "_WITH_CENTER",
        joint_names=spec.joint_names + ("center",),
        flip_index=spec.flip_index + (k,),
        sigmas=spec.sigmas + (0.1,),
        skeleton=spec.skeleton,
        joint_order=spec.joint_order + (k,),
    )


def spec_from_cfg(cfg: Any) -> KeypointSpec:
    """The spec of the configured dataset (``DATASET.DATASET``), including the center joint if set.

    COCO and CrowdPose use the tables above. 'custom' datasets build theirs from ``DATASET.FLIP_INDEX``,
    ``SIGMAS``, ``SKELETON`` and ``JOINT_NAMES`` (sigmas default to 0.1 and names to ``joint_<i>``).
    """
    ds = cfg.DATASET
    spec = _BY_TRAIN_NAME.get(ds.DATASET) or _BY_TEST_NAME.get(ds.DATASET_TEST)
    if ds.DATASET == "custom_kpt" or spec is None:
        k = ds.NUM_JOINTS - int(ds.WITH_CENTER)
        spec = KeypointSpec(
            name="CUSTOM",
            joint_names=tuple(ds.JOINT_NAMES) or tuple(f"joint_{i}" for i in range(k)),
            flip_index=tuple(int(i) for i in ds.FLIP_INDEX) or tuple(range(k)),
            sigmas=tuple(float(s) for s in ds.SIGMAS) or (0.1,) * k,
            skeleton=tuple((int(a), int(b)) for a, b in ds.SKELETON),
            joint_order=tuple(range(k)),
        )
    expected = ds.NUM_JOINTS - int(ds.WITH_CENTER)
    if spec.num_joints != expected:
        raise ValueError(
            f"DATASET.NUM_JOINTS = {ds.NUM_JOINTS} does not fit {spec.name}, which has {spec.num_joints} joints"
        )
    return _with_center(spec) if ds.WITH_CENTER else spec


def hop_distances(spec: KeypointSpec) -> list[list[int]]:
    """All-pairs shortest-path hop counts on the skeleton (BFS); unreachable pairs get K."""
    k = spec.num_joints
    adj: list[list[int]] = [[] for _ in range(k)]
    for a, b in spec.skeleton:
        adj[a].append(b)
        adj[b].append(a)
    dist = [[k] * k for _ in range(k)]
    for src in range(k):
        dist[src][src] = 0
        frontier = [src]
        while frontier:
            nxt = []
            for u in frontier:
                for v in adj[u]:
                    if dist[src][v] > dist[src][u] + 1:
                        dist[src][v] = dist[src][u] + 1
                        nxt.append(v)
            frontier = nxt
    return dist
