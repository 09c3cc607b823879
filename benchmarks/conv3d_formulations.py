"""Ways to run a float32 3x3x3 convolution on the CPU, timed alternately in one run.

  python benchmarks/conv3d_formulations.py [--cases=64:32:64,64:64:64,32:128:128] [--repeats=3]

The candidates for models/onednn_conv.py's switch (issue 16): XLA's own convolution; four
rewrites of it into operations XLA:CPU might run faster (depth neighbours stacked on channels
then a 2D convolution; depth and height neighbours stacked then a 1D convolution; a full 27-tap
im2col then one matmul; 27 shifted matmuls summed); and the oneDNN FFI call. Each case is
S:Cin:Cout (batch 1, S^3 voxels, 'SAME' padding); forward and forward + both gradients. Every
candidate is checked against XLA's result first. One line per candidate and case: median time,
GFLOP/s (2 * S^3 * 27 * Cin * Cout, x3 with the gradients) and the speed-up over XLA.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dassemble_jax.models import onednn_conv

DN3 = ("NDHWC", "DHWIO", "NDHWC")


def xla(x, w):
  return lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=DN3)


def _conv2d(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depth_stacked_2d(x, w):
  """The three depth neighbours on channels (3 Cin), then a 3x3 2D convolution per slice."""
  n, d, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
  stacked = jnp.concatenate([xp[:, k:k + d] for k in range(3)], axis=-1)
  kernel = jnp.transpose(w, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, -1)
  return _conv2d(stacked.reshape(n * d, h, wd, 3 * c), kernel).reshape(n, d, h, wd, -1)


def depth_height_stacked_1d(x, w):
  """Nine (depth, height) neighbours on channels (9 Cin), then a 1x3 convolution."""
  n, d, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
  stacked = jnp.concatenate([xp[:, a:a + d, b:b + h] for a in range(3) for b in range(3)], -1)
  kernel = w.reshape(9, 3, c, -1).transpose(1, 0, 2, 3).reshape(1, 3, 9 * c, -1)
  return _conv2d(stacked.reshape(n * d, h, wd, 9 * c), kernel).reshape(n, d, h, wd, -1)


def _shifts(x):
  d, h, wd = x.shape[1:4]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
  return [xp[:, a:a + d, b:b + h, c:c + wd] for a in range(3) for b in range(3) for c in range(3)]


def im2col_matmul(x, w):
  """All 27 neighbours on channels (27 Cin), then one matmul."""
  cols = jnp.concatenate(_shifts(x), axis=-1)
  return (cols.reshape(-1, cols.shape[-1]) @ w.reshape(-1, w.shape[-1])).reshape(
      *x.shape[:4], -1)


def shifted_matmuls(x, w):
  """27 matmuls of shifted copies, summed."""
  taps = w.reshape(27, *w.shape[3:])
  return sum(jnp.einsum("ndhwi,io->ndhwo", s, taps[i]) for i, s in enumerate(_shifts(x)))


def onednn(x, w):
  return onednn_conv.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=DN3)


CANDIDATES = {"xla": xla, "depth_stacked_2d": depth_stacked_2d,
              "depth_height_stacked_1d": depth_height_stacked_1d,
              "im2col_matmul": im2col_matmul, "shifted_matmuls": shifted_matmuls,
              "onednn_ffi": onednn}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", default="64:32:64,64:64:64,32:128:128,16:256:256")
  p.add_argument("--candidates", default=",".join(CANDIDATES))
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind}, {jax.device_count()} device(s); "
        f"oneDNN available: {onednn_conv.available()}", flush=True)
  for case in a.cases.split(","):
    s, cin, cout = map(int, case.split(":"))
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (1, s, s, s, cin))
    w = jax.random.normal(kw, (3, 3, 3, cin, cout)) * 0.05
    flops = 2 * s**3 * 27 * cin * cout
    fns = {}
    for name in a.candidates.split(","):
      f = CANDIDATES[name]
      fwd = jax.jit(f)
      grad = jax.jit(jax.value_and_grad(lambda x, w, f=f: jnp.mean(f(x, w) ** 2), (0, 1)))
      fns[name] = {"forward": fwd, "forward+backward": grad}
    want = np.asarray(fns["xla"]["forward"](x, w)) if "xla" in fns else None
    for name, pair in fns.items():
      got = pair["forward"](x, w)
      if want is not None:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
      jax.block_until_ready(pair["forward+backward"](x, w))
    times = {}
    for _ in range(a.repeats):  # alternate candidates within each round
      for name, pair in fns.items():
        for kind, fn in pair.items():
          t = time.perf_counter()
          jax.block_until_ready(fn(x, w))
          times.setdefault((name, kind), []).append(time.perf_counter() - t)
    for (name, kind), ts in times.items():
      med = statistics.median(ts)
      base = statistics.median(times[("xla", kind)]) if "xla" in fns else float("nan")
      mult = 1 if kind == "forward" else 3
      print(f"{s}^3 {cin}->{cout} {name:24s} {kind:16s} {med * 1e3:9.1f} ms "
            f"{mult * flops / med / 1e9:6.1f} GFLOP/s  x{base / med:.2f} vs xla", flush=True)


if __name__ == "__main__":
  main()
