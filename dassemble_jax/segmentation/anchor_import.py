"""The anchor's released Universal Model checkpoints as run folders of this project.

The CLIP-Driven Universal Model's authors published two PyTorch checkpoints (U-Net, Swin UNETR)
and `txt_encoding.pth`, the (32, 512) CLIP table of their 32 prompts. This module maps every
tensor of such a state dict onto our Flax model (`models.universal_head.UniversalModel`) and
writes a run folder in the contract of `trained_run.py`, so prediction, evaluation and
fine-tuning (`config.init_from`) take it like a run trained here.

Accepted layouts: a bare state dict or one under 'net' / 'state_dict' / 'model'; keys with or
without DataParallel's 'module.' prefix; backbone keys with or without 'backbone.' (the anchor's
pred_pseudo.py re-prefixes keys of some copies). The anchor's names (model/Unet.py,
model/Universal_model.py, MONAI's SwinUNETR):
  U-Net   backbone.down_tr{64,128,256,512}.ops.{0,1}.{conv1,bn1}.*   -> down{0..3}.conv{1,2}
          backbone.up_tr{256,128,64}.up_conv.*                         -> up{2,1,0}.up (Upsample2x)
          backbone.up_tr{256,128,64}.ops.{0,1}.{conv1,bn1}.*           -> up{2,1,0}.conv{1,2}
  Swin    backbone.swinViT.patch_embed.proj, .layers{1..4}.0.blocks.{j}.{norm1,attn,norm2,mlp},
          .layers{i}.0.downsample.{norm,reduction}, backbone.encoder{1,2,3,4,10}.layer.conv{1..3},
          backbone.decoder{1..5}.{transp_conv, conv_block.conv{1..3}}
  heads   precls_conv.{0 (GroupNorm), 2 (conv1x1)}, GAP.{0 (GroupNorm), 3 (conv1x1)},
          text_to_vision (Linear), controller (conv1x1 512 -> 153), organ_embedding (the class
          table buffer; or nn.Embedding '.weight' for the 'rand_embedding' variant)
Convolutions OIDHW -> DHWIO; transposed convolutions (in, out, 2, 2, 2) -> Upsample2x's
(2, 2, 2, in, out); 1x1x1 convolutions and Linear layers -> (in, out); BatchNorm weight/bias/
running statistics -> scale/bias/mean/var. Consumed without a destination: `num_batches_tracked`,
Swin's `relative_position_index` (checked equal to ours) and the Swin backbone's `out.*` block
(MONAI's output convolution, never called by the anchor's forward). Anything else missing,
unexpected or misshaped stops the import with the keys named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dassemble_jax import checkpointing
from dassemble_jax.ct import taxonomy
from dassemble_jax.data import torch_pth
from dassemble_jax.data.errors import DataFormatError
from dassemble_jax.models import swin_unetr, text_encoder
from dassemble_jax.models.universal_head import DEFAULT_HEAD_IMPL
from dassemble_jax.segmentation import inference_spec, train_step, trained_run

# The anchor's 32 classes in its prompt order and spelling (pretrained_weights/
# clip_embedding.py: the txt_encoding.pth rows), typos included, and our taxonomy names.
ANCHOR_CLASS_NAMES = (
    "Spleen", "Right Kidney", "Left Kidney", "Gall Bladder", "Esophagus", "Liver", "Stomach",
    "Arota", "Postcava", "Portal Vein and Splenic Vein", "Pancreas", "Right Adrenal Gland",
    "Left Adrenal Gland", "Duodenum", "Hepatic Vessel", "Right Lung", "Left Lung", "Colon",
    "Intestine", "Rectum", "Bladder", "Prostate", "Left Head of Femur", "Right Head of Femur",
    "Celiac Truck", "Kidney Tumor", "Liver Tumor", "Pancreas Tumor", "Hepatic Vessel Tumor",
    "Lung Tumor", "Colon Tumor", "Kidney Cyst")
_TO_TAXONOMY = {
    "Spleen": "spleen", "Right Kidney": "kidney_right", "Left Kidney": "kidney_left",
    "Gall Bladder": "gallbladder", "Esophagus": "esophagus", "Liver": "liver",
    "Stomach": "stomach", "Arota": "aorta", "Postcava": "postcava",
    "Portal Vein and Splenic Vein": "portal_splenic_vein", "Pancreas": "pancreas",
    "Right Adrenal Gland": "adrenal_gland_right", "Left Adrenal Gland": "adrenal_gland_left",
    "Duodenum": "duodenum", "Hepatic Vessel": "hepatic_vessel", "Right Lung": "lung_right",
    "Left Lung": "lung_left", "Colon": "colon", "Intestine": "intestine", "Rectum": "rectum",
    "Bladder": "bladder", "Prostate": "prostate", "Left Head of Femur": "femur_head_left",
    "Right Head of Femur": "femur_head_right", "Celiac Truck": "celiac_trunk",
    "Kidney Tumor": "kidney_tumor", "Liver Tumor": "liver_tumor",
    "Pancreas Tumor": "pancreas_tumor", "Hepatic Vessel Tumor": "hepatic_vessel_tumor",
    "Lung Tumor": "lung_tumor", "Colon Tumor": "colon_tumor", "Kidney Cyst": "kidney_cyst"}
IMPORT_FILE = "anchor_import.json"
_WRAPPERS = ("net", "state_dict", "model")
_BACKBONE_ROOTS = ("swinViT.", "encoder", "decoder", "down_tr", "up_tr", "out.")


class AnchorImportError(ValueError):
  """A checkpoint that does not map onto the model (the message names the keys)."""


def anchor_to_universal_ids() -> list[int]:
  """Universal id (1..32) of each anchor output channel, in the anchor's order."""
  return [taxonomy.class_by_name(_TO_TAXONOMY[n]).id for n in ANCHOR_CLASS_NAMES]


