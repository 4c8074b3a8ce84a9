"""The carried fine rows' back-projection data and weights, written straight into their tables.

For particle ``b`` and each of its carried children ``j`` (a fine row that carries
weight), with the children's weights over the particle's fine translations
``W[b, t, j]`` (``pairs._spread``'s columns), the phases ``S[b, t, k]`` and the
particle's back-projection data ``Y[b, k]`` and weight ``V[b, k]``:

    data[row[b, j], k]   += Y[b, k] sum_t W[b, t, j] S[b, t, k]
    weight[row[b, j], k] += w[b, j] V[b, k]            (w = sum_t W, the child's weight)

The torch route (``pair_sums``) forms every carried child's data as an array
(``unshifted.weighted_shifts``: a product, then ``Y`` multiplied in), compacts it and
adds it into the table by ``index_add_``: four passes over arrays of the children's
data; the weights are a product of every particle's weight with every row. Here one
Triton kernel per fine group holds a block of a particle's coefficients and their
phases, forms its carried children's data and weights there and writes them into the
tables. A row has 1-2 owners in the tutorial's late iterations: its first owner's are
stored (``store``: no atomics, and the tables need not be zeroed), the others' added
after by atomics, whose order varies, as ``index_add_``'s does on a GPU.
"""

from typing import no_type_check

import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from cryorefine.likelihood.held_cross import MAX_TILE_ROWS, kernels_on

try:  # Triton comes with CUDA builds of torch; CPU builds take the torch route
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["add_carried_rows", "kernel_applies"]

_BLOCK_CHILDREN = 16  # carried children per step of the kernel's loop (tl.dot's least M)
_BLOCK_COEFFICIENTS = 32  # complex coefficients per program (its phases: t x 32 of them)
# no software pipelining of the loop over children: 9.1 ms against 10.2 with Triton's 3
# stages at pair_sums_bench.py's synthetic group (bench/fine_kernel_configs.py, H200); at
# the real final iteration's median group (three times its rows) 3.57 ms, the best of 36
# launches 3.39 (session 34)
_STAGES = 1

if triton is not None:
    # the sizes that change from one fine group to the next are not specialised on (whether
    # each divides by 16): one compiled variant serves every group; the tables' strides,
    # fixed for an iteration, stay specialised so that the stores stay aligned
    @triton.jit(do_not_specialize=["t", "w_st", "rows_sb", "picks_sb"])
    @no_type_check  # the test suite's jaxtyping hook would wrap it; Triton needs the function
    def _carried(w_ptr, table_rows_ptr, child_w_ptr, picks_ptr, counts_ptr, y_ptr, v_ptr,
                 s_ptr, data_ptr, weight_ptr, t, kc, w_sb, w_st, rows_sb, picks_sb, y_sb, v_sb,
                 s_sb, s_st, data_sr, weight_sr,
                 BM: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                 IEEE: tl.constexpr, STORE: tl.constexpr):  # fmt: skip
        """One particle, ``BC`` complex coefficients, all its listed children."""
        b = tl.program_id(1)
        count = tl.load(counts_ptr + b)
        if count > 0:
            # BC complex coefficients as 2 BC reals, interleaved as the tables hold them
            reals = tl.program_id(0) * 2 * BC + tl.arange(0, 2 * BC)  # axis 0: CUDA's longest
            b64 = b.to(tl.int64)
            in_r = reals < 2 * kc
            ts = tl.arange(0, BT)
            in_t = ts < t
            y = tl.reshape(tl.load(y_ptr + b64 * y_sb + reals, mask=in_r, other=0.0), (BC, 2))
            y_re, y_im = tl.split(y)
            cs = tl.program_id(0) * BC + tl.arange(0, BC)  # the complex coefficients
            v = tl.load(v_ptr + b64 * v_sb + cs, mask=cs < kc, other=0.0)
            # the particle's phases at these coefficients, read once for all its children
            s_at = s_ptr + b64 * s_sb + ts[:, None].to(tl.int64) * s_st + reals[None, :]
            s = tl.load(s_at, mask=in_t[:, None] & in_r[None, :], other=0.0)  # (BT, 2 BC)
            w_base = w_ptr + b64 * w_sb + ts[None, :].to(tl.int64) * w_st
            for j0 in range(0, count, BM):
                js = j0 + tl.arange(0, BM)
                in_j = js < count
                column = tl.load(picks_ptr + b64 * picks_sb + js, mask=in_j, other=0)
                w = tl.load(w_base + column.to(tl.int64)[:, None],
                            mask=in_j[:, None] & in_t[None, :], other=0.0)  # fmt: skip
                # W is real: the product keeps real and imaginary parts interleaved
                if IEEE:
                    acc = tl.dot(w, s, input_precision="ieee")  # (BM, 2 BC)
                else:
                    acc = tl.dot(w, s, input_precision="tf32")
                acc_re, acc_im = tl.split(tl.reshape(acc, (BM, BC, 2)))
                d_re = acc_re * y_re[None, :] - acc_im * y_im[None, :]
                d_im = acc_re * y_im[None, :] + acc_im * y_re[None, :]
                d = tl.reshape(tl.join(d_re, d_im), (BM, 2 * BC))
                row = tl.load(table_rows_ptr + b64 * rows_sb + column, mask=in_j, other=0)
                row = row.to(tl.int64)
                child_w = tl.load(child_w_ptr + b64 * rows_sb + column, mask=in_j, other=0.0)
                d_at = data_ptr + row[:, None] * data_sr + reals[None, :]
                v_at = weight_ptr + row[:, None] * weight_sr + cs[None, :]
                v_w = child_w[:, None] * v[None, :]  # (BM, BC)
                live = in_j[:, None] & in_r[None, :]
                live_v = in_j[:, None] & (cs < kc)[None, :]
                if STORE:
                    tl.store(d_at, d, mask=live)
                    tl.store(v_at, v_w, mask=live_v)
                else:
                    tl.atomic_add(d_at, d, mask=live, sem="relaxed")
                    tl.atomic_add(v_at, v_w, mask=live_v, sem="relaxed")


