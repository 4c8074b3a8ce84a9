"""parallel layer."""

__all__: list[str] = []
