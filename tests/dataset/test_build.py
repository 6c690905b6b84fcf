"""Builders: config-driven datasets and loaders, batch layout, seeding per worker / epoch / run."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from higherpose.core.validation import run_validation
from higherpose.dataset import build
from higherpose.dataset.annotations import AnnotationError
from higherpose.dataset.build import (
    annotation_file,
    build_dataset,
    make_dataloader,
    make_test_dataloader,
)
from tests.conftest import TINY_HRNET, load_cfg


def _cfg(root, *opts):
    return load_cfg(
        TINY_HRNET,
        "DATASET.ROOT",
        str(root),
        "DATASET.TRAIN",
        "val2017",
        "DATASET.TEST",
        "val2017",
        "DATASET.SYNTHETIC",
        "False",
        "TRAIN.IMAGES_PER_GPU",
        "2",
        *opts,
    )


def test_train_loader_batches(coco_sample) -> None:
    """A batch has the documented layout, and its images are the augmented pictures normalised by hand."""
    cfg = _cfg(coco_sample, "WORKERS", "0", "TRAIN.SEED", "1")
    loader = make_dataloader(cfg, is_train=True)
    warped = _record_warped_images(loader.dataset)
    images, heatmaps, masks, joints = next(iter(loader))
    size = cfg.DATASET.INPUT_SIZE  # the training input (192 crops in the tiny YAML)
    quarter, half = size // 4, size // 2
    assert images.shape == (2, 3, size, size) and images.dtype == torch.float32
    assert [h.shape for h in heatmaps] == [(2, 17, quarter, quarter), (2, 17, half, half)]
    assert [m.shape for m in masks] == [(2, quarter, quarter), (2, half, half)]
    assert [j.shape for j in joints] == [(2, 30, 17, 2), (2, 30, 17, 2)] and joints[0].dtype == torch.int64
    assert abs(images.mean().item()) < 2  # normalised
    # Each image is its augmented uint8 RGB picture scaled to [0, 1], then ImageNet-normalised per
    # channel in RGB order: (x/255 - mean) / std.
    assert len(warped) == 2 and all(w.shape == (size, size, 3) and w.dtype == np.uint8 for w in warped)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for image, raw in zip(images, warped):
        expected = (torch.from_numpy(raw.astype(np.float32) / 255).permute(2, 0, 1) - mean) / std
        assert torch.allclose(image, expected, atol=1e-5)
    assert not loader.pin_memory or torch.cuda.is_available()


def _record_warped_images(dataset) -> list[np.ndarray]:
    """Wrap ``dataset.transforms`` to record, per sample, the last image the pipeline still holds as
    an (H, W, 3) array: the augmented picture before it becomes a tensor."""
    pipeline, recorded = dataset.transforms, []

    def recording(image, masks, joints, rng):
        last = None
        for t in pipeline.transforms:
            if isinstance(image, np.ndarray):
                last = image.copy()
            image, masks, joints = t(image, masks, joints, rng)
        recorded.append(last)
        return image, masks, joints

    dataset.transforms = recording
    return recorded


def _epoch(loader) -> list[torch.Tensor]:
    return [b[0] for b in loader]


def test_seed_reproduces_and_epochs_differ(coco_sample) -> None:
    cfg = _cfg(coco_sample, "WORKERS", "0", "TRAIN.SEED", "3")
    a, b = make_dataloader(cfg), make_dataloader(cfg)
    first_a, first_b = _epoch(a), _epoch(b)
    assert all(torch.equal(x, y) for x, y in zip(first_a, first_b))
    second_a = _epoch(a)
    assert not all(torch.equal(x, y) for x, y in zip(first_a, second_a))


def test_workers_draw_different_augmentations(coco_sample) -> None:
    cfg = _cfg(coco_sample, "WORKERS", "2", "TRAIN.SEED", "5", "TRAIN.IMAGES_PER_GPU", "1")
    ds = build_dataset(cfg, is_train=True)
    # Two workers each get the same image (index 0 twice): their draws must differ.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, [0, 0]),
        batch_size=1,
        num_workers=2,
        worker_init_fn=_reseed_subset,
        generator=torch.Generator().manual_seed(5),
    )
    x, y = (b[0] for b in loader)
    assert not torch.equal(x, y)
    # The real loader with workers reproduces for a fixed seed.
    one, two = (_epoch(make_dataloader(cfg)) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(one, two))


@pytest.mark.parametrize(("seed", "persistent"), [("-1", True), ("0", False)])
def test_workers_persist_only_without_seed(coco_sample, seed: str, persistent: bool) -> None:
    """A seeded run restarts its workers every epoch so that they take that epoch's seed (exact resume,
    tests/core/test_resume_workers.py); an unseeded run keeps them and skips the restart."""
    loader = make_dataloader(_cfg(coco_sample, "WORKERS", "2", "TRAIN.SEED", seed))
    assert loader.persistent_workers is persistent


def _reseed_subset(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.dataset.reseed(torch.initial_seed())


def test_distributed_sampler_drops_last(coco_sample, tmp_path) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cfg = _cfg(coco_sample, "WORKERS", "0", "TRAIN.SEED", "0")
        loader = make_dataloader(cfg, is_train=True, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler)
        assert loader.sampler.drop_last and loader.sampler.shuffle
        loader.sampler.set_epoch(1)
        assert len(list(iter(loader.sampler))) == 4
    finally:
        dist.destroy_process_group()


def test_test_loader(crowdpose_sample) -> None:
    cfg = load_cfg(
        TINY_HRNET,
        "DATASET.ROOT",
        str(crowdpose_sample),
        "DATASET.DATASET",
        "crowd_pose_kpt",
        "DATASET.DATASET_TEST",
        "crowd_pose",
        "DATASET.NUM_JOINTS",
        "14",
        "MODEL.NUM_JOINTS",
        "14",
        "DATASET.TEST",
        "test",
        "DATASET.SYNTHETIC",
        "False",
    )
    loader, dataset = make_test_dataloader(cfg)
    assert dataset.name == "crowd_pose" and dataset.spec.num_joints == 14 and loader.batch_size == 1
    image, anns = next(iter(loader))
    assert isinstance(image, np.ndarray) and image.shape[2] == 3 and isinstance(anns, list)


def test_custom_dataset_uses_yaml_spec(coco_sample) -> None:
    flip = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    cfg = _cfg(
        coco_sample,
        "DATASET.DATASET",
        "custom_kpt",
        "DATASET.DATASET_TEST",
        "custom",
        "DATASET.FLIP_INDEX",
        str(flip),
        "WORKERS",
        "0",
    )
    ds = build_dataset(cfg, is_train=True)
    assert ds.spec.name == "CUSTOM" and list(ds.spec.flip_index) == flip
    _, dataset = make_test_dataloader(cfg)
    assert dataset.name == "custom"


def test_synthetic_flag_generates_missing_root(tmp_path, monkeypatch) -> None:
    from higherpose.dataset import synthetic

    calls = []
    real = synthetic.ensure_synthetic

    def small(root, *args, **kwargs):
        calls.append(root)
        return real(root, num_train=3, num_val=2, verbose=False)

    monkeypatch.setattr(synthetic, "ensure_synthetic", small)
    root = tmp_path / "syn"
    cfg = load_cfg(TINY_HRNET, "DATASET.ROOT", str(root), "WORKERS", "0")
    ds = build_dataset(cfg, is_train=True)
    assert calls == [str(root)] and len(ds) >= 1
    umask = os.umask(0)
    os.umask(umask)
    for split in ("train", "val"):  # the umask's mode, as open() gives, and no temporary left
        written = root / "annotations" / f"person_keypoints_{split}.json"
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    assert not [p.name for p in (root / "annotations").iterdir() if p.name.startswith(".")]
    image, heatmaps, masks, joints = ds[0]
    assert image.shape == (3, cfg.DATASET.INPUT_SIZE, cfg.DATASET.INPUT_SIZE)


def test_with_center_adds_the_mean_joint(coco_sample) -> None:
    cfg = _cfg(coco_sample, "DATASET.WITH_CENTER", "True", "WORKERS", "0")
    ds = build_dataset(cfg, is_train=False)
    assert ds.spec.num_joints == 18 and ds.spec.flip_index[17] == 17
    anns = [a for a in ds.load_anns(785)]
    joints = ds.get_joints(anns)
    kp = np.asarray(anns[0]["keypoints"], dtype=np.float64).reshape(17, 3)
    assert joints.shape == (1, 18, 3) and np.allclose(joints[0, 17], [*kp[:, :2].mean(axis=0), 1])


def test_overflowing_persons_are_counted(coco_sample) -> None:
    cfg = _cfg(coco_sample, "DATASET.MAX_NUM_PEOPLE", "2", "WORKERS", "0")
    ds = build_dataset(cfg, is_train=False)  # no augmentation: joints in image pixels
    ds.joints_generator = [type(g)(2, 17, 640, True) for g in ds.joints_generator]
    ds[ds.ids.index(197388)]  # 5 labelled persons
    assert ds.num_overflow_persons == 3


def test_annotation_file_follows_each_layout(coco_sample, tmp_path) -> None:
    """The file the dataset classes read, per layout: COCO's (test splits: image_info_*) and CrowdPose's
    json/ folder; the COCO path is the one the built dataset opens."""
    cfg = _cfg(coco_sample)
    assert annotation_file(cfg) == build_dataset(cfg, is_train=True).ann_file
    assert annotation_file(cfg) == str(coco_sample / "annotations" / "person_keypoints_val2017.json")
    test_dev = _cfg(tmp_path, "DATASET.TEST", "test-dev2017")
    assert annotation_file(test_dev, is_train=False) == str(tmp_path / "annotations" / "image_info_test-dev2017.json")
    crowd = _cfg(
        tmp_path, "DATASET.DATASET", "crowd_pose_kpt", "DATASET.DATASET_TEST", "crowd_pose", "DATASET.TRAIN",
        "trainval", "DATASET.NUM_JOINTS", 14, "MODEL.NUM_JOINTS", 14,
    )  # fmt: skip
    assert annotation_file(crowd) == str(tmp_path / "json" / "crowdpose_trainval.json")
    assert annotation_file(crowd, is_train=False) == str(tmp_path / "json" / "crowdpose_val2017.json")


def _edited_root(coco_sample: Path, tmp_path: Path, edit) -> Path:
    """A COCO root whose val2017 json is the sample's after ``edit(data)``; images symlinked."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images/val2017").symlink_to(coco_sample / "images/val2017")
    data = json.loads((coco_sample / "annotations/person_keypoints_val2017.json").read_text())
    edit(data)
    (root / "annotations/person_keypoints_val2017.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("empty", ["unlabelled_persons", "no_annotations"])
def test_train_loader_needs_a_labelled_person(coco_sample, tmp_path, empty: str) -> None:
    """Refused when the training set is built, naming the file, not by torch's sampler (num_samples=0)."""

    def edit(data: dict) -> None:
        if empty == "no_annotations":
            data["annotations"] = []
        for ann in data["annotations"]:
            ann["num_keypoints"], ann["keypoints"] = 0, [0] * 51

    root = _edited_root(coco_sample, tmp_path, edit)
    cfg = _cfg(root, "WORKERS", "0")
    with pytest.raises(AnnotationError) as err:
        make_dataloader(cfg, is_train=True)
    message = str(err.value)
    assert message == (
        f"{annotation_file(cfg)}: no image has a labelled person (an annotation with num_keypoints > 0): "
        "nothing to train on"
    )


def test_validation_refuses_nan_keypoints(coco_sample, tmp_path) -> None:
    """What tools/valid.py evaluates on (run_validation's test loader) refuses a NaN joint before any
    prediction: COCOeval would count that person as found and raise the AP."""

    def edit(data: dict) -> None:
        data["annotations"][0]["keypoints"][15] = float("nan")

    root = _edited_root(coco_sample, tmp_path, edit)
    cfg = _cfg(root, "WORKERS", "0")
    expected = rf"^{annotation_file(cfg, is_train=False)}: annotation id 442619 \(image 785\) has a non-finite "
    with pytest.raises(AnnotationError, match=expected + r"keypoints\[15\] \(joint 5 x\) = nan$"):
        make_test_dataloader(cfg)
    with pytest.raises(AnnotationError, match=expected):
        run_validation(cfg, torch.nn.Identity(), str(tmp_path / "out"))


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("", True), ("cuda", True)])
def test_memory_is_pinned_only_for_a_gpu_run(coco_sample, monkeypatch, device, pinned) -> None:
    """On a GPU host a DEVICE 'cpu' run pins nothing (pinning opens a CUDA context in every rank)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = _cfg(coco_sample, "WORKERS", "0", "DEVICE", device)
    assert make_dataloader(cfg, is_train=True).pin_memory is pinned


def test_test_loader_workers_read_ahead_in_order(coco_sample) -> None:
    """Reading threads (validation on a GPU) give the samples of the loader without them, in its order; a
    rank's share keeps its indices' order; a consumer may stop early."""
    cfg = _cfg(coco_sample, "WORKERS", "3")
    _, dataset = make_test_dataloader(cfg)
    assert build.test_workers(cfg, torch.device("cpu")) == 0
    assert build.test_workers(cfg, torch.device("cuda", 0)) == 3
    ids = list(dataset.ids)
    for share in (None, list(range(len(dataset)))[::-1]):
        plain = list(build.test_loader(dataset, share, workers=0))
        ahead = build.test_loader(dataset, share, workers=2)
        assert isinstance(ahead, build.ReadAhead) and len(ahead) == len(plain)
        got = list(ahead)
        assert len(got) == len(plain) == len(dataset) > 1
        for (image_a, anns_a), (image_b, anns_b) in zip(plain, got):
            np.testing.assert_array_equal(image_a, image_b)
            assert anns_a == anns_b
        order = [anns[0]["image_id"] for _, anns in got if anns]
        want = [i for i in (ids if share is None else ids[::-1]) if dataset.coco.getAnnIds(imgIds=i)]
        assert order == want
    stream = iter(build.test_loader(dataset, None, workers=2))
    first = next(stream)
    stream.close()
    np.testing.assert_array_equal(first[0], dataset[0][0])


# A fresh interpreter: OpenCV's pool runs with 4 threads first, as in a rank that has validated.
_WORKER_OPENCV_THREADS = """
import sys
import cv2, numpy as np
from higherpose.dataset import synthetic
from higherpose.dataset.build import make_dataloader
from tests.conftest import TINY_HRNET, load_cfg

