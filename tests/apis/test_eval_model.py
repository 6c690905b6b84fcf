"""load_eval_model / find_weights: which weights are taken, strict loading, the untrained smoke mode."""

from __future__ import annotations

import pytest
import torch

from higherpose.apis.eval_model import find_weights, load_eval_model
from higherpose.utils.checkpoint import CheckpointError
from tests.conftest import TINY_HRNET, load_cfg


def test_find_weights_order_and_errors(tmp_path):
    with pytest.raises(CheckpointError, match="TEST.MODEL_FILE is not set"):
        find_weights("")
    with pytest.raises(CheckpointError, match="none of model_best.pth"):
        find_weights("", str(tmp_path))
    (tmp_path / "final_state.pth").write_bytes(b"")
    assert find_weights("", str(tmp_path)) == str(tmp_path / "final_state.pth")
    (tmp_path / "model_best.pth").write_bytes(b"")
    assert find_weights("", str(tmp_path)) == str(tmp_path / "model_best.pth")  # the best weights first
    with pytest.raises(CheckpointError, match="file not found"):
        find_weights(str(tmp_path / "other.pth"), str(tmp_path))  # a named file is never replaced


def test_load_eval_model_strict_and_untrained(tmp_path, capsys):
    torch.manual_seed(0)
    model, weights, device = load_eval_model(load_cfg(TINY_HRNET, "DEVICE", "cpu"), random_weights=True)
    assert weights is None and device == torch.device("cpu") and not model.training
    assert "UNTRAINED" in capsys.readouterr().err
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)

    cfg = load_cfg(TINY_HRNET, "DEVICE", "cpu", "TEST.MODEL_FILE", str(path))
    loaded, weights, _ = load_eval_model(cfg, random_weights=True)  # a given file wins over random weights
    assert weights == str(path) and "UNTRAINED" not in capsys.readouterr().err
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_eval_model(cfg)
