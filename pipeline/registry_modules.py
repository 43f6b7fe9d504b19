"""Modules that register a params section; imported so that the whole params file can be checked."""
from . import datasets  # noqa: F401
from . import retrieve  # noqa: F401