root = sys.argv[1]
synthetic.generate(root, num_train=4, num_val=1, seed=3, workers=1, verbose=False)
cv2.setNumThreads(4)
picture = np.zeros((1500, 1500, 3), np.uint8)
cv2.warpAffine(picture, np.eye(2, 3), (1400, 1400))
cfg = load_cfg(TINY_HRNET, "DATASET.ROOT", root, "WORKERS", "2", "TRAIN.SEED", "0", "TRAIN.IMAGES_PER_GPU", "1")
loader = make_dataloader(cfg)
def threads_in_worker(self, index):
    cv2.warpAffine(picture, np.eye(2, 3), (1400, 1400))  # the worker's pool works
    return cv2.getNumThreads()
type(loader.dataset).__getitem__ = threads_in_worker
loader.collate_fn = list
print("worker threads", sorted({n for batch in loader for n in batch}))
"""


def test_loader_workers_run_opencv_on_one_thread(tmp_path) -> None:
    """Each DataLoader worker augments on one OpenCV thread, not one per core, and nothing hangs: the
    count is set in the process before the workers fork from it, after its pool has run."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run(
        [sys.executable, "-c", _WORKER_OPENCV_THREADS, str(tmp_path / "syn")],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "worker threads [1]" in out.stdout, out.stdout
