"""Placeholder: filled by the losses work."""

__all__: list[str] = []
