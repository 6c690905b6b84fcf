"""Keypoint specs: internal consistency and the official HigherHRNet / COCO facts."""

from __future__ import annotations

import pytest

from higherpose.dataset.specs import COCO, CROWDPOSE, KeypointSpec, hop_distances, spec_from_cfg
from tests.conftest import EXPERIMENTS, TINY_HRNET, load_cfg


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_flip_index_is_an_involution_that_swaps_left_and_right(spec: KeypointSpec) -> None:
    for i, j in enumerate(spec.flip_index):
        assert spec.flip_index[j] == i
        a, b = spec.joint_names[i], spec.joint_names[j]
        assert a.replace("left", "right") == b or b.replace("left", "right") == a or i == j
        assert spec.sigmas[i] == spec.sigmas[j]


def test_official_values() -> None:
    assert COCO.flip_index == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    assert CROWDPOSE.flip_index == (1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13)
    assert len(COCO.skeleton) == 19 and len(CROWDPOSE.skeleton) == 15
    assert COCO.joint_order[:9] == (0, 1, 2, 3, 4, 5, 6, 11, 12)


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_hop_distances(spec: KeypointSpec) -> None:
    dist = hop_distances(spec)
    k = spec.num_joints
    assert all(dist[i][i] == 0 for i in range(k))
    assert all(dist[i][j] == dist[j][i] for i in range(k) for j in range(k))
    assert max(max(row) for row in dist) == 6  # connected skeleton, longest path 6 hops
    for a, b in spec.skeleton:
        assert dist[a][b] == 1


def test_spec_from_cfg() -> None:
    assert spec_from_cfg(load_cfg(TINY_HRNET)) is COCO
    assert spec_from_cfg(load_cfg(EXPERIMENTS / "crowd_pose/higher_hrnet/w32_512_adam_lr1e-3.yaml")) is CROWDPOSE
    custom = spec_from_cfg(
        load_cfg(
            TINY_HRNET,
            "DATASET.DATASET",
            "custom_kpt",
            "DATASET.DATASET_TEST",
            "custom",
            "DATASET.NUM_JOINTS",
            3,
            "MODEL.NUM_JOINTS",
            3,
            "DATASET.FLIP_INDEX",
            "[1, 0, 2]",
            "DATASET.SIGMAS",
            "[0.1, 0.1, 0.2]",
            "DATASET.SKELETON",
            "[[0, 2], [1, 2]]",
        )  # fmt: skip
    )
    assert custom.flip_pairs == ((0, 1),) and custom.sigmas == (0.1, 0.1, 0.2)
    assert hop_distances(custom)[0][1] == 2


def test_bad_spec_is_rejected() -> None:
    with pytest.raises(ValueError, match="flip_index"):
        KeypointSpec("X", ("a", "b"), (0, 0), (0.1, 0.1), (), (0, 1))
