"""Command line: argument parsing only; each command is a thin call into the layers."""

__all__: list[str] = []
