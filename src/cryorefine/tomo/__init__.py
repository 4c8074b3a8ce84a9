"""tomo layer."""

__all__: list[str] = []