# ------------------------------------------------------------------------------------------------
# The state dict: unwrap, strip prefixes.

def normalize_state_dict(obj: Any, filename: str) -> tuple[dict[str, np.ndarray], dict]:
  """A loaded checkpoint -> ({anchor key: array}, what was unwrapped).

  Keys come back as the anchor's Universal_model.state_dict() names ('backbone.down_tr64...',
  'controller.weight', ...)."""
  info = {"wrapper": None, "prefix": None}
  if isinstance(obj, Mapping) and not _is_state_dict(obj):
    for name in _WRAPPERS:
      if isinstance(obj.get(name), Mapping) and _is_state_dict(obj[name]):
        info["wrapper"] = name
        obj = obj[name]
        break
    else:
      raise AnchorImportError(f"{filename}: no state dict (a mapping of tensors) at the top level or "
                         f"under {', '.join(repr(w) for w in _WRAPPERS)}; top-level keys: "
                         f"{sorted(map(str, obj))[:8]}")
  if not isinstance(obj, Mapping):
    raise AnchorImportError(f"{filename}: holds a {type(obj).__name__}, not a state dict")
  out = {}
  for key, value in obj.items():
    if not isinstance(key, str) or not isinstance(value, np.ndarray):
      raise AnchorImportError(f"{filename}: entry {key!r} is a {type(value).__name__}, not a tensor")
    k = key
    if k.startswith("module."):
      k = k[len("module."):]
      info["prefix"] = "module."
    if k.startswith(_BACKBONE_ROOTS):
      k = "backbone." + k
    out[k] = value
  return out, info


