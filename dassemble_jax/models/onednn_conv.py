"""3D convolutions through oneDNN on the CPU: the models' convolution, chosen by one switch.

XLA:CPU runs the U-Net's full-resolution, few-channel 3D convolutions at 30-70 GFLOP/s on the
development CPU, where oneDNN's JIT kernels (what PyTorch runs) are about 3x faster
(benchmarks/cpu_conv.md has the measurements, and the alternatives tried inside XLA that lost).
`conv_general_dilated` is a drop-in for `jax.lax.conv_general_dilated` (the models pass it to
`nnx.Conv`): a float32 3D convolution with NDHWC activations, a DHWIO kernel, no dilation and no
groups runs as an XLA FFI call into oneDNN (forward, and a custom VJP whose backward-data and
backward-weights are oneDNN calls too) when the computation runs on the CPU; everything else,
and every other platform, is `lax.conv_general_dilated` unchanged (`lax.platform_dependent`
picks per platform when the program is lowered).

The switch: the environment variable DASSEMBLE_CPU_CONV = 'auto' (default: oneDNN when it can
be built here, else XLA with one warning), 'onednn' (fail if it cannot be built) or 'xla'.
The FFI library is built on first use with the system's C++ compiler against the
`onednn-cpu-gomp` wheel (a dependency on Linux x86-64) into
~/.cache/dassemble_jax/onednn_conv/ (DASSEMBLE_CACHE moves it), once per source and version.

Sharded programs: each call carries a partitioning rule (`custom_partitioning`): it runs on each
device's shard of the batch, the kernel gradient summed across them; other dimensions are
gathered (the models shard only the batch).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

_SOURCE = pathlib.Path(__file__).with_suffix(".cc")
_TARGETS = {"forward": "DassembleConv3dForward", "backward_data": "DassembleConv3dBackwardData",
            "backward_weights": "DassembleConv3dBackwardWeights"}
_CHANNELS_LAST = ("NDHWC", "DHWIO", "NDHWC")


class OneDNNUnavailable(RuntimeError):
  """The oneDNN convolution was requested (DASSEMBLE_CPU_CONV=onednn) but cannot be built."""


def mode() -> str:
  value = os.environ.get("DASSEMBLE_CPU_CONV", "auto").strip().lower()
  if value not in ("auto", "onednn", "xla"):
    raise ValueError(f"DASSEMBLE_CPU_CONV must be auto, onednn or xla, got {value!r}")
  return value


def _wheel_file(dist: str, suffix: str) -> pathlib.Path:
  for f in importlib.metadata.files(dist) or ():
    if str(f).endswith(suffix):
      return pathlib.Path(f.locate()).resolve()
  raise OneDNNUnavailable(f"the {dist} wheel has no {suffix}")


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("DASSEMBLE_CACHE") or pathlib.Path.home() / ".cache" / "dassemble_jax"
  return pathlib.Path(root) / "onednn_conv"


def _build() -> pathlib.Path:
  """Compiles the FFI library once per (source, jaxlib, oneDNN) and returns its path."""
  if sys.platform != "linux" or sysconfig.get_platform().split("-")[-1] != "x86_64":
    raise OneDNNUnavailable("the oneDNN convolution is built for Linux x86-64 only")
  try:
    header = _wheel_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")
    library = _wheel_file("onednn-cpu-gomp", "/libdnnl.so.3")
  except importlib.metadata.PackageNotFoundError as e:
    raise OneDNNUnavailable(f"package {e.name} is not installed") from None
  compiler = shutil.which(os.environ.get("CXX", "g++"))
  if compiler is None:
    raise OneDNNUnavailable("no C++ compiler (g++ or $CXX) to build the oneDNN convolution")
  key = hashlib.sha256(_SOURCE.read_bytes() + jax.__version__.encode()
                       + str(library).encode()).hexdigest()[:16]
  out = _cache_dir() / key / "onednn_conv.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  include = header.parent.parent.parent  # .../include/oneapi/dnnl/dnnl.hpp -> .../include
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = pathlib.Path(tmp) / out.name
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
           f"-I{jax.ffi.include_dir()}", f"-I{include}", "-fopenmp", str(_SOURCE), "-o", str(tmp_out),
           str(library), f"-Wl,-rpath,{library.parent}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise OneDNNUnavailable(f"building {_SOURCE.name} failed: {done.stderr.strip()[-500:]}")
    os.replace(tmp_out, out)  # atomic: a concurrent build of the same key writes the same file
  return out


@functools.cache
def available() -> bool:
  """Whether the oneDNN path is on (per the switch) and registered with XLA."""
  if mode() == "xla":
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build()))
  except (OneDNNUnavailable, OSError) as e:
    if mode() == "onednn":
      raise OneDNNUnavailable(str(e)) from None
    warnings.warn(f"3D convolutions on the CPU use XLA's (slower) kernels: {e}", stacklevel=2)
    return False
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f"dassemble_conv3d_{name}",
                                jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return True


def _ffi(name: str, shape, strides, pads, threads: int = 0):
  attrs = {"threads": np.int64(threads), "strides": np.asarray(strides, np.int64),
           "pad_l": np.asarray([p[0] for p in pads], np.int64),
           "pad_r": np.asarray([p[1] for p in pads], np.int64)}
  call = jax.ffi.ffi_call(f"dassemble_conv3d_{name}", jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method="sequential")
  return lambda a, b: call(a, b, **attrs)


# Each call is batch-parallel: under a mesh it runs on each device's batch shard (the kernel
# replicated), and the kernel gradient is summed over the devices that hold the batch. Every
# other dimension is gathered (`need_replication`), which the models never shard.
_RULES = {"forward": "b d h w c, p q r c o -> b s t u o",
          "backward_data": "b s t u o, p q r c o -> b d h w c",
          "backward_weights": "b d h w c, b s t u o -> p q r c o"}


def _factors_but_batch(rule: str) -> tuple[str, ...]:
  """The rule's factors other than the batch, in order of appearance (Shardy wants them so)."""
  names = rule.replace(",", " ").replace("->", " ").split()
  return tuple(f for f in dict.fromkeys(names) if f != "b")


