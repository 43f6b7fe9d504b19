"""The error a missing model ends in. Apart from models.py, so that the `arf` command can catch it
without importing torch."""


class ModelNotAvailable(RuntimeError):
    """A model or its weights cannot be had offline; the message says what to provide."""
