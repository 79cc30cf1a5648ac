"""Placeholder: filled by the metrics work."""

__all__: list[str] = []
