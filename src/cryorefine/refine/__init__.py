"""refine layer."""

__all__: list[str] = []
