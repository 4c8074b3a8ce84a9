"""What reading the particles costs per batch: files, device preparation, and a host cache.

On the tutorial-shaped data (one file per pseudo-subtomogram and one per CTF volume),
for ``--batches`` batches of ``--batch_size`` particles:

- ``files``: ``io.read_images`` of the batch's image and CTF files into pinned buffers
  (``READER_THREADS`` threads), the host's seconds;
- ``batches``: ``tomo.particle_batches`` whole (files, copies, transforms, CTF volumes,
  finite checks), each batch waited for;
- ``cache``: the same raw arrays taken from one pinned host tensor per kind (a cache
  made once), rows gathered, copied to the device and prepared as ``particle_batches``
  does, each batch waited for.

Prints milliseconds per batch and per particle, writes the same as JSON.

    python3 bench/read_batches_bench.py --particles SIM/particles.star --gpu
"""

import argparse
import json
import sys
import time

import numpy as np
import torch

from cryorefine.fourier.conventions import to_fourier
from cryorefine.fourier.ctf import ctf_volume_to_half_complex
from cryorefine.io import image_stacks, load_particles
from cryorefine.io.image_stacks import read_images, stored_image_layout
from cryorefine.tomo.particle_batches import finite_particles, particle_batches


def _pinned_buffer(paths: list, device: torch.device) -> torch.Tensor:
    shape, stored = stored_image_layout(paths[0], 0)
    dtype = torch.float16 if stored == np.float16 else torch.float32
    return torch.empty((len(paths), *shape), dtype=dtype, pin_memory=device.type == "cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", required=True)
    parser.add_argument("--batch_size", type=int, default=134)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[4])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", default="read_batches_bench.json")
    args = parser.parse_args()
    device = torch.device("cuda" if args.gpu else "cpu")
    particles = load_particles(args.particles)
    n = min(len(particles), args.batch_size * args.batches)
    rows = np.arange(n)
    chunks = [rows[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    images, ctfs = particles.image_paths(), particles.ctf_image_paths()
    sync = torch.cuda.synchronize if args.gpu else (lambda: None)
    results: dict[str, float] = {}
    for threads in args.threads:
        image_stacks.READER_THREADS = threads
        image_stacks._reader_pool.cache_clear()
        start = time.perf_counter()
        for chunk in chunks:
            for paths in ([images[i] for i in chunk], [ctfs[i] for i in chunk]):
                buffer = _pinned_buffer(paths, device)
                read_images(paths, np.zeros(len(paths), dtype=np.int64), out=buffer.numpy())
        results[f"files_{threads}_threads"] = time.perf_counter() - start
    start = time.perf_counter()
    for batch in particle_batches(particles, batch_size=args.batch_size, device=device, rows=rows):
        batch.finite.cpu()
    sync()
    results["batches"] = time.perf_counter() - start
    # a host cache: the raw stored arrays of the first n particles, pinned, made once
    made = time.perf_counter()
    cache = []
    for paths in (images[:n], ctfs[:n]):
        buffer = _pinned_buffer(paths, device)
        read_images(paths, np.zeros(len(paths), dtype=np.int64), out=buffer.numpy())
        cache.append(buffer)
    results["cache_made"] = time.perf_counter() - made
    box = cache[0].shape[-1]
    start = time.perf_counter()
    for chunk in chunks:  # rows in another order, as local searches take them
        index = torch.as_tensor(chunk[::-1].copy())
        image = cache[0].index_select(0, index).pin_memory() if args.gpu else cache[0][index]
        ctf = cache[1].index_select(0, index).pin_memory() if args.gpu else cache[1][index]
        data_ft = to_fourier(image.to(device, non_blocking=True).float(), 3)
        weight, _ = ctf_volume_to_half_complex(
            ctf.to(device, non_blocking=True).float(),
            box_size=box,
            ctf_premultiplied=particles.ctf_premultiplied,
        )
        torch.stack([finite_particles(data_ft), finite_particles(weight)]).cpu()
    sync()
    results["cache_gathered"] = time.perf_counter() - start
    start = time.perf_counter()
    for chunk in chunks:  # contiguous rows: slices of the pinned cache, no host copy
        lo, hi = int(chunk[0]), int(chunk[-1]) + 1
        data_ft = to_fourier(cache[0][lo:hi].to(device, non_blocking=True).float(), 3)
        weight, _ = ctf_volume_to_half_complex(
            cache[1][lo:hi].to(device, non_blocking=True).float(), box_size=box,
            ctf_premultiplied=particles.ctf_premultiplied,
        )  # fmt: skip
        torch.stack([finite_particles(data_ft), finite_particles(weight)]).cpu()
    sync()
    results["cache_sliced"] = time.perf_counter() - start
    lines = [f"{n} particles in {len(chunks)} batches of {args.batch_size}, "
             f"cache {sum(c.numel() * c.element_size() for c in cache) / 2**30:.2f} GiB",
             "route | ms per batch | µs per particle"]  # fmt: skip
    lines += [f"{name} | {seconds / len(chunks) * 1e3:.1f} | {seconds / n * 1e6:.0f}"
              for name, seconds in results.items()]  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    with open(args.out, "w") as out:
        json.dump({"particles": n, "batch_size": args.batch_size, "seconds": results}, out,
                  indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
