"""Checkpoint I/O: wrapper prefixes, fp16, shape mismatches, ImageNet init, atomic saves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from higherpose.models import build_model
from higherpose.utils.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_file,
    load_pose_state_dict,
    save_atomic,
    strip_prefixes,
)
from tests.conftest import TINY_HRNET, load_cfg


@pytest.fixture
def tiny_cfg():
    return load_cfg(TINY_HRNET)


def _randomised(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module.", "1.", "module.1."])
@pytest.mark.parametrize("half", [False, True])
def test_prefixed_and_fp16_state_dicts_load(tiny_cfg, prefix: str, half: bool) -> None:
    source = build_model(tiny_cfg, is_train=False)
    reference = _randomised(source)
    sd = {prefix + k: (v.half() if half and v.is_floating_point() else v) for k, v in reference.items()}
    target = build_model(tiny_cfg, is_train=False)
    missing, unexpected = load_pose_state_dict(target, sd)
    assert not missing and not unexpected
    for k, v in target.state_dict().items():
        assert v.dtype == reference[k].dtype
        tol = 1e-2 * float(reference[k].abs().max() + 1) if half else 0
        assert torch.allclose(v.float(), reference[k].float(), atol=tol), k


def test_wrong_shape_fails_with_readable_message(tiny_cfg) -> None:
    model = build_model(tiny_cfg, is_train=False)
    sd = dict(model.state_dict())
    sd["final_layers.0.weight"] = torch.zeros(28, 16, 1, 1)
    del sd["final_layers.1.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_pose_state_dict(model, sd, source="ckpt.pth")
    msg = str(err.value)
    assert "ckpt.pth" in msg and "final_layers.0.weight: checkpoint (28, 16, 1, 1) vs model (34, 16, 1, 1)" in msg
    assert "missing keys (1)" in msg and "final_layers.1.bias" in msg
    assert "unexpected keys (1)" in msg and "extra.weight" in msg
    # non-strict takes the rest and reports what it could not
    missing, unexpected = load_pose_state_dict(model, sd, strict=False)
    assert missing == ["final_layers.1.bias"] and unexpected == ["extra.weight"]


def test_strip_prefixes_only_when_every_key_has_it() -> None:
    assert strip_prefixes({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert strip_prefixes({"1.weight": 1, "2.weight": 2}) == {"1.weight": 1, "2.weight": 2}


def test_extract_state_dict_from_training_checkpoints() -> None:
    sd = {"w": torch.zeros(1)}
    assert extract_state_dict({"model": sd, "epoch": 3}) == sd
    assert extract_state_dict({"state_dict": sd, "perf": 1}) == sd  # HigherHRNet checkpoint.pth.tar
    with pytest.raises(CheckpointError):
        extract_state_dict({"epoch": 3})


def test_imagenet_init_takes_backbone_and_ignores_classifier(tiny_cfg, tmp_path: Path, caplog) -> None:
    source = build_model(tiny_cfg, is_train=False)
    reference = _randomised(source)
    backbone = {k: v for k, v in reference.items() if not k.startswith(("final_layers", "deconv_layers"))}
    imagenet = {
        **backbone,
        "classifier.weight": torch.zeros(1000, 2048),
        "incre_modules.0.0.conv1.weight": torch.zeros(1),
    }
    imagenet["stage4.0.fuse_layers.1.0.0.weight"] = torch.zeros(32, 32, 1, 1)  # row absent in the pose model
    path = tmp_path / "hrnet_imagenet.pth"
    torch.save(imagenet, path)

    cfg = load_cfg(TINY_HRNET, "MODEL.PRETRAINED", path)
    with caplog.at_level(logging.INFO):
        model = build_model(cfg, is_train=True)
    sd = model.state_dict()
    for k, v in backbone.items():
        assert torch.equal(sd[k], v), k
    # heads keep the official N(0, 0.001) init
    assert float(sd["final_layers.0.weight"].std()) < 0.01
    assert f"init {len(backbone)} tensors" in caplog.text and "classifier" in caplog.text

    cfg = load_cfg(TINY_HRNET, "MODEL.PRETRAINED", path, "MODEL.EXTRA.PRETRAINED_LAYERS", "['conv1', 'bn1']")
    model = build_model(cfg, is_train=True)
    sd = model.state_dict()
    assert torch.equal(sd["conv1.weight"], backbone["conv1.weight"])
    assert not torch.equal(sd["conv2.weight"], backbone["conv2.weight"])


def test_save_atomic_keeps_previous_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pth"
    save_atomic({"epoch": 1}, str(path))

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert load_file(str(path)) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temp file left


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated"):
        load_file(str(path))
    with pytest.raises(CheckpointError, match="not found"):
        load_file(str(tmp_path / "none.pth"))
