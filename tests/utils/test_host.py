"""to_host: one packed copy gives the arrays of one copy each, whatever their dtypes and shapes."""

from __future__ import annotations

import numpy as np
import torch

from higherpose.utils.host import to_host


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(5, 7, generator=g)
    return [
        torch.randn(2, 3, 4, generator=g),  # float32
        torch.randint(-(2**40), 2**40, (3, 2), generator=g),  # int64, values beyond 32 bits
        torch.randn(3, generator=g) > 0,  # bool: 3 bytes, so the next array starts unaligned unless padded
        torch.randn(2, 5, generator=g).half(),
        torch.zeros(0, 4),  # empty
        wide.t(),  # not contiguous
        torch.randn(4, generator=g).double(),
        torch.tensor(3.5),  # 0-d
    ]


def test_packed_copy_equals_one_copy_per_tensor() -> None:
    tensors = _tensors()
    plain = to_host(*tensors, packed=False)
    packed = to_host(*tensors, packed=True)
    assert len(packed) == len(tensors)
    for t, a, b in zip(tensors, plain, packed):
        assert b.dtype == a.dtype and b.shape == a.shape == tuple(t.shape)
        np.testing.assert_array_equal(b, a)
        assert b.size == 0 or b.ctypes.data % b.itemsize == 0  # aligned for its dtype
    # all of them views of one buffer: a single copy
    bases = {id(b.base) for b in packed}
    assert len(bases) == 1 and packed[0].base is not None


def test_on_the_cpu_the_tensors_are_not_packed() -> None:
    tensors = _tensors()
    for t, a in zip(tensors, to_host(*tensors)):
        if t.is_contiguous() and t.numel():
            assert np.shares_memory(a, t.numpy())  # a view, no copy
