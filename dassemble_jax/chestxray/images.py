"""Chest X-ray image files -> square grayscale uint8 arrays at the training size.

Decode (PNG, JPEG; 8- or 16-bit; grayscale, RGB or palette), centre-crop to a square (the
longer side loses its margins, as TorchXRayVision's XRayCenterCrop), then resize with
anti-aliasing: Pillow's Lanczos filter widens its support by the downscale factor, so a
1024 -> 224 reduction averages over ~4.6 source pixels instead of sampling one (no moire from
ribs or the detector grid). 16-bit images are stretched from their own min..max to 0..255.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from dassemble_jax.data.errors import DataFormatError


def center_square(image: Image.Image) -> Image.Image:
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  return image.crop((left, top, left + side, top + side))


def _to_gray(image: Image.Image) -> Image.Image:
  """'L' (8-bit) or 'F' (float, from 16/32-bit modes) single-channel image."""
  if image.mode in ("L", "F"):
    return image
  if image.mode.startswith("I"):
    arr = np.asarray(image, np.float32)
    if arr.size == 0:
      return Image.fromarray(arr, mode="F")
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(arr.astype(np.float32), mode="F")
  return image.convert("L")


def load(path: str | os.PathLike, size: int, where: str = "") -> np.ndarray:
  """(size, size, 1) uint8 of the image file at `path`; errors start with `where` (or path)."""
  label = where or str(path)
  try:
    with Image.open(path) as image:
      image.load()  # decode now: a truncated file fails here, inside the try
      gray = _to_gray(image)
  except FileNotFoundError:
    raise DataFormatError(f"{label}: image {path} not found") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise DataFormatError(f"{label}: cannot read image {path}: {e}") from e
  if min(gray.size) < 1:
    raise DataFormatError(f"{label}: image {path} is empty ({gray.size})")
  resized = center_square(gray).resize((size, size), Image.Resampling.LANCZOS)
  arr = np.asarray(resized, np.float32)
  return np.clip(np.rint(arr), 0, 255).astype(np.uint8)[..., None]
