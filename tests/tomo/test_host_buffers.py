"""tomo.host_buffers: device results on the host through reused pinned buffers."""

import numpy as np
import pytest
import torch

from cryorefine.tomo.host_buffers import HostBuffers

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_cpu_tensor_comes_back_as_its_own_values():
    values = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    host = HostBuffers().copy(values, "data")
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, values.numpy())


def test_fewer_than_one_slot_is_refused():
    with pytest.raises(ValueError, match="slots"):
        HostBuffers(slots=0)


@cuda
def test_gpu_copies_are_exact_and_take_the_slots_in_turn():
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 8, 8, generator=gen) for _ in range(3)]
    buffers = HostBuffers(slots=2)
    copies = [buffers.copy(batch.cuda(), "data") for batch in batches]
    for copy, batch in zip(copies[1:], batches[1:], strict=True):
        np.testing.assert_array_equal(copy, batch.numpy())
    assert not np.shares_memory(copies[0], copies[1])  # the next batch has its own slot
    assert np.shares_memory(copies[0], copies[2])  # two batches on, the first slot again
    np.testing.assert_array_equal(copies[0], batches[2].numpy())


@cuda
def test_a_larger_batch_grows_its_buffer_and_names_are_kept_apart():
    buffers = HostBuffers(slots=1)
    small = buffers.copy(torch.ones(2, 3, device="cuda"), "data")
    large = buffers.copy(torch.full((5, 3), 2.0, device="cuda"), "data")
    other = buffers.copy(torch.full((2, 3), 3.0, device="cuda"), "weights")
    assert large.shape == (5, 3)
    assert (large == 2.0).all()
    assert (other == 3.0).all()
    assert not np.shares_memory(other, large)
    assert small.shape == (2, 3)
