"""Dataset loaders for the papers' benchmark formats, registered by name."""
