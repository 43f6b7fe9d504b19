"""The captioner registry in the timm / open_clip style: `@register_captioner("name")` on a class or
factory, `create_captioner(name, **kwargs)`, `list_captioners()`; and `caption_dataset`, (key, image)
pairs in, one `{"key": key, "captions": [...]}` record per sample out.

Every backend meets the `Captioner` protocol: `caption(images) -> list[list[str]]`, one list of one or
more captions per image, in order. The package's `__init__` imports every backend, which registers it.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from pipeline.core.encode import batched


@runtime_checkable
class Captioner(Protocol):
    """Anything that captions a list of images: one list of >= 1 caption strings per image, in order."""

    def caption(self, images: list[Image.Image]) -> list[list[str]]: ...


_CAPTIONERS: dict[str, Callable[..., Captioner]] = {}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def register_captioner(name: str, *, override: bool = False):
    """Decorator registering a captioner class or factory under `name`.

    The factory is called as `factory(**kwargs)` by `create_captioner(name, **kwargs)` and must
    return a `Captioner`. Registering a *different* object under a taken name raises unless
    `override=True`; re-registering the same definition (a module imported or reloaded twice) is fine.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"captioner name must be a non-empty string without surrounding spaces, got {name!r}")

    def deco(factory: Callable[..., Captioner]) -> Callable[..., Captioner]:
        if not callable(factory):
            raise TypeError(f"register_captioner({name!r}) needs a class or function, got {factory!r}")
        existing = _CAPTIONERS.get(name)
        if (
            existing is not None
            and not override
            and existing is not factory
            and _qualname(existing) != _qualname(factory)
        ):
            raise ValueError(
                f"captioner {name!r} is already registered by {_qualname(existing)}; "
                f"pass override=True to replace it with {_qualname(factory)}"
            )
        _CAPTIONERS[name] = factory
        return factory

    return deco


def list_captioners() -> list[str]:
    """Names of the registered captioners, sorted."""
    return sorted(_CAPTIONERS)


def create_captioner(name: str, **kwargs: Any) -> Captioner:
    """Build the captioner registered under `name` with `kwargs` (see each backend for its options).

    Raises `ValueError` (one line) for an unknown name or an option the backend does not take.
    """
    factory = _CAPTIONERS.get(name)
    if factory is None:
        raise ValueError(
            f"unknown captioner {name!r}; registered: {', '.join(list_captioners()) or '(none)'} "
            "(a backend registers itself with @register_captioner when its module is imported)"
        )
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"captioner {name!r}: {e}") from None
    except ValueError:  # no signature available (some builtins): let the call itself complain
        pass
    return factory(**kwargs)


def caption_dataset(
    captioner: Captioner,
    samples: Iterable[tuple[str, Image.Image]],
    batch_size: int | None = None,
    *,
    total: int | None = None,
    desc: str = "captioning",
    progress: bool = True,
) -> Iterator[dict]:
    """Caption `(key, image)` samples; yield `{"key": key, "captions": [str, ...]}` per sample, in order.

    Samples are streamed: `batch_size` of them (default: the captioner's own `batch_size`, else 16)
    are held in memory at a time and handed to `captioner.caption` together. `total` sizes the tqdm
    bar (taken from `len(samples)` when it has one).
    """
    from tqdm.auto import tqdm

    if batch_size is None:
        batch_size = int(getattr(captioner, "batch_size", 16) or 16)
    if batch_size < 1:
        raise ValueError(f"caption_dataset: batch_size must be >= 1, got {batch_size}")
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)  # type: ignore[arg-type]
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for chunk in batched(samples, batch_size):
            keys = [key for key, _ in chunk]
            captions = captioner.caption([image for _, image in chunk])
            if len(captions) != len(chunk):
                raise RuntimeError(
                    f"captioner {type(captioner).__name__} returned {len(captions)} caption lists "
                    f"for {len(chunk)} images"
                )
            for key, caps in zip(keys, captions):
                if isinstance(caps, str) or not all(isinstance(c, str) for c in caps):
                    raise TypeError(
                        f"captioner {type(captioner).__name__} must return a list of strings per image, "
                        f"got {caps!r} for key {key!r}"
                    )
                yield {"key": key, "captions": list(caps)}
            bar.update(len(chunk))
