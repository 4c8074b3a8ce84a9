"""simulate layer."""

__all__: list[str] = []
