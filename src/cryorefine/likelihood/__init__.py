"""likelihood layer."""

__all__: list[str] = []
