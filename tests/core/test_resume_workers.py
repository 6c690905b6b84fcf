"""Exact resume with DataLoader worker processes: a run stopped after epoch 0 and resumed trains
epoch 1 on the same augmented batches as the uninterrupted run, so both end with the same weights."""

from __future__ import annotations

from higherpose.core.checkpointing import CHECKPOINT_NAME
from higherpose.dataset.build import make_dataloader
from higherpose.utils import distributed as du
from higherpose.utils.checkpoint import load_file
from tests.core.test_trainer import _assert_same_state, run_fit, sample_cfg

# 4 sample images, 2 per batch, 2 workers: each worker builds one batch per epoch.
OPTS = ["WORKERS", 2, "TRAIN.ITERS_PER_EPOCH", 2, "AUTO_RESUME", True]


def _epoch_images(loader, epoch: int, seed: int) -> list:
    """The images of ``epoch`` as the trainer draws them (reseeded for that epoch first)."""
    du.reseed_epoch(loader, du.derive_seed(seed, epoch, 0))
    return [batch[0] for batch in loader]


def test_loader_epoch_does_not_depend_on_earlier_epochs(coco_sample) -> None:
    """Epoch 1 of a loader that ran epoch 0 draws what a fresh loader starting at epoch 1 draws."""
    cfg = sample_cfg(coco_sample, *OPTS)
    straight = make_dataloader(cfg)
    first = _epoch_images(straight, 0, cfg.TRAIN.SEED)
    second = _epoch_images(straight, 1, cfg.TRAIN.SEED)
    resumed = _epoch_images(make_dataloader(cfg), 1, cfg.TRAIN.SEED)
    assert len(second) == len(resumed) == 2
    assert all(a.equal(b) for a, b in zip(second, resumed))
    assert not all(a.equal(b) for a, b in zip(first, second))  # the epochs still differ


def test_resume_with_workers_reproduces_uninterrupted_run(coco_sample, tmp_path) -> None:
    straight = run_fit(sample_cfg(coco_sample, *OPTS, "TRAIN.END_EPOCH", 2), tmp_path / "a")
    run_fit(sample_cfg(coco_sample, *OPTS, "TRAIN.END_EPOCH", 1), tmp_path / "b")
    resumed = run_fit(sample_cfg(coco_sample, *OPTS, "TRAIN.END_EPOCH", 2), tmp_path / "b")
    assert resumed.epoch == straight.epoch == 2 and resumed.global_step == straight.global_step == 4

    a, b = load_file(str(tmp_path / "a" / CHECKPOINT_NAME)), load_file(str(tmp_path / "b" / CHECKPOINT_NAME))
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["optimizer"]["state"], b["optimizer"]["state"])
