"""Particles per E-step batch when --batch_size is 0 (``refine.e_step.default_batch_size``)."""

import pytest
import torch

from cryorefine.refine.e_step import BATCH_BYTES_PER_VOXEL, default_batch_size


def test_the_cpu_takes_small_batches() -> None:
    cpu = torch.device("cpu")
    assert default_batch_size(3, 96, cpu) == 8
    assert default_batch_size(2, 96, cpu) == 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_batch_of_volumes_takes_at_most_a_fifth_of_the_card() -> None:
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    for box in (48, 96, 128, 256):
        size = default_batch_size(3, box, device)
        assert 8 <= size <= 256
        assert size == 8 or size * BATCH_BYTES_PER_VOXEL * box**3 <= total / 5
    assert default_batch_size(2, 96, device) == 256
