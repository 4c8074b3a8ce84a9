"""refine layer."""

from cryorefine.refine.rescale import rescale_map, rescaled_size, window_map

__all__: list[str] = ["rescale_map", "rescaled_size", "window_map"]
