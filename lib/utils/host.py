"""Reading tensors back to the host in one copy.

On a GPU every ``tensor.cpu()`` waits for the device (a host sync) and starts its own transfer; the
grouping reads several small tensors per image (candidate values, locations, tags; neighbourhoods of
peaks). :func:`to_host` reads any number of them with one transfer: their bytes are concatenated on
the device, copied once, and cut back into arrays of their own dtypes and shapes (exact, whatever the
dtypes). On the CPU there is nothing to copy and each tensor is returned as its numpy view.
"""

from __future__ import annotations

import numpy as np
import torch

_ALIGN = 8  # bytes: every array starts on a multiple of its element size (at most 8) in the buffer


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (those numpy has)."""
    return torch.empty(0, dtype=dtype).numpy().dtype


def to_host(*tensors: torch.Tensor, packed: bool | None = None) -> list[np.ndarray]:
    """numpy arrays of ``tensors`` (any shapes and numpy-representable dtypes, one device), in order.

    ``packed`` (default: when a tensor is not on the CPU): one device-to-host copy of all their bytes,
    cut into arrays that are views of one buffer; otherwise ``tensor.cpu().numpy()`` each (views of the
    tensors on the CPU)."""
    if packed is None:
        packed = any(t.device.type != "cpu" for t in tensors)
    if not packed:
        return [t.detach().cpu().numpy() for t in tensors]
    parts, spans = [], []
    offset = 0
    for t in tensors:
        raw = t.detach().reshape(-1).view(torch.uint8)
        pad = -raw.numel() % _ALIGN
        if pad:
            raw = torch.cat((raw, raw.new_zeros(pad)))
        parts.append(raw)
        spans.append((offset, t.numel() * t.element_size()))
        offset += raw.numel()
    buffer = torch.cat(parts).cpu().numpy() if parts else np.zeros(0, np.uint8)
    return [
        buffer[start : start + size].view(numpy_dtype(t.dtype)).reshape(tuple(t.shape))
        for t, (start, size) in zip(tensors, spans)
    ]
