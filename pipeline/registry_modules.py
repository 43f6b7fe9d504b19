"""Modules that register a params section; imported so that the whole params file can be checked."""
from .datasets import default  # noqa: F401
from . import align, caption, pack, train  # noqa: F401
from . import report, retrieve, wise  # noqa: F401
