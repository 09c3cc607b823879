"""Sliding-window inference over a whole volume, with Gaussian importance weighting.

The model sees fixed-size windows; predictions of overlapping windows are averaged with a
Gaussian importance map (sigma = window / 8, as nnU-Net and MONAI) so window borders, where the
network has the least context, count least.

Why it is built this way:
- Windows are batched (`sw_batch_size`) and the last batch is padded with zero-weight copies, so
  every model call has the same shape: one compilation per (model, window, batch) whatever the
  volume size.
- The windows are cut out of the volume on the device (one `dynamic_slice` per window inside the
  jitted step), so only a tiny (n, 3) array of window corners crosses from the host per batch.
- The accumulator (D, H, W, C) float32 is the big buffer (a 512 x 512 x 300 CT with 32 classes is
  10 GB). It lives on the device when it fits and on the host (NumPy) otherwise: the anchor kept
  it on the GPU and ran out of memory on 12 GB cards. `accumulate_on='auto'` decides from an
  estimate and the device's free memory.
- The importance map is a product of 1D Gaussians and the window corners form a Cartesian grid,
  so the sum of weights at every voxel is a product of three 1D sums: no weight volume is stored.

`blend='monai'` reproduces MONAI's `sliding_window_inference(mode='gaussian')`, which the anchor
predicts with (imported checkpoints use it): window starts every int(window * (1 - overlap))
voxels, the last one moved back to end at the border (ours: evenly spread); the 3D Gaussian
(not normalised to 1) clamped at max(its minimum, 1e-3) (ours: each 1D factor floored at 1e-3,
so corners weigh up to 1e-9); the total weight is then not separable and is summed once per
volume on the host.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# apply_fn(params, windows) -> logits: (n, wd, wh, ww, C_in) -> (n, wd, wh, ww, C).
ApplyFn = Callable[[Any, jax.Array], jax.Array]
Accumulate = Literal["device", "host", "auto"]
Blend = Literal["gaussian", "monai"]

# Per-axis floor of the 1D Gaussian (max 1): the 3D weight stays >= 1e-9, far from float32
# underflow, so every voxel has a positive total weight even with a small sigma.
_AXIS_FLOOR = 1e-3


def gaussian_1d(size: int, sigma_scale: float = 0.125) -> np.ndarray:
  """(size,) float64 Gaussian centred on the window, sigma = sigma_scale * size, max 1."""
  sigma = max(sigma_scale * size, 1e-6)
  t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  return np.maximum(np.exp(-0.5 * (t / sigma) ** 2), _AXIS_FLOOR)


def importance_map(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
  """(wd, wh, ww) float32 Gaussian importance map, the outer product of three 1D Gaussians."""
  gd, gh, gw = (gaussian_1d(w, sigma_scale) for w in window)
  return (gd[:, None, None] * gh[None, :, None] * gw[None, None, :]).astype(np.float32)


def window_starts(size: int, window: int, overlap: float) -> np.ndarray:
  """Window start indices along one axis: evenly spaced, first at 0, last at size - window.

  The step is at most window * (1 - overlap); windows are spread evenly (nnU-Net's rule) rather
  than leaving one short overlap at the end.
  """
  if size < window:
    raise ValueError(f"axis of size {size} is smaller than the window {window}; pad first")
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"overlap must be in [0, 1), got {overlap}")
  step = max(1, int(window * (1.0 - overlap)))
  n = math.ceil((size - window) / step) + 1
  if n == 1:
    return np.zeros((1,), np.int32)
  return np.round(np.linspace(0, size - window, n)).astype(np.int32)


def monai_window_starts(size: int, window: int, overlap: float) -> np.ndarray:
  """MONAI's window starts along one axis (`_get_scan_interval` + `dense_patch_slices`)."""
  if size < window:
    raise ValueError(f"axis of size {size} is smaller than the window {window}; pad first")
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"overlap must be in [0, 1), got {overlap}")
  interval = window if size == window else max(1, int(window * (1.0 - overlap)))
  n = next(d for d in range(math.ceil(size / interval)) if d * interval + window >= size) + 1
  return np.array([min(d * interval, size - window) for d in range(n)], np.int32)


