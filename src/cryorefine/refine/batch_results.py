"""A batch's new poses and statistics on their way to the host, without waiting for them.

``run_half_set`` queues each batch's results for the host (``send``: copies into
pinned memory on a GPU, made when the device gets to them) and reads them back
(``receive``) only after the next batch's work is queued, so that the host
prepares the next batch while the device finishes this one. On the CPU the
tensors are read as they are. The host adds them to the half set's outputs and
sums in batch order, as if read at once.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cryorefine.likelihood import ExpectationResult
from cryorefine.refine.half_sums import HalfSetSums

__all__ = ["BatchOnItsWay", "receive", "send"]

_POSE_FIELDS = ("origins_px", "angles_deg", "pmax", "significant_samples", "log_likelihood")


@dataclass(frozen=True)
class BatchOnItsWay:
    """One batch's results queued for the host.

    ``all_rows``/``finite``: the batch's rows of the particle set and which of them were
    scored (the others keep their poses); ``values``: host tensors, readable once
    ``ready`` (None on the CPU) has passed; ``norms``: the old ``rlnNormCorrection``
    of the batch's rows.
    """

    all_rows: np.ndarray
    finite: np.ndarray
    values: dict[str, Tensor]
    ready: torch.cuda.Event | None
    norms: np.ndarray


def _to_host(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], torch.cuda.Event | None]:
    """Host copies of ``tensors`` (pinned, queued on the current stream) and the event
    after which they hold the values; CPU tensors are taken as they are."""
    on_device = [t for t in tensors.values() if t.device.type == "cuda"]
    if not on_device:
        return dict(tensors), None
    host = {}
    for name, tensor in tensors.items():
        host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host[name].copy_(tensor, non_blocking=True)  # on the current stream of its GPU
    ready = torch.cuda.Event()
    ready.record(torch.cuda.current_stream(on_device[0].device))  # that GPU's, not device 0's
    return host, ready


def send(
    result: ExpectationResult | None,
    new_norms: Tensor | None,
    all_rows: np.ndarray,
    finite: np.ndarray,
    norms: np.ndarray,
) -> BatchOnItsWay:
    """Queue a batch's results for the host: the scored particles' poses and statistics,
    the sums of their offset moments and ``pmax``, and their new norm corrections."""
    tensors: dict[str, Tensor] = {}
    if result is not None:
        tensors = {name: getattr(result, name) for name in _POSE_FIELDS}
        tensors["offset_moments_sum"] = result.offset_moments_px2.sum()
        tensors["pmax_sum"] = result.pmax.sum()
        if new_norms is not None:
            tensors["norms"] = new_norms
    values, ready = _to_host(tensors)
    return BatchOnItsWay(all_rows, finite, values, ready, norms)


def receive(
    batch: BatchOnItsWay,
    sums: HalfSetSums,
    outputs: dict[str, list[np.ndarray]],
    *,
    angles_deg: np.ndarray,
    origins_angst: np.ndarray,
    ndim: int,
    pixel_size_angst: float,
) -> None:
    """Wait for a queued batch and add it to ``outputs`` (new poses, norms, left-out
    rows) and to the sums of ``sums``; a bad particle (not ``finite``) keeps its pose.
    ``angles_deg`` and ``origins_angst`` are the table's, ``(b, 3)`` each."""
    if batch.ready is not None:
        batch.ready.synchronize()
    values, finite = batch.values, batch.finite
    b = len(finite)
    poses = {
        "angles": angles_deg.copy(),
        "origins": origins_angst.copy(),
        "pmax": np.zeros(b),
        "nsig": np.zeros(b, dtype=np.int64),
        "ll": np.zeros(b),
    }
    norm = batch.norms.copy()  # bad particles keep theirs
    if values:
        origins = np.zeros((int(finite.sum()), 3))
        origins[:, :ndim] = values["origins_px"].double().numpy() * pixel_size_angst
        poses["angles"][finite] = values["angles_deg"].numpy()
        poses["origins"][finite] = origins
        poses["pmax"][finite] = values["pmax"].numpy()
        poses["nsig"][finite] = values["significant_samples"].numpy()
        poses["ll"][finite] = values["log_likelihood"].numpy()
        sums.offset_moments_angst2 += float(values["offset_moments_sum"]) * pixel_size_angst**2
        sums.pmax_sum += float(values["pmax_sum"])
        if "norms" in values:
            norm[finite] = values["norms"].numpy()
            sums.norm_sum += float(norm[finite].sum())
    outputs["norm"].append(norm)
    for key, value in poses.items():
        outputs[key].append(value)
    outputs["left_out"].append(batch.all_rows[~finite])
