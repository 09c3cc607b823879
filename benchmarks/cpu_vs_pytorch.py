"""This project against PyTorch / MONAI on the CPU: the same networks, timed alternately in one run.

  pip install -e '.[peer]' --extra-index-url https://download.pytorch.org/whl/cpu
  python benchmarks/cpu_vs_pytorch.py --out=benchmarks/raw/DATE_cpu_vs_pytorch [--rows=...]

Rows (float32, batch 1, AdamW for the training steps):
  conv      one 3x3x3 convolution 64 -> 64 channels at 64^3, forward + both gradients
  unet64    the anchor's U-Net (19.07 M, BatchNorm) + a 1x1x1 conv to 32 classes + sigmoid BCE,
            one training step at 64^3 (PyTorch: the anchor's layer table, tests/models/
            make_anchor_reference.py; ours: models/unet3d.py)
  unet96    the same at 96^3
  swin64    Swin UNETR (62.19 M; MONAI's SwinUNETR vs models/swin_unetr.py) + 1x1x1 to 32, 64^3
  sliding   sliding-window prediction of a 160 x 160 x 96 volume, 64^3 windows, overlap 0.5,
            Gaussian blending, one window per call, the U-Net + 1x1x1 to 32 + sigmoid
            (MONAI's sliding_window_inference vs segmentation/sliding_window.py)

Each row warms every side up once (compilation for JAX), then runs `--repeats` rounds; each
round times PyTorch, ours, then (for the rows in --xla_rows) ours with XLA's own convolution
(the path before models/onednn_conv.py: DASSEMBLE_CPU_CONV=xla), one after the other, so load
changes hit all sides alike. Reports medians, GFLOP/s (convolution FLOPs counted from the layer
table: 2 * voxels * k^3 * Cin * Cout, x3 for a training step) and `ratio` = PyTorch time / our
time (> 1: we are faster). One JSON line per row on stdout and in OUT/rows.jsonl, the machine
in OUT/machine.json, a table in OUT/table.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dassemble_jax.models import onednn_conv
from dassemble_jax.models.swin_unetr import SwinUNETR
from dassemble_jax.models.unet3d import UNet3D
from dassemble_jax.segmentation.sliding_window import sliding_window_inference

REPO = pathlib.Path(__file__).resolve().parent.parent
CLASSES = 32


@contextlib.contextmanager
def xla_convolutions():
  """Traces inside use XLA's convolution (what DASSEMBLE_CPU_CONV=xla gives a process)."""
  saved = onednn_conv.available
  onednn_conv.available = lambda: False
  try:
    yield
  finally:
    onednn_conv.available = saved


