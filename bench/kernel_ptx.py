"""PTX of the sampling and splatting Triton kernels for an H100, compiled without a GPU.

    python3 bench/kernel_ptx.py --out DIR
    PYTHONPATH=OLD/src python3 bench/kernel_ptx.py --out DIR_OLD
    diff DIR_OLD/texture_sample.ptx DIR/texture_sample.ptx

Compiles ``fourier.texture._sample`` (8 rows per program, without and with the
squared magnitudes), and
``fourier.trilinear_kernels._sample`` and ``_splat`` (3D, skipping the
redundant half-plane, unpacked), for CUDA compute capability 9.0 with Triton's
own compiler (no device is needed, only Triton), and writes each kernel's PTX
with comments, debug lines and sections, labels and register numbers left out (``.ptx``), so
that two builds' kernels can be compared instruction by instruction: a
refactoring that leaves them equal needs no new timing. Prints each kernel's
instruction count.
"""

import argparse
import inspect
import re
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cryorefine.fourier import texture, trilinear_kernels

SCALARS = {"k": "i32", "p": "i32", "ph": "i32", "n_rows": "i32", "pad": "fp32",
           "radius2": "fp32", "scale": "fp32", "texture": "i64", "freq_ptr": "*i32"}  # fmt: skip


def signature(kernel, constants: dict[str, int]) -> dict[str, str]:
    """Triton's signature of ``kernel``: pointers float32, the named scalars, constants."""
    names = inspect.signature(kernel.fn).parameters
    return {
        name: "constexpr" if name in constants else SCALARS.get(name, "*fp32") for name in names
    }


def normalised_ptx(kernel, constants: dict[str, int]) -> str:
    """The kernel's PTX for sm_90, without comments, debug lines and register numbers."""
    source = ASTSource(kernel, signature(kernel, constants), constexprs=constants)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    ptx = ptx.split(".section")[0]  # the code; the debug sections follow it
    lines = []
    for line in ptx.splitlines():
        line = re.sub(r"//.*$", "", line).rstrip()
        if not line or line.lstrip().startswith((".file", ".loc", "$L__")):
            continue
        lines.append(re.sub(r"%(r|rd|p|f|rs)[0-9]+", r"%\1", line))
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write the kernels' PTX (module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kernels = {
        "texture_sample": (texture._sample, {"ROWS": 8, "BLOCK": 128, "POWER": 0}),
        "texture_sample_powers": (texture._sample, {"ROWS": 8, "BLOCK": 128, "POWER": 1}),
        "trilinear_sample": (trilinear_kernels._sample, {"BLOCK": 256}),
        "trilinear_splat": (
            trilinear_kernels._splat,
            {"skip_redundant": 1, "ndim": 3, "PACKED": 0, "VECTOR": 0, "BLOCK": 256},
        ),
    }
    for name, (kernel, constants) in kernels.items():
        parameters = set(inspect.signature(kernel.fn).parameters)
        if "POWER" in constants and "POWER" not in parameters and not constants["POWER"]:
            constants = {k: v for k, v in constants.items() if k != "POWER"}  # older builds
        if not set(constants) <= parameters:
            print(f"{name}: this build's kernel takes other constants; skipped")  # noqa: T201
            continue
        ptx = normalised_ptx(kernel, constants)
        (args.out / f"{name}.ptx").write_text(ptx)
        instructions = sum(1 for line in ptx.splitlines() if line.startswith("\t"))
        print(f"{name}: {instructions} lines of instructions")  # noqa: T201


if __name__ == "__main__":
    main()