def monai_importance_map(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
  """MONAI's `compute_importance_map(mode='gaussian')`, in its float32 arithmetic."""
  out = None
  for w in window:
    x = np.arange(-(w - 1) / 2.0, (w - 1) / 2.0 + 1, dtype=np.float32)
    g = np.exp(x**2 / np.float32(-2 * (w * sigma_scale) ** 2)).astype(np.float32)
    out = g if out is None else out[..., None] * g
  return np.maximum(out, max(float(out.min()), 1e-3)).astype(np.float32)


def _axis_weight_sum(size: int, window: int, starts: np.ndarray, sigma_scale: float) -> np.ndarray:
  """(size,) float64: sum over windows of the 1D Gaussian placed at each start."""
  g = gaussian_1d(window, sigma_scale)
  total = np.zeros((size,), np.float64)
  for s in starts:
    total[s:s + window] += g
  return total


def estimate_accumulator_bytes(shape: Sequence[int], num_classes: int, in_channels: int = 1) -> int:
  """Bytes that device accumulation keeps resident: accumulator + normalised output + volume."""
  voxels = int(np.prod(shape))
  return 4 * voxels * (2 * num_classes + in_channels)


def choose_accumulator(shape: Sequence[int], num_classes: int, in_channels: int = 1,
                       device: jax.Device | None = None, budget_fraction: float = 0.5,
                       reserve_bytes: int = 0) -> Literal["device", "host"]:
  """'device' if the estimate fits in budget_fraction of the device's free memory, else 'host'.

  `reserve_bytes` is room kept for the model's own activations on a window batch. On the CPU
  backend "device" memory is host memory and the jitted device path is used; a backend that
  reports no memory statistics is treated as too small (host), the safe side.
  """
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return "device"
  stats = device.memory_stats() or {}
  limit = stats.get("bytes_limit")
  if not limit:
    return "host"
  free = limit - stats.get("bytes_in_use", 0) - reserve_bytes
  need = estimate_accumulator_bytes(shape, num_classes, in_channels)
  return "device" if need <= budget_fraction * free else "host"


# Three jitted pieces, not one: the model call sees only (n, window) shapes, so it compiles once per
# (model, window, batch size) and a folder of scans of different sizes reuses it; cutting windows
# out and adding them back depend on the volume's shape but are cheap to compile.


@functools.partial(jax.jit, static_argnames=("window",))
def _extract(volume, starts, *, window):
  """(D, H, W, C_in) volume, (n, 3) corners -> (n, wd, wh, ww, C_in) windows."""
  cin = volume.shape[-1]
  return jax.vmap(
      lambda s: lax.dynamic_slice(volume, (s[0], s[1], s[2], 0), tuple(window) + (cin,)))(starts)


@functools.partial(jax.jit, static_argnames=("apply_fn", "output"))
def _predict_windows(windows, valid, importance, params, *, apply_fn, output):
  """Model on a window batch, weighted: -> (n, wd, wh, ww, C) float32."""
  logits = apply_fn(params, windows).astype(jnp.float32)
  values = jax.nn.sigmoid(logits) if output == "probs" else logits
  # valid: (n,), 0 for the padding windows of the last batch.
  weights = importance[None] * valid[:, None, None, None]  # (n, wd, wh, ww)
  return values * weights[..., None]


@functools.partial(jax.jit, donate_argnames=("acc",))
def _accumulate(acc, values, starts):
  """Adds a weighted window batch into the device accumulator (donated: updated in place)."""

  # Windows of one batch overlap, so they are added one after another, not scattered at once.
  def add_one(i, acc):
    corner = (starts[i, 0], starts[i, 1], starts[i, 2], 0)
    current = lax.dynamic_slice(acc, corner, values.shape[1:])
    return lax.dynamic_update_slice(acc, current + values[i], corner)

  return lax.fori_loop(0, values.shape[0], add_one, acc)


def _normalise(acc, wd, wh, ww, *, crop):
  out = acc / (wd[:, None, None] * wh[None, :, None] * ww[None, None, :])[..., None]
  return out[crop[0]:crop[0] + crop[3], crop[1]:crop[1] + crop[4], crop[2]:crop[2] + crop[5]]


# Donating the accumulator lets XLA write the result into it, but only when no padding is cropped
# (same shape); a second variant avoids the "donated buffer not usable" warning otherwise.
_normalise_in_place = jax.jit(_normalise, static_argnames=("crop",), donate_argnames=("acc",))
_normalise_cropped = jax.jit(_normalise, static_argnames=("crop",))


@functools.partial(jax.jit, static_argnames=("crop",))
def _normalise_by_total(acc, total, *, crop):
  out = acc / total[..., None]
  return out[crop[0]:crop[0] + crop[3], crop[1]:crop[1] + crop[4], crop[2]:crop[2] + crop[5]]


def sliding_window_inference(
    apply_fn: ApplyFn, volume: np.ndarray | jax.Array, *, window: Sequence[int],
    params: Any = None, overlap: float = 0.5, sw_batch_size: int = 4,
    output: Literal["probs", "logits"] = "probs", accumulate_on: Accumulate = "auto",
    sigma_scale: float = 0.125, pad_value: float = 0.0, device: jax.Device | None = None,
    reserve_bytes: int = 0, blend: Blend = "gaussian") -> np.ndarray | jax.Array:
  """Predicts a whole volume by Gaussian-weighted averaging of overlapping windows.

  Args:
    apply_fn: `apply_fn(params, windows)` maps (n, wd, wh, ww, C_in) to (n, wd, wh, ww, C)
      logits. It must be hashable (a function, not a fresh lambda per call, if you want the
      compiled step reused across volumes): it is a static argument of the jitted step.
    volume: (D, H, W) or (D, H, W, C_in) float.
    window: (wd, wh, ww). Axes smaller than the window are padded with pad_value (centred) and
      the padding is cropped from the result.
    params: any pytree passed to apply_fn as an argument (not baked into the program as
      constants, so new weights do not recompile).
    overlap: fraction of the window shared by neighbours along each axis, in [0, 1).
    sw_batch_size: windows per model call; the last batch is padded to this size.
    output: 'probs' averages sigmoid probabilities, 'logits' averages logits.
    accumulate_on: 'device', 'host' or 'auto' (see choose_accumulator).
    sigma_scale: Gaussian sigma as a fraction of the window.
    device: where the volume and a device accumulator live (default: the first device).
    reserve_bytes: device memory kept free for the model when accumulate_on='auto'.
    blend: 'gaussian' (ours: evenly spread windows, per-axis floored Gaussian) or 'monai'
      (MONAI's window starts and clamped Gaussian; see the module docstring).

  Returns:
    (D, H, W, C) float32: a jax.Array when accumulated on the device, a NumPy array on the host.
  """
  window = tuple(int(w) for w in window)
  if len(window) != 3:
    raise ValueError(f"window must have 3 sizes, got {window}")
  if output not in ("probs", "logits"):
    raise ValueError(f"output must be 'probs' or 'logits', got {output!r}")
  if accumulate_on not in ("device", "host", "auto"):
    raise ValueError(f"accumulate_on must be 'device', 'host' or 'auto', got {accumulate_on!r}")
  if sw_batch_size < 1:
    raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
  if blend not in ("gaussian", "monai"):
    raise ValueError(f"blend must be 'gaussian' or 'monai', got {blend!r}")
  vol = np.asarray(volume, np.float32)
  if vol.ndim == 3:
    vol = vol[..., None]
  if vol.ndim != 4:
    raise ValueError(f"volume must be (D, H, W) or (D, H, W, C_in), got shape {volume.shape}")
  shape = vol.shape[:3]

  # Pad axes smaller than the window, centred (the Gaussian peak stays near the content).
  before = [max(w - s, 0) // 2 for s, w in zip(shape, window)]
  after = [max(w - s, 0) - b for s, w, b in zip(shape, window, before)]
  if any(before) or any(after):
    vol = np.pad(vol, list(zip(before, after)) + [(0, 0)], constant_values=pad_value)
  padded = vol.shape[:3]
  crop = tuple(before) + tuple(shape)

  starts_fn = monai_window_starts if blend == "monai" else window_starts
  axis_starts = [starts_fn(s, w, overlap) for s, w in zip(padded, window)]
  corners = np.stack(np.meshgrid(*axis_starts, indexing="ij"), -1).reshape(-1, 3).astype(np.int32)
  n = corners.shape[0]
  num_batches = -(-n // sw_batch_size)
  pad_n = num_batches * sw_batch_size - n
  # Padding windows repeat the last corner with zero weight: same shapes, no contribution.
  corners = np.concatenate([corners, np.repeat(corners[-1:], pad_n, 0)])
  valid = np.concatenate([np.ones(n, np.float32), np.zeros(pad_n, np.float32)])
  if blend == "monai":
    imp = monai_importance_map(window, sigma_scale)
    total = np.zeros(padded, np.float32)  # not separable: summed once, window by window
    for z, y, x in corners[:n]:
      total[z:z + window[0], y:y + window[1], x:x + window[2]] += imp
  else:
    imp = importance_map(window, sigma_scale)
    axis_sums = [_axis_weight_sum(s, w, st, sigma_scale)
                 for s, w, st in zip(padded, window, axis_starts)]

  device = device or jax.devices()[0]
  vol_dev = jax.device_put(vol, device)
  imp_dev = jax.device_put(imp, device)

  def batch(b):
    sl = slice(b * sw_batch_size, (b + 1) * sw_batch_size)
    return jax.device_put(corners[sl], device), jax.device_put(valid[sl], device)

  def predict(b):
    starts, valid_b = batch(b)
    windows = _extract(vol_dev, starts, window=window)
    return starts, _predict_windows(windows, valid_b, imp_dev, params, apply_fn=apply_fn,
                                    output=output)

  # The first batch gives the number of classes (no separate trace of the model for it).
  first = predict(0)
  num_classes = first[1].shape[-1]
  if first[1].shape[:-1] != (sw_batch_size,) + window:
    raise ValueError(f"apply_fn must keep the window shape: {(sw_batch_size,) + window} in, "
                     f"{first[1].shape} out")
  if accumulate_on == "auto":
    accumulate_on = choose_accumulator(padded, num_classes, vol.shape[-1], device,
                                       reserve_bytes=reserve_bytes)

  if accumulate_on == "device":
    acc = jnp.zeros(padded + (num_classes,), jnp.float32, device=device)
    for b in range(num_batches):
      starts, values = first if b == 0 else predict(b)
      acc = _accumulate(acc, values, starts)
    if blend == "monai":
      return _normalise_by_total(acc, jax.device_put(total, device), crop=crop)
    wd, wh, ww = (jax.device_put(a.astype(np.float32), device) for a in axis_sums)
    normalise = _normalise_in_place if tuple(padded) == tuple(shape) else _normalise_cropped
    return normalise(acc, wd, wh, ww, crop=crop)

  # Host accumulation: the next batch is dispatched before the previous one is pulled back and
  # added, so the device computes while NumPy adds.
  acc = np.zeros(padded + (num_classes,), np.float32)

  def add(values, b):
    values = np.asarray(values)
    for i in range(sw_batch_size):
      k = b * sw_batch_size + i
      if not valid[k]:
        continue
      z, y, x = corners[k]
      acc[z:z + window[0], y:y + window[1], x:x + window[2]] += values[i]

  pending = (first[1], 0)
  for b in range(1, num_batches):
    _, future = predict(b)
    add(*pending)
    pending = (future, b)
  add(*pending)
  if blend != "monai":
    total = (axis_sums[0][:, None, None] * axis_sums[1][None, :, None]
             * axis_sums[2][None, None, :]).astype(np.float32)
  np.divide(acc, total[..., None], out=acc)
  z0, y0, x0, d, h, w = crop
  return acc[z0:z0 + d, y0:y0 + h, x0:x0 + w]
