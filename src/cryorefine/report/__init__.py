"""report layer."""

__all__: list[str] = []