def _batch_axes(sharding):
  spec = getattr(sharding, "spec", None)
  return spec[0] if spec else None


def _partitioned(name: str):
  def run(a, b, out_shape, strides, pads):
    return _ffi(name, out_shape, strides, pads)(a, b)

  fn = custom_partitioning(run, static_argnums=(2, 3, 4))

  def shardings(mesh, arg_shapes):
    batch = _batch_axes(arg_shapes[0].sharding)
    sharded = NamedSharding(mesh, P(batch))
    replicated = NamedSharding(mesh, P())
    if name == "backward_weights":
      return batch, (sharded, sharded), replicated
    return batch, (sharded, replicated), sharded

  def infer(out_shape, strides, pads, mesh, arg_shapes, result_shape):
    return shardings(mesh, arg_shapes)[2]

  def partition(out_shape, strides, pads, mesh, arg_shapes, result_shape):
    batch, arg_shardings, out_sharding = shardings(mesh, arg_shapes)

    def lower(a, b):
      shape = out_shape if name == "backward_weights" else (a.shape[0], *out_shape[1:])
      # One call per device runs at once: one core each (see `Conv` in the .cc).
      y = _ffi(name, shape, strides, pads, threads=1 if mesh.size > 1 else 0)(a, b)
      return y if name != "backward_weights" or batch is None else lax.psum(y, batch)

    return mesh, lower, out_sharding, arg_shardings

  fn.def_partition(infer_sharding_from_operands=infer, partition=partition,
                   sharding_rule=_RULES[name],
                   need_replication_factors=_factors_but_batch(_RULES[name]))
  return fn


@functools.cache
def _calls():
  return {name: _partitioned(name) for name in _TARGETS}


def _call(name: str, shape, a, b, strides, pads):
  return _calls()[name](a, b, tuple(shape), strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv(x, w, strides, pads):
  return _call("forward", _out_shape(x.shape, w.shape, strides, pads), x, w, strides, pads)


def _out_shape(x_shape, w_shape, strides, pads):
  spatial = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi)
             in zip(x_shape[1:4], w_shape[:3], strides, pads)]
  return (x_shape[0], *spatial, w_shape[4])


def _onednn_conv_fwd(x, w, strides, pads):
  return _onednn_conv(x, w, strides, pads), (x, w)


def _onednn_conv_bwd(strides, pads, residuals, dy):
  x, w = residuals
  dx = _call("backward_data", x.shape, dy, w, strides, pads)
  dw = _call("backward_weights", w.shape, x, dy, strides, pads)
  return dx, dw


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def _supported(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, batch_group_count, preferred_element_type) -> bool:
  if lhs.ndim != 5 or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
    return False
  if feature_group_count != 1 or batch_group_count != 1 or preferred_element_type not in (
      None, jnp.float32):
    return False
  if any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())):
    return False
  if isinstance(padding, str) and padding not in ("SAME", "VALID"):
    return False
  wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CHANNELS_LAST)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == wanted and available()


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         **kwargs):
  """`lax.conv_general_dilated`, through oneDNN for CPU float32 channels-last 3D convolutions."""
  args = (lhs, rhs, window_strides, padding)
  options = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                 dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                 batch_group_count=batch_group_count, precision=precision,
                 preferred_element_type=preferred_element_type, **kwargs)
  xla = functools.partial(lax.conv_general_dilated, **options)
  if not _supported(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, batch_group_count, preferred_element_type):
    return xla(*args)
  strides = tuple(int(s) for s in window_strides)
  pads = (lax.padtype_to_pads(lhs.shape[1:4], rhs.shape[:3], strides, padding)
          if isinstance(padding, str) else padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  return lax.platform_dependent(
      lhs, rhs, cpu=lambda x, w: _onednn_conv(x, w, strides, pads),
      default=lambda x, w: xla(x, w, *args[2:]))
