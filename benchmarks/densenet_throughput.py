"""DenseNet-121 training throughput at 224 px: the shipped train step vs PyTorch (torchvision).

  python benchmarks/densenet_throughput.py [--batch=8] [--steps=5] [--size=224] \
      [--torch_python=/tmp/refenv/bin/python] [--out=benchmarks/raw/2026-12-05_densenet]

What is timed, on whatever device JAX finds (named in the output):
  * jax_step: `classification.trainer.make_train_step` exactly as the chest X-ray job builds it
    (configs/chestxray_assemble.py:D0+D1 with image_size=224: DenseNet-121 at full size, 1 input
    channel, 7 sigmoid outputs, masked BCE, on-device translate augmentation, Adam(W) with
    clipping), jitted with the state donated, on random uint8 images with random known masks;
    compile time apart; `--semi` adds the semi-supervised step (two views per image).
  * torch_step (the baseline, same run, same machine): torchvision's densenet121 (conv0 swapped
    for 1 input channel, 7 outputs), masked BCE, torch.optim.Adam, float32, run by
    `--torch_python` (a throwaway venv with torch; never a dependency of the project), in NCHW
    and in channels_last.
Both sides: float32, the same batch and image size, the same number of timed steps after two
warm-up steps; the JAX step is timed again after the baseline (the machine is shared: the two
JAX timings bracket the baseline). Writes result.json (and the log) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax import atomic, sharding
from dassemble_jax.classification import experiments, trainer

TORCH_SCRIPT = r"""
import json, sys, time, torch, torchvision
batch, size, steps, classes, fmt = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                    int(sys.argv[4]), sys.argv[5])
torch.manual_seed(0)
model = torchvision.models.densenet121(num_classes=classes)
model.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
params = sum(p.numel() for p in model.parameters())
x = torch.rand(batch, 1, size, size)
y = (torch.rand(batch, classes) < 0.3).float()
known = (torch.rand(batch, classes) < 0.6).float()
if fmt == "channels_last":
  model = model.to(memory_format=torch.channels_last)
  x = x.contiguous(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters(), lr=2e-4)
model.train()
def step():
  opt.zero_grad(set_to_none=True)
  z = model(x)
  loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
          * known).sum() / known.sum().clamp(min=1)
  loss.backward()
  opt.step()
  return loss.item()
for _ in range(2):
  step()
t0 = time.perf_counter()
for _ in range(steps):
  step()
dt = time.perf_counter() - t0
print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                  "threads": torch.get_num_threads(), "params": params, "format": fmt,
                  "seconds_per_step": dt / steps, "images_per_s": batch * steps / dt}))
"""


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class JaxStep:
  """The shipped train step, compiled once; `time(steps)` -> images/s on random data."""

  def __init__(self, config, batch: int, size: int):
    num_classes = len(config.data.label_space)
    mesh = sharding.make_mesh()
    tx = trainer.build_optimizer(config, 1000)
    self.state, train_def, eval_def = trainer.init_state(config, num_classes, 1, tx, mesh)
    step = jax.jit(trainer.make_train_step(config, train_def, tx, mesh, eval_def=eval_def),
                   donate_argnums=0)
    rng = np.random.default_rng(0)
    data = {"image": rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8),
            "targets": (rng.random((batch, num_classes)) < 0.3).astype(np.float32),
            "known": (rng.random((batch, num_classes)) < 0.6).astype(np.float32)}
    self.data = sharding.put_batch(data, mesh, batch)
    self.batch = batch
    t0 = time.perf_counter()
    self.step = step.lower(self.state, self.data).compile()
    self.compile_s = time.perf_counter() - t0
    self.params = sum(int(x.size) for x in jax.tree.leaves(self.state["params"]))

  def time(self, steps: int) -> dict:
    for _ in range(2):  # warm-up
      self.state, m = self.step(self.state, self.data)
    jax.block_until_ready(self.state)
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, m = self.step(self.state, self.data)
    jax.block_until_ready((self.state, m))
    dt = time.perf_counter() - t0
    return {"compile_s": round(self.compile_s, 2), "seconds_per_step": dt / steps,
            "images_per_s": self.batch * steps / dt, "params": self.params,
            "loss_finite": bool(np.isfinite(float(m["loss"])))}


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--semi", action="store_true", help="also time the semi-supervised step")
  ap.add_argument("--torch_python", default="/tmp/refenv/bin/python")
  ap.add_argument("--out", default="benchmarks/raw/2026-12-05_densenet")
  a = ap.parse_args()

  config = experiments.chestxray_assemble("D0+D1")
  config.data.image_size = a.size
  config.compute_dtype = a.dtype
  config.batch_size = a.batch
  classes = len(config.data.label_space)
  result = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
            "platform": jax.default_backend(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
            "jax": jax.__version__, "batch": a.batch, "image": [a.size, a.size, 1],
            "classes": classes, "dtype": a.dtype, "timed_steps": a.steps,
            "command": " ".join(["python"] + sys.argv)}
  log(f"JAX step on {result['device']}: DenseNet-121, batch {a.batch}, {a.size} px")
  jax_step = JaxStep(config, a.batch, a.size)
  result["jax_step"] = jax_step.time(a.steps)
  log(f"jax_step: {result['jax_step']}")
  result["torch_step"] = {}
  if pathlib.Path(a.torch_python).exists():
    for fmt in ("nchw", "channels_last"):
      out = subprocess.run([a.torch_python, "-c", TORCH_SCRIPT, str(a.batch), str(a.size),
                            str(a.steps), str(classes), fmt],
                           capture_output=True, text=True, check=False)
      if out.returncode != 0:
        result["torch_step"][fmt] = {"error": out.stderr.strip()[-500:]}
      else:
        result["torch_step"][fmt] = json.loads(out.stdout.strip().splitlines()[-1])
      log(f"torch_step {fmt}: {result['torch_step'][fmt]}")
  else:
    log(f"no baseline interpreter at {a.torch_python}; make one: python3 -m venv /tmp/refenv "
        "&& /tmp/refenv/bin/pip install torch torchvision")
  result["jax_step_again"] = jax_step.time(a.steps)  # the same compiled step, after the baseline
  log(f"jax_step again: {result['jax_step_again']}")
  if a.semi:
    semi = experiments.chestxray_assemble("semi")
    semi.data.image_size, semi.compute_dtype, semi.batch_size = a.size, a.dtype, a.batch
    result["jax_semi_step"] = JaxStep(semi, a.batch, a.size).time(a.steps)
    log(f"jax_semi_step: {result['jax_semi_step']}")
  jax_rate = max(result["jax_step"]["images_per_s"], result["jax_step_again"]["images_per_s"])
  for fmt, r in result["torch_step"].items():
    if "images_per_s" in r:
      result[f"ratio_jax_over_torch_{fmt}"] = jax_rate / r["images_per_s"]
  result["load_average_end"] = os.getloadavg()
  out = pathlib.Path(a.out)
  atomic.write_json(out / "result.json", result, indent=2)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  jnp.zeros(())  # initialise the backend before timing anything
  sys.exit(main())