def _is_state_dict(d: Mapping) -> bool:
  return bool(d) and all(isinstance(v, np.ndarray) for v in d.values())


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What the keys say about the model."""
  backbone: str           # 'unet' | 'swin'
  width: int              # U-Net base channels (anchor: 32) or Swin feature size (anchor: 48)
  class_code: str         # 'text' (organ_embedding buffer + text_to_vision) | 'learned'
  embed_dim: int | None   # class-table width (CLIP: 512); None for 'learned'
  num_classes: int


def detect(shapes: Mapping[str, tuple], filename: str) -> Architecture:
  """The architecture a {anchor key: shape} table describes."""
  if "backbone.down_tr64.ops.0.conv1.weight" in shapes:
    backbone, width = "unet", shapes["backbone.down_tr64.ops.0.conv1.weight"][0]
  elif "backbone.swinViT.patch_embed.proj.weight" in shapes:
    backbone, width = "swin", shapes["backbone.swinViT.patch_embed.proj.weight"][0]
  else:
    raise AnchorImportError(f"{filename}: neither the anchor's U-Net (backbone.down_tr64...) nor its "
                       "Swin UNETR (backbone.swinViT...) keys")
  if "text_to_vision.weight" in shapes and "organ_embedding" in shapes:
    code, dim = "text", shapes["text_to_vision.weight"][1]
    k = shapes["organ_embedding"][0]
  elif "organ_embedding.weight" in shapes:
    code, dim, k = "learned", None, shapes["organ_embedding.weight"][0]
  elif "text_to_vision.weight" in shapes:
    code, dim, k = "text", shapes["text_to_vision.weight"][1], taxonomy.NUM_CLASSES
  else:
    raise AnchorImportError(f"{filename}: no class codes (text_to_vision + organ_embedding, or the "
                       "organ_embedding.weight of 'rand_embedding')")
  if k != taxonomy.NUM_CLASSES:
    raise AnchorImportError(f"{filename}: {k} classes; the anchor's taxonomy has "
                       f"{taxonomy.NUM_CLASSES}")
  return Architecture(backbone, int(width), code, None if dim is None else int(dim), int(k))


# ------------------------------------------------------------------------------------------------
# Our parameter path -> (anchor key, conversion).

@dataclasses.dataclass(frozen=True)
class Conversion:
  array: Callable[[np.ndarray], np.ndarray]
  shape: Callable[[tuple], tuple]       # anchor shape -> our shape


_SAME = Conversion(lambda a: a, lambda s: tuple(s))
_CONV = Conversion(lambda a: a.transpose(2, 3, 4, 1, 0),             # OIDHW -> DHWIO
                   lambda s: (s[2], s[3], s[4], s[1], s[0]) if len(s) == 5 else ("bad", s))
_CONVT = Conversion(lambda a: a.transpose(2, 3, 4, 0, 1),            # (in, out, 2,2,2) -> ours
                    lambda s: (s[2], s[3], s[4], s[0], s[1]) if len(s) == 5 else ("bad", s))
_LINEAR = Conversion(lambda a: a.T, lambda s: tuple(s[::-1]) if len(s) == 2 else ("bad", s))
_CONV1 = Conversion(lambda a: a.reshape(a.shape[0], -1).T,            # (out, in, 1, 1, 1)
                    lambda s: (s[1], s[0]) if len(s) == 5 and s[2:] == (1, 1, 1) else ("bad", s))

_HEAD = {
    "gap_norm/scale": ("GAP.0.weight", _SAME), "gap_norm/bias": ("GAP.0.bias", _SAME),
    "gap_proj/kernel": ("GAP.3.weight", _CONV1), "gap_proj/bias": ("GAP.3.bias", _SAME),
    "precls_norm/scale": ("precls_conv.0.weight", _SAME),
    "precls_norm/bias": ("precls_conv.0.bias", _SAME),
    "precls_conv/kernel": ("precls_conv.2.weight", _CONV1),
    "precls_conv/bias": ("precls_conv.2.bias", _SAME),
    "text_to_vision/kernel": ("text_to_vision.weight", _LINEAR),
    "text_to_vision/bias": ("text_to_vision.bias", _SAME),
    "controller/kernel": ("controller.weight", _CONV1),
    "controller/bias": ("controller.bias", _SAME),
    "organ_embedding": ("organ_embedding.weight", _SAME),
}
_NORM = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _unet_key(path: str) -> tuple[str, Conversion]:
  m = re.fullmatch(r"(down|up)(\d)/conv([12])/(conv|norm)/(\w+)", path)
  if m:
    kind, d, j, layer, leaf = m.groups()
    base = f"backbone.{kind}_tr{64 * 2**int(d)}.ops.{int(j) - 1}"
    if layer == "conv":
      return f"{base}.conv1.{'weight' if leaf == 'kernel' else 'bias'}", (
          _CONV if leaf == "kernel" else _SAME)
    return f"{base}.bn1.{_NORM[leaf]}", _SAME
  m = re.fullmatch(r"up(\d)/up/(kernel|bias)", path)
  if m:
    d, leaf = m.groups()
    return (f"backbone.up_tr{64 * 2**int(d)}.up_conv.{'weight' if leaf == 'kernel' else 'bias'}",
            _CONVT if leaf == "kernel" else _SAME)
  raise KeyError(path)


def _swin_key(path: str) -> tuple[str, Conversion]:
  w = lambda leaf: "weight" if leaf in ("kernel", "scale") else "bias"
  if path in ("patch_embed/kernel", "patch_embed/bias"):
    leaf = path.split("/")[1]
    return f"backbone.swinViT.patch_embed.proj.{w(leaf)}", _CONV if leaf == "kernel" else _SAME
  m = re.fullmatch(r"stages/(\d)/blocks/(\d+)/(.+)/(\w+)", path)
  if m:
    i, j, mod, leaf = m.groups()
    base = f"backbone.swinViT.layers{int(i) + 1}.0.blocks.{j}.{mod.replace('/', '.')}"
    if leaf == "relative_position_bias_table":
      return f"backbone.swinViT.layers{int(i) + 1}.0.blocks.{j}.attn.{leaf}", _SAME
    return f"{base}.{w(leaf)}", _LINEAR if leaf == "kernel" else _SAME
  m = re.fullmatch(r"stages/(\d)/downsample/(norm|reduction)/(\w+)", path)
  if m:
    i, mod, leaf = m.groups()
    return (f"backbone.swinViT.layers{int(i) + 1}.0.downsample.{mod}.{w(leaf)}",
            _LINEAR if leaf == "kernel" else _SAME)
  m = re.fullmatch(r"(encoder\d+)/(conv\d)/kernel", path)
  if m:
    return f"backbone.{m[1]}.layer.{m[2]}.conv.weight", _CONV
  m = re.fullmatch(r"(decoder\d)/transp_conv/kernel", path)
  if m:
    return f"backbone.{m[1]}.transp_conv.conv.weight", _CONVT
  m = re.fullmatch(r"(decoder\d)/conv_block/(conv\d)/kernel", path)
  if m:
    return f"backbone.{m[1]}.conv_block.{m[2]}.conv.weight", _CONV
  raise KeyError(path)


def anchor_key(path: str, backbone: str) -> tuple[str, Conversion]:
  """Our 'backbone/...' or 'head/...' path -> (the anchor's key, how its tensor converts)."""
  root, _, rest = path.partition("/")
  if root == "head":
    return _HEAD[rest]
  return (_unet_key if backbone == "unet" else _swin_key)(rest)


def _consumed_extra(key: str, arch: Architecture) -> bool:
  """Keys with no destination that the import consumes (see the module docstring)."""
  return (key.endswith((".num_batches_tracked", ".attn.relative_position_index")) or key.startswith("backbone.out.") or key == "organ_embedding" and arch.class_code == "text")


# ------------------------------------------------------------------------------------------------
# The run's config and abstract model.

def run_config(arch: Architecture) -> ml_collections.ConfigDict:
  """The run's config: the project's full-size Universal Model settings (configs/universal.py
  ':full', restated here because the package never imports configs/) with the anchor's model
  and inference conventions."""
  c = ml_collections.ConfigDict()
  c.job = "universal"
  c.seed = 0
  c.data = ml_collections.ConfigDict({
      "spacing": 1.5, "shard_dirs": (), "test_dirs": (), "val_dirs": (), "num_workers": 8,
      "crops_per_record": 2, "jitter": 8})
  c.augment = ml_collections.ConfigDict({
      "rot90_prob": 0.1, "shift_prob": 0.2, "shift": 0.1, "zoom_prob": 0.3,
      "zoom_range": (1.3, 1.5)})
  c.model = ml_collections.ConfigDict({
      "backbone": arch.backbone, "base_channels": arch.width if arch.backbone == "unet" else 32,
      "norm": "batch", "feature_size": arch.width if arch.backbone == "swin" else 48,
      "class_code": arch.class_code, "head_impl": DEFAULT_HEAD_IMPL, "embedding_table": "",
      # The anchor's ContBatchNorm3d: batch statistics at inference too (unet3d.py).
      "eval_batch_stats": arch.backbone == "unet"})
  c.compute_dtype = "float32"
  c.crop_size = 96
  c.batch_size = 2
  c.num_steps = 40000
  c.assembly_num_steps = 0
  c.learning_rate = 1e-4
  c.warmup_steps = 1000
  c.weight_decay = 1e-5
  c.grad_clip_norm = 1.0
  c.log_every = 100
  c.checkpoint_every = 2000
  c.eval_every = 2000
  c.init_from = ""
  c.synth = ml_collections.ConfigDict({"enabled": False})
  c.eval = ml_collections.ConfigDict({
      "overlap": 0.5, "sw_batch_size": 2, "sigma_scale": 0.125, "threshold": 0.5,
      "nsd_tolerance_mm": 1.5, "postprocess": True, "num_overlays": 4,
      **inference_spec.ANCHOR_CONVENTIONS})
  c.train_single_sources = False
  c.write_predictions = True
  return c


def _flat(state) -> dict[str, Any]:
  return {"/".join(str(p) for p in path): v for path, v in nnx.to_flat_state(state)}


def abstract_model(arch: Architecture):
  """(config, {our path: ShapeDtypeStruct} of params, of batch_stats)."""
  config = run_config(arch)
  embed = arch.embed_dim or 1
  model = nnx.eval_shape(lambda: train_step.build_model(config, embed, rngs=nnx.Rngs(0)))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return config, _flat(params), _flat(stats)


# ------------------------------------------------------------------------------------------------
# The mapping.

def _short(names, n=4) -> str:
  names = sorted(names)
  more = f" (+{len(names) - n} more)" if len(names) > n else ""
  return ", ".join(names[:n]) + more


def plan(shapes: Mapping[str, tuple], filename: str = "<state dict>"):
  """Checks a {anchor key: shape} table against the model it describes.

  Returns (arch, config, {our 'params/...' or 'batch_stats/...' path: (anchor key, conv)}).
  Raises AnchorImportError listing missing, unexpected and misshaped keys in one line."""
  shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
  arch = detect(shapes, filename)
  config, params, stats = abstract_model(arch)
  mapping, missing, misshaped, misshaped_keys = {}, [], [], set()
  for group, flat in (("params", params), ("batch_stats", stats)):
    for path, abstract in flat.items():
      key, conv = anchor_key(path, arch.backbone)
      if key not in shapes:
        missing.append(key)
        continue
      got = conv.shape(shapes[key])
      if got != tuple(abstract.shape):
        misshaped.append(f"{key} {list(shapes[key])}")
        misshaped_keys.add(key)
        continue
      mapping[f"{group}/{path}"] = (key, conv)
  used = {k for k, _ in mapping.values()}
  unexpected = [k for k in shapes if k not in used and k not in misshaped_keys
                and not _consumed_extra(k, arch)]
  if arch.class_code == "text" and "organ_embedding" in shapes and \
     shapes["organ_embedding"] != (arch.num_classes, arch.embed_dim):
    misshaped.append(f"organ_embedding {list(shapes['organ_embedding'])}")
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing: {_short(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
  if misshaped:
    problems.append(f"{len(misshaped)} misshaped: {_short(misshaped)}")
  if problems:
    raise AnchorImportError(f"{filename}: not the anchor's {arch.backbone} Universal Model "
                       f"(width {arch.width}): " + "; ".join(problems))
  return arch, config, mapping


def convert(state: Mapping[str, np.ndarray], filename: str = "<state dict>"):
  """{anchor key: array} -> (arch, config, params, batch_stats) as nested nnx.State-shaped
  dicts of float32 arrays ready for `train_step` (the class table is separate: `class_table`)."""
  arch, config, mapping = plan({k: v.shape for k, v in state.items()}, filename)
  if arch.backbone == "swin":
    for key, value in state.items():
      if key.endswith(".attn.relative_position_index"):
        n = value.shape[0]
        window = round(n ** (1 / 3))
        ours = swin_unetr.relative_position_index((window,) * 3)
        if value.shape != ours.shape or not np.array_equal(value, ours):
          raise AnchorImportError(f"{filename}: {key} differs from the relative position index of a "
                             f"{window}^3 window")
  _, _params_abs, _stats_abs = abstract_model(arch)
  trees = {"params": {}, "batch_stats": {}}
  for full, (key, conv) in mapping.items():
    group, path = full.split("/", 1)
    value = np.asarray(conv.array(state[key]), np.float32)
    node = trees[group]
    parts = path.split("/")
    for p in parts[:-1]:
      node = node.setdefault(int(p) if p.isdigit() else p, {})
    node[parts[-1]] = value
  return arch, config, trees["params"], trees["batch_stats"]


def checkpoint_class_table(state: Mapping[str, np.ndarray], arch: Architecture):
  """The (32, D) table stored in the checkpoint (the anchor's organ_embedding buffer), or None."""
  if arch.class_code == "text" and "organ_embedding" in state:
    return np.asarray(state["organ_embedding"], np.float32)
  return None


def read_class_table(path: str, arch: Architecture) -> np.ndarray:
  """txt_encoding.pth (a (32, 512) fp16 tensor, torch.save'd) or a .npy table -> float32."""
  if str(path).endswith(".npy"):
    table = text_encoder.load_embedding_table(path, num_classes=taxonomy.NUM_CLASSES)
  else:
    table = torch_pth.load_pth(path)
    if isinstance(table, Mapping):  # a dict holding one tensor
      tensors = [v for v in table.values() if isinstance(v, np.ndarray)]
      table = tensors[0] if len(tensors) == 1 else None
    if not isinstance(table, np.ndarray):
      raise AnchorImportError(f"{path}: not a class table (expected one (32, D) tensor)")
  table = np.asarray(table, np.float32)
  if table.shape != (taxonomy.NUM_CLASSES, arch.embed_dim):
    raise AnchorImportError(f"{path}: class table of shape {table.shape}; the checkpoint's "
                       f"text_to_vision needs ({taxonomy.NUM_CLASSES}, {arch.embed_dim})")
  if not np.all(np.isfinite(table)):
    raise AnchorImportError(f"{path}: class table holds non-finite values")
  return table


# ------------------------------------------------------------------------------------------------
# The run folder.

def _params_like(abstract_state, tree):
  """Our converted nested dict as the exact pytree type of the compiled state."""
  leaves = []
  for path, abstract in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    node = tree
    for k in path:
      if isinstance(k, jax.tree_util.GetAttrKey):  # a Variable's '.value'
        continue
      node = node[k.key if isinstance(k, jax.tree_util.DictKey) else k.idx]
    if tuple(node.shape) != tuple(abstract.shape):
      raise AnchorImportError(f"internal: {jax.tree_util.keystr(path)} {node.shape} vs "
                         f"{abstract.shape}")
    leaves.append(jnp.asarray(node, abstract.dtype))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_state), leaves)


def import_checkpoint(checkpoint: str, out: str, class_table: str | None = None) -> dict:
  """Reads `checkpoint` (and the class table) and writes the run folder `out`, whole or not at
  all (built in a temporary sibling folder, renamed at the end). Returns the import summary."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise AnchorImportError(f"{out}: exists and is not an empty folder; choose a new --out")
  try:
    loaded = torch_pth.load_pth(checkpoint)
  except DataFormatError as e:
    raise AnchorImportError(str(e)) from None
  state, layout = normalize_state_dict(loaded, checkpoint)
  arch, config, params, stats = convert(state, checkpoint)
  stored = checkpoint_class_table(state, arch)
  if arch.class_code == "text":
    if class_table:
      table = read_class_table(class_table, arch)
      table_source = os.path.abspath(class_table)
    elif stored is not None:
      table, table_source = stored, "the checkpoint's organ_embedding"
    else:
      raise AnchorImportError(f"{checkpoint}: no organ_embedding in the checkpoint; pass the class "
                         "table (--class_table=txt_encoding.pth)")
    table_vs_stored = (None if stored is None or class_table is None
                       else float(np.abs(stored - table).max()))
  else:
    table, table_source, table_vs_stored = np.zeros((taxonomy.NUM_CLASSES, 1), np.float32), \
        "none (learned class codes)", None

  comp = train_step.compiled_for(config, table.shape[1])
  abstract = comp.abstract_state()
  state_tree = {"step": jnp.zeros((), jnp.int32),
                "params": _params_like(abstract["params"], params),
                "batch_stats": _params_like(abstract["batch_stats"], stats)}
  state_tree["opt_state"] = comp.init_opt_state(state_tree["params"])

  sha = hashlib.sha256()
  with open(checkpoint, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      sha.update(block)
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state_tree["params"]))
  summary = {
      "checkpoint": os.path.abspath(checkpoint), "sha256": sha.hexdigest(),
      "layout": layout, "backbone": arch.backbone, "width": arch.width,
      "class_code": arch.class_code, "class_table": table_source,
      "class_table_vs_checkpoint_max_abs_diff": table_vs_stored,
      "parameters": n_params, "tensors": len(state),
      "classes": [{"channel": i, "anchor_name": n, "universal_id": u,
                   "name": taxonomy.CLASSES[u - 1].name}
                  for i, (n, u) in enumerate(zip(ANCHOR_CLASS_NAMES, anchor_to_universal_ids()))],
      "conventions": {**inference_spec.ANCHOR_CONVENTIONS, "spacing_mm": 1.5,
                      "hu_window": [-175, 250], "window": 96, "overlap": 0.5,
                      "threshold": 0.5, "eval_batch_stats": config.model.eval_batch_stats},
      "license": "the anchor's weights: CC BY-NC-ND 4.0 (never redistributed by this project)",
  }

  out = os.path.abspath(out)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".importing", dir=parent)
  try:
    trained_run.write_run_files(tmp, config, np.ones(taxonomy.NUM_CLASSES, bool))
    trained_run.write_class_table(tmp, table)
    ckpts = checkpointing.Checkpoints(tmp)
    try:
      ckpts.save(0, state_tree, {"step": 0, "imported": summary}, is_best=True)
    finally:
      ckpts.close()
    with open(os.path.join(tmp, IMPORT_FILE), "w") as f:
      json.dump(summary, f, indent=1)
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked above)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return summary
