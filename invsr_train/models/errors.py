"""The one error type of model loading (its own module so every loader can raise it without import cycles)."""
from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be loaded. The message is one line and says what to pass instead."""