def unet_flops(size: int, b: int = 32) -> float:
  """Forward FLOPs of the anchor's U-Net + 1x1x1 head at size^3, from its layer table."""
  v = lambda level: (size // 2**level) ** 3
  conv = lambda level, cin, cout, k=3: 2 * v(level) * k**3 * cin * cout
  f = conv(0, 1, b) + conv(0, b, 2 * b)
  f += conv(1, 2 * b, 2 * b) + conv(1, 2 * b, 4 * b)
  f += conv(2, 4 * b, 4 * b) + conv(2, 4 * b, 8 * b)
  f += conv(3, 8 * b, 8 * b) + conv(3, 8 * b, 16 * b)
  for level, cin, skip, out in ((2, 16 * b, 8 * b, 8 * b), (1, 8 * b, 4 * b, 4 * b),
                                (0, 4 * b, 2 * b, 2 * b)):
    f += 2 * v(level) * cin * cin                      # 2x2x2 stride-2 upsampling
    f += conv(level, cin + skip, out) + conv(level, out, out)
  return f + conv(0, 2 * b, CLASSES, k=1)


def median_time(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


# ---------------------------------------------------------------------------------------------
# Our side.

class Segmenter(nnx.Module):
  def __init__(self, backbone: str, rngs: nnx.Rngs):
    if backbone == "unet":
      self.backbone = UNet3D(1, base_channels=32, rngs=rngs)
    else:
      self.backbone = SwinUNETR(1, feature_size=48, rngs=rngs)
    self.head = nnx.Conv(self.backbone.out_channels if backbone == "unet" else 48, CLASSES,
                         (1, 1, 1), rngs=rngs,
                         conv_general_dilated=onednn_conv.conv_general_dilated)

  def __call__(self, x):
    return self.head(self.backbone(x)[1])


def jax_train_step(backbone: str, size: int):
  model = Segmenter(backbone, nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (1, size, size, size, 1))
  y = (jax.random.uniform(jax.random.key(2), (1, size, size, size, CLASSES)) > 0.5)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.sigmoid_binary_cross_entropy(model(x), y.astype(jnp.float32)).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  return lambda: float(step(model, optimizer, x, y))


def jax_conv(size: int, ch: int):
  x = jax.random.normal(jax.random.key(1), (1, size, size, size, ch))
  w = jax.random.normal(jax.random.key(2), (3, 3, 3, ch, ch)) * 0.02

  @jax.jit
  def fwd_bwd(x, w):
    def loss(x, w):
      y = onednn_conv.conv_general_dilated(x, w, (1, 1, 1), "SAME",
                                           dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
      return jnp.mean(y * y)
    return jax.value_and_grad(loss, argnums=(0, 1))(x, w)

  return lambda: jax.block_until_ready(fwd_bwd(x, w))


def jax_sliding(shape, window):
  model = Segmenter("unet", nnx.Rngs(0))
  model.eval()
  graph, state = nnx.split(model)

  def apply(state, windows):
    return nnx.merge(graph, state)(windows)

  volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  return lambda: np.asarray(sliding_window_inference(
      apply, volume, window=window, params=state, overlap=0.5, sw_batch_size=1,
      output="probs"))


# ---------------------------------------------------------------------------------------------
# PyTorch side.

def torch_modules():
  import torch
  sys.path.insert(0, str(REPO / "tests" / "models"))
  import make_anchor_reference as ref  # the anchor's U-Net; MONAI's SwinUNETR
  torch.set_num_threads(os.cpu_count())
  return torch, ref


def torch_train_step(backbone: str, size: int):
  torch, ref = torch_modules()
  torch.manual_seed(0)
  net = ref.AnchorUNet() if backbone == "unet" else ref.swin_features()
  head = torch.nn.Conv3d(net.dec, CLASSES, 1)
  params = list(net.parameters()) + list(head.parameters())
  opt = torch.optim.AdamW(params, lr=1e-4)
  x = torch.randn(1, 1, size, size, size)
  y = (torch.rand(1, CLASSES, size, size, size) > 0.5).float()
  loss_fn = torch.nn.BCEWithLogitsLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(head(net(x)[1]), y)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


def torch_conv(size: int, ch: int):
  torch, _ = torch_modules()
  x = torch.randn(1, ch, size, size, size, requires_grad=True)
  w = (torch.randn(ch, ch, 3, 3, 3) * 0.02).requires_grad_()

  def fwd_bwd():
    x.grad = w.grad = None
    y = torch.nn.functional.conv3d(x, w, padding=1)
    (y * y).mean().backward()

  return fwd_bwd


def torch_sliding(shape, window):
  torch, ref = torch_modules()
  from monai.inferers import sliding_window_inference as monai_sliding
  torch.manual_seed(0)
  net = ref.AnchorUNet().eval()
  head = torch.nn.Conv3d(net.dec, CLASSES, 1).eval()
  volume = torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))

  def predict():
    with torch.no_grad():
      return monai_sliding(volume[None, None], window, 1,
                           lambda w: torch.sigmoid(head(net(w)[1])), overlap=0.5,
                           mode="gaussian")

  return predict


# ---------------------------------------------------------------------------------------------

def rows_spec():
  sliding_shape, window = (160, 160, 96), (64, 64, 64)
  windows = 4 * 4 * 2
  return {
      "conv": {"work": "one 3x3x3 conv 64->64 at 64^3, forward + backward",
               "ours": lambda: jax_conv(64, 64), "torch": lambda: torch_conv(64, 64),
               "flops": 3 * 2 * 64**3 * 27 * 64 * 64, "items": 1, "unit": "call"},
      "unet64": {"work": "U-Net (19.07 M) train step, batch 1, 64^3, BatchNorm, AdamW",
                 "ours": lambda: jax_train_step("unet", 64),
                 "torch": lambda: torch_train_step("unet", 64),
                 "flops": 3 * unet_flops(64), "items": 1, "unit": "step"},
      "unet96": {"work": "U-Net (19.07 M) train step, batch 1, 96^3, BatchNorm, AdamW",
                 "ours": lambda: jax_train_step("unet", 96),
                 "torch": lambda: torch_train_step("unet", 96),
                 "flops": 3 * unet_flops(96), "items": 1, "unit": "step"},
      "swin64": {"work": "Swin UNETR (62.19 M) train step, batch 1, 64^3, AdamW",
                 "ours": lambda: jax_train_step("swin", 64),
                 "torch": lambda: torch_train_step("swin", 64), "flops": None, "items": 1,
                 "unit": "step"},
      "sliding": {"work": ("sliding window, 160 x 160 x 96, 64^3 windows, overlap 0.5, "
                           "U-Net + 1x1x1 to 32"),
                  "ours": lambda: jax_sliding(sliding_shape, window),
                  "torch": lambda: torch_sliding(sliding_shape, window),
                  "flops": windows * unet_flops(64), "items": windows, "unit": "window"},
  }


def machine() -> dict:
  import torch
  with open("/proc/cpuinfo") as f:
    model = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), platform.processor())
  return {"cpu": model, "cores": os.cpu_count(), "jax": jax.__version__,
          "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "onednn_conv": onednn_conv.available(), "platform": platform.platform(),
          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run_row(name: str, spec: dict, repeats: int, with_xla: bool) -> dict:
  sides = {"torch": spec["torch"](), "ours": spec["ours"]()}
  if with_xla:
    with xla_convolutions():
      sides["xla"] = spec["ours"]()
  warmup = {}
  for side, fn in sides.items():
    with xla_convolutions() if side == "xla" else contextlib.nullcontext():
      warmup[side] = median_time(fn, 1)[0]   # JAX: tracing + compilation + one run
  times = {side: [] for side in sides}
  for _ in range(repeats):
    for side, fn in sides.items():
      times[side] += median_time(fn, 1)
  out = {"row": name, "work": spec["work"], "repeats": repeats, "load_avg": os.getloadavg()[0],
         "warmup_s": warmup}
  for side, ts in times.items():
    med = statistics.median(ts)
    out[f"{side}_s"] = med
    out[f"{side}_all_s"] = ts
    out[f"{side}_{spec['unit']}s_per_s"] = spec["items"] / med
    if spec["flops"]:
      out[f"{side}_gflops"] = spec["flops"] / med / 1e9
  out["ratio"] = out["torch_s"] / out["ours_s"]
  if with_xla:
    out["speedup_over_xla"] = out["xla_s"] / out["ours_s"]
  return out


def _gflops(row: dict, side: str) -> str:
  return f" ({row[side + '_gflops']:.0f} GFLOP/s)" if f"{side}_gflops" in row else ""


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", default="conv,unet64,unet96,swin64,sliding")
  p.add_argument("--xla_rows", default="conv,unet64,swin64",
                 help="rows that also time XLA's own convolution (slow: 2-3x)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", required=True)
  a = p.parse_args()
  out = pathlib.Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  info = machine()
  (out / "machine.json").write_text(json.dumps(info, indent=1) + "\n")
  print(json.dumps(info), flush=True)
  specs = rows_spec()
  results = []
  for name in a.rows.split(","):
    row = run_row(name, specs[name], a.repeats, name in a.xla_rows.split(","))
    results.append(row)
    print(json.dumps(row), flush=True)
    with open(out / "rows.jsonl", "a") as f:
      f.write(json.dumps(row) + "\n")
  lines = [("| work | ours (JAX, oneDNN conv) | PyTorch / MONAI | ours with XLA conv | "
            "ratio (PyTorch time / ours) |"), "|---|---|---|---|---|"]
  for r in results:
    xla = f"{r['xla_s']:.2f} s{_gflops(r, 'xla')}" if "xla_s" in r else "not run"
    lines.append(f"| {r['work']} | {r['ours_s']:.2f} s{_gflops(r, 'ours')} | {r['torch_s']:.2f} s"
                 f"{_gflops(r, 'torch')} | {xla} | {r['ratio']:.2f} |")
  (out / "table.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
