"""Device results copied to the host through reused page-locked buffers.

A copy from the GPU into fresh pageable memory runs at about 1 GB/s (the pages
are faulted in as they are written); into page-locked (pinned) memory it runs at
the bus's rate, tens of GB/s. ``HostBuffers`` keeps a few pinned buffers per
name and hands out numpy views of them, so that writer threads can read one
batch's results while the next is computed. On the CPU the tensor's own memory
is returned.
"""

import numpy as np
import torch
from torch import Tensor

__all__ = ["HostBuffers"]


class HostBuffers:
    """Pinned host buffers reused across batches: ``slots`` per name, taken in turn.

    The view ``copy`` returns lives until the same name's slot comes round again
    (``slots`` copies later); callers must be done with it by then.
    """

    def __init__(self, slots: int = 2) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self._buffers: dict[tuple[str, int], Tensor] = {}
        self._turn: dict[str, int] = {}

    def copy(self, tensor: Tensor, name: str) -> np.ndarray:
        """``tensor`` on the host, as a numpy array (a view of the name's next buffer on a GPU)."""
        if not tensor.is_cuda:
            return tensor.detach().cpu().numpy()
        turn = self._turn.get(name, 0)
        self._turn[name] = turn + 1
        key = (name, turn % self.slots)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < tensor.numel():
            buffer = torch.empty(tensor.numel(), dtype=tensor.dtype, pin_memory=True)
            self._buffers[key] = buffer
        view = buffer[: tensor.numel()].view(tensor.shape)
        view.copy_(tensor.detach(), non_blocking=True)
        torch.cuda.current_stream(tensor.device).synchronize()
        return view.numpy()
