"""export_onnx leaves the exported model as it found it."""

from __future__ import annotations

import torch

from higherpose.apis.onnx_export import export_onnx
from higherpose.models import build_model
from tests.conftest import TINY_HRNET, load_cfg


def test_export_leaves_the_model_in_eval_mode_with_its_statistics(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(load_cfg(TINY_HRNET), is_train=False).eval()
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, str(tmp_path / "m.onnx"), torch.randn(1, 3, 192, 256), ["heatmaps_tags_1_4", "heatmaps_1_2"], 17)
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN running statistics too
    with torch.no_grad():
        after = model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
