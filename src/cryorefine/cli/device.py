"""The device a command runs on, from RELION's ``--gpu`` option."""

import torch

from cryorefine.errors import InputError

__all__ = ["device_from_gpu_option"]


def device_from_gpu_option(gpu: str | None) -> torch.device:
    """``None`` (no ``--gpu``): the CPU; ``""``: the first GPU; ``"1:2"``: the first id listed.

    RELION's ``--gpu "0:1"`` lists devices for several ranks; one process takes
    the first. Raises ``InputError`` if a GPU is asked for and none is usable.
    """
    if gpu is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("--gpu: no CUDA device is available to this process (leave out --gpu)")
    first = gpu.replace(",", ":").split(":")[0].strip()
    index = int(first) if first.isdigit() else 0
    if index >= torch.cuda.device_count():
        raise InputError(
            f"--gpu {gpu}: device {index} does not exist ({torch.cuda.device_count()} found)"
        )
    return torch.device("cuda", index)