def kernel_applies(spread: Tensor, precision: str) -> bool:
    """Whether ``add_carried_rows`` can run: ``held_cross.kernels_on``, float32 weights,
    at most ``MAX_TILE_ROWS`` translations per particle."""
    return (
        kernels_on(spread, precision)
        and spread.dtype == torch.float32
        and spread.shape[1] <= MAX_TILE_ROWS
    )


def add_carried_rows(
    spread: Float[Tensor, "b t c"],
    table_rows: Int[Tensor, "b c"],
    child_weights: Float[Tensor, "b c"],
    picks: Int[Tensor, "b m"],
    counts: Int[Tensor, " b"],
    backprojection: tuple[Complex[Tensor, "b kb"], Float[Tensor, "b kb"]],
    phases: Complex[Tensor, "b t kb"] | Complex[Tensor, "t kb"],
    tables: tuple[Float[Tensor, "n k2"], Float[Tensor, "n kb"]],
    *,
    tf32: bool = False,
    store: bool = False,
) -> None:
    """Add each particle's carried children's data and weights into ``tables`` in place.

    ``spread`` holds each child's weights over the particle's fine translations,
    ``table_rows`` its row of the tables and ``child_weights`` its weight ``w``;
    ``picks`` lists the carried children (columns of ``spread``), the first
    ``counts[b]`` of row ``b`` meaningful. ``backprojection`` is ``(Y, V)``; ``tables``
    are ``(data, weight)``, the data as real pairs (``2 kb`` floats per row), and
    receive ``Y sum_t W S`` and ``w V``. With ``store`` the rows are written, not added
    to: each listed row must have one listed child, its first owner (the others added
    after, without ``store``). By the Triton kernel (on CPU tensors under its
    interpreter, ``TRITON_INTERPRET=1``).
    """
    data, v = backprojection
    data_table, weight_table = tables
    b, t, _ = spread.shape
    kc = data.shape[1]
    if t > MAX_TILE_ROWS:
        raise ValueError(f"the kernel takes at most {MAX_TILE_ROWS} translations, got {t}")
    if data.dtype != torch.complex64 or phases.dtype != torch.complex64:
        raise ValueError(f"need complex64 Y and phases, got {data.dtype} and {phases.dtype}")
    if phases.shape[-2:] != (t, kc) or data_table.shape[1] != 2 * kc:
        raise ValueError(
            f"phases {tuple(phases.shape)} and data table {tuple(data_table.shape)} do not "
            f"match {t} translations and {kc} coefficients"
        )
    if data_table.stride(1) != 1 or weight_table.stride(1) != 1:
        raise ValueError("add_carried_rows needs tables with unit stride along coefficients")
    spread, table_rows, picks = spread.contiguous(), table_rows.contiguous(), picks.contiguous()
    child_weights, v = child_weights.contiguous(), v.contiguous()
    counts = counts.to(torch.int32).contiguous()
    y = torch.view_as_real(data.resolve_conj().contiguous()).flatten(1)  # (b, 2 kb)
    phases = phases.resolve_conj()
    phases = phases if phases.dim() == 3 else phases[None]  # (1 or b, t, kb)
    if phases.stride(2) != 1:
        phases = phases.contiguous()
    s = torch.view_as_real(phases).flatten(2)  # (1 or b, t, 2 kb), a view
    s_sb = 0 if s.shape[0] == 1 else s.stride(0)
    if b and t and kc and picks.shape[1]:
        _carried[(triton.cdiv(kc, _BLOCK_COEFFICIENTS), b)](
            spread, table_rows, child_weights, picks, counts, y, v, s, data_table, weight_table,
            t, kc, spread.stride(0), spread.stride(1), table_rows.stride(0), picks.stride(0),
            y.stride(0), v.stride(0), s_sb, s.stride(1), data_table.stride(0),
            weight_table.stride(0),
            BM=_BLOCK_CHILDREN, BT=max(16, triton.next_power_of_2(t)), BC=_BLOCK_COEFFICIENTS,
            IEEE=not tf32, STORE=store, num_stages=_STAGES,
        )  # fmt: skip
