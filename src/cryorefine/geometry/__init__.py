"""geometry layer."""

__all__: list[str] = []
