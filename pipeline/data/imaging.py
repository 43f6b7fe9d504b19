"""Image normalisation shared by every source: RGBA composited on white, fitted into a square."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image

from pipeline.io.shards import encode_png

# Largest image decoded (pixels). Open Clip Art has drawings exported huge: 16 between 40 and 231
# Mpx (milk, bread, apple, ... at 10.5k x 16k) are real pictures, decoded (~3 s and ~1.3 GB each);
# two stop signs at 21k x 30k (623 Mpx, 2.5 GB, 15 s each) are skipped and reported. PIL's own
# decompression-bomb limit (179 Mpx, a warning from 89 Mpx) is replaced by this one.
MAX_PIXELS = 250_000_000


def to_square_rgb(img: Image.Image, size: int) -> Image.Image:
    """Composite on white, fit the longer side to `size` (aspect kept) and centre on a white square."""
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        img = img.resize((nw, nh), resample, reducing_gap=3.0 if scale < 1 else None)
        if (nw, nh) != (size, size):
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
            img = canvas
    return img


def load_raster(path: Path, size: int) -> bytes:
    """Decode a raster file to a `size` x `size` RGB PNG; raises on a corrupt or unreadable file."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # replaced by the explicit check below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} pixels exceeds {MAX_PIXELS}")
        img.draft("RGB", (size, size))  # a no-op for PNG, a big saving for JPEG
        img.load()
        factor = min(img.size) // (2 * size)
        if factor >= 2:  # shrink huge images by a fast box filter first (alpha-aware for RGBA)
            if img.mode not in ("RGB", "RGBA", "L"):
                img = img.convert("RGBA")
            img = img.reduce(factor)
        return encode_png(to_square_rgb(img, size))


def render_svg(path: Path, size: int) -> bytes:
    """Render an SVG once at `size` px with cairosvg; returns a `size` x `size` RGB PNG."""
    import cairosvg  # imported lazily: it loads libcairo

    try:
        png = cairosvg.svg2png(url=str(path), output_width=size, output_height=size)
    except Exception as e:  # XML entities (Illustrator exports) need cairosvg's unsafe parser
        if type(e).__name__ != "EntitiesForbidden":
            raise
        png = cairosvg.svg2png(url=str(path), output_width=size, output_height=size, unsafe=True)
    with Image.open(io.BytesIO(png)) as img:
        img.load()
        return encode_png(to_square_rgb(img, size))


def load_any(path: Path, size: int) -> bytes:
    if path.suffix.lower() == ".svg":
        return render_svg(path, size)
    return load_raster(path, size)
