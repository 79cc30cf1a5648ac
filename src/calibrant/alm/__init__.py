"""Augmented-Lagrangian machinery: constraints, penalties, update rules and multiplier state."""
