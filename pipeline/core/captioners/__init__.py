"""Image captioners for the text-compensated anchors: the registry and every backend.

Importing this package registers the backends (`nn`, `blip`, `blip2`), as timm's
`models/__init__.py` does; `list_captioners()` names them.
"""
from pipeline.core.captioners import blip, nn  # noqa: F401  (register the backends)
from pipeline.core.captioners.registry import (
                                               Captioner,
                                               caption_dataset,
                                               create_captioner,
                                               list_captioners,
                                               register_captioner,
)

__all__ = ["Captioner", "caption_dataset", "create_captioner", "list_captioners", "register_captioner"]
