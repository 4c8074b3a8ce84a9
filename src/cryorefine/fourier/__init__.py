"""fourier layer."""

__all__: list[str] = []
