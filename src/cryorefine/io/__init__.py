"""io layer."""

__all__: list[str] = []
