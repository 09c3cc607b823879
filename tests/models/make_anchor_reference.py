"""Generates the PyTorch references for importing the anchor's Universal Model checkpoints.

Run once, in a throwaway environment (PyTorch and MONAI are never test dependencies):

  python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch==2.13.0
  /tmp/refenv/bin/pip install monai nibabel einops   # check: pip list | grep torch -> 2.13.0
  /tmp/refenv/bin/python tests/models/make_anchor_reference.py --ct example_ct_sm.nii.gz

(`example_ct_sm.nii.gz`: tests/reference_files/ of the totalsegmentator 2.18.0 sdist, what
tests/ct/test_totalseg.py fetches.) Used with torch 2.13.0+cpu, MONAI 1.6.1, nibabel 5.4.2,
einops 0.8 (MONAI's SwinUNETR needs it); ~4-7 min on 2 CPU cores, mostly the real-CT pipeline.

What it builds, from the anchor's published facts (CLIP-Driven-Universal-Model: model/Unet.py's
layer table, model/Universal_model.py's heads and key names; MONAI's SwinUNETR for the Swin
backbone, as the anchor uses it), written here rather than copied:
  * the anchor's 3D U-Net (Models Genesis: down_tr64..down_tr512, up_tr256..up_tr64, LUConv =
    conv3x3x3 + ContBatchNorm3d (batch statistics, always) + ReLU, ConvTranspose3d(k2, s2)
    upsampling, [upsampled, skip] concatenation) at any base width (the anchor: 32);
  * the heads: precls_conv (GroupNorm(16)-ReLU-conv1x1 to 8), GAP (GroupNorm(16)-ReLU-avgpool-
    conv1x1 to 256), text_to_vision (Linear D->256, ReLU), controller (conv1x1 512->153),
    organ_embedding (the (K, D) class table, a buffer), and the dynamic heads as the anchor runs
    them (grouped 1x1x1 convolutions, one sample at a time).

What it writes into tests/models/anchor_reference/ (committed; no weights of the real model):
  unet_full.json, swin_full.json   full-width (U-Net b=32, Swin f=48, 32 classes, CLIP's 512-d
                                   table) state-dict key -> shape tables and parameter counts
  unet_small.json, swin_small.json the reduced-width tables the goldens use
  goldens.npz                      inputs, class tables and logits (classes CHECKED) of both
                                   reduced-width models, weights from anchor_weights.py (seeded
                                   NumPy: the test rebuilds them, nothing weight-like committed)
  format_fixture.pth (+ .npz)      a small torch.save file (bare state dict, mixed dtypes, a
                                   non-contiguous tensor, shared storage, a Parameter) and the
                                   values torch reads from it
  pipeline_ct.npz                  the small U-Net on the real CT through MONAI's transforms
                                   (RAS, Spacingd 1.5 mm bilinear, ScaleIntensityRanged -175..250
                                   clip, CropForegroundd) + sliding_window_inference(96^3, overlap
                                   0.5, gaussian, one window per call) + sigmoid > 0.5, inverted
                                   to the file's grid with Invertd (nearest)
It also checks that torch.load(weights_only=True) reads pth_writer.py's files as written.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import anchor_weights
import pth_writer

OUT = HERE / "anchor_reference"
CHECKED = (0, 13, 31)   # classes whose golden logits are stored (all 32 are computed)
NUM_CLASSES = 32
SMALL_EMBED = 16        # width of the random class table of the reduced-width models
torch.set_num_threads(2)


# -------------------------------------------------------------------------------------------
# The anchor's U-Net, from its layer table.

class ContBatchNorm3d(nn.modules.batchnorm._BatchNorm):
  """BatchNorm that normalises with the batch's statistics in train and eval mode alike."""

  def forward(self, x):
    return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True,
                        self.momentum, self.eps)


class LUConv(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv1 = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
    self.bn1 = ContBatchNorm3d(cout)

  def forward(self, x):
    return F.relu(self.bn1(self.conv1(x)))


def n_conv(cin, depth, b, double):
  if double:
    return nn.Sequential(LUConv(cin, b * 2**(depth + 1)), LUConv(b * 2**(depth + 1),
                                                               b * 2**(depth + 1)))
  return nn.Sequential(LUConv(cin, b * 2**depth), LUConv(b * 2**depth, b * 2**(depth + 1)))


class Down(nn.Module):
  def __init__(self, cin, depth, b):
    super().__init__()
    self.ops = n_conv(cin, depth, b, False)
    self.depth = depth

  def forward(self, x):
    skip = self.ops(x)
    return (skip if self.depth == 3 else F.max_pool3d(skip, 2)), skip


class Up(nn.Module):
  def __init__(self, cin, cout, depth, b):
    super().__init__()
    self.up_conv = nn.ConvTranspose3d(cin, cout, kernel_size=2, stride=2)
    self.ops = n_conv(cin + cout // 2, depth, b, True)

  def forward(self, x, skip):
    return self.ops(torch.cat([self.up_conv(x), skip], 1))


class AnchorUNet(nn.Module):
  def __init__(self, b=32):
    super().__init__()
    self.down_tr64 = Down(1, 0, b)
    self.down_tr128 = Down(2 * b, 1, b)
    self.down_tr256 = Down(4 * b, 2, b)
    self.down_tr512 = Down(8 * b, 3, b)
    self.up_tr256 = Up(16 * b, 16 * b, 2, b)
    self.up_tr128 = Up(8 * b, 8 * b, 1, b)
    self.up_tr64 = Up(4 * b, 4 * b, 0, b)
    self.deep, self.dec = 16 * b, 2 * b

  def forward(self, x):
    x, s64 = self.down_tr64(x)
    x, s128 = self.down_tr128(x)
    x, s256 = self.down_tr256(x)
    deep, _ = self.down_tr512(x)
    y = self.up_tr256(deep, s256)
    y = self.up_tr128(y, s128)
    return deep, self.up_tr64(y, s64)


def anchor_patch_merging(self, x):
  """PatchMerging.forward of the anchor's model/SwinUNETR.py (3D, even sizes)."""
  parts = [x[:, 0::2, 0::2, 0::2], x[:, 1::2, 0::2, 0::2], x[:, 0::2, 1::2, 0::2],
           x[:, 0::2, 0::2, 1::2], x[:, 1::2, 0::2, 1::2], x[:, 0::2, 1::2, 0::2],
           x[:, 0::2, 0::2, 1::2], x[:, 1::2, 1::2, 1::2]]
  return self.reduction(self.norm(torch.cat(parts, -1)))


def swin_features(feature_size=48, num_classes=NUM_CLASSES):
  """MONAI's SwinUNETR returning (encoder10 output, decoder1 output), as the anchor's copy does.

  Keeps MONAI's module names (swinViT, encoder*, decoder*, and the unused `out` block that the
  anchor's checkpoints carry too)."""
  from monai.networks.nets import SwinUNETR

  class SwinFeatures(SwinUNETR):
    def forward(self, x):
      h = self.swinViT(x, self.normalize)
      enc0 = self.encoder1(x)
      enc1 = self.encoder2(h[0])
      enc2 = self.encoder3(h[1])
      enc3 = self.encoder4(h[2])
      dec4 = self.encoder10(h[4])
      y = self.decoder5(dec4, h[3])
      y = self.decoder4(y, enc3)
      y = self.decoder3(y, enc2)
      y = self.decoder2(y, enc1)
      return dec4, self.decoder1(y, enc0)

  m = SwinFeatures(in_channels=1, out_channels=num_classes, feature_size=feature_size,
                   drop_rate=0.0, attn_drop_rate=0.0, dropout_path_rate=0.0)
  # The anchor's SwinUNETR (its model/SwinUNETR.py, MONAI 0.9's) merges patches in an order that
  # repeats two sub-grids and drops two; MONAI 1.x's 'merging' no longer does. The released
  # checkpoints were trained with the anchor's order, so the reference uses it.
  for i in range(1, 5):
    ds = getattr(m.swinViT, f"layers{i}")[0].downsample
    ds.forward = types.MethodType(anchor_patch_merging, ds)
  m.deep, m.dec = 16 * feature_size, feature_size
  return m


class Universal(nn.Module):
  """Backbone + the anchor's text-driven heads ('word_embedding' encoding)."""

  def __init__(self, backbone, num_classes=NUM_CLASSES, embed_dim=512):
    super().__init__()
    self.backbone = backbone
    deep, dec = backbone.deep, backbone.dec
    groups = lambda c: math.gcd(16, c)   # 16 at full width, as the anchor
    self.precls_conv = nn.Sequential(nn.GroupNorm(groups(dec), dec), nn.ReLU(),
                                     nn.Conv3d(dec, 8, kernel_size=1))
    self.GAP = nn.Sequential(nn.GroupNorm(groups(deep), deep), nn.ReLU(),
                             nn.AdaptiveAvgPool3d((1, 1, 1)), nn.Conv3d(deep, 256, kernel_size=1))
    self.controller = nn.Conv3d(256 + 256, 8 * 8 + 8 * 8 + 8 + 8 + 8 + 1, kernel_size=1)
    self.register_buffer("organ_embedding", torch.randn(num_classes, embed_dim))
    self.text_to_vision = nn.Linear(embed_dim, 256)
    self.k = num_classes

  def forward(self, x):
    """x (B, 1, D, H, W) -> logits (B, K, D, H, W), one sample at a time (as the anchor)."""
    outs = []
    k = self.k
    for i in range(x.shape[0]):
      deep, dec = self.backbone(x[i:i + 1])
      code = F.relu(self.text_to_vision(self.organ_embedding))               # (K, 256)
      g = self.GAP(deep).reshape(1, 256).expand(k, 256)                       # (K, 256)
      theta = self.controller(torch.cat([g, code], 1)[..., None, None, None]).reshape(k, -1)
      w1, w2, w3, b1, b2, b3 = torch.split(theta, [64, 64, 8, 8, 8, 1], dim=1)
      f = self.precls_conv(dec).repeat(1, k, 1, 1, 1)                        # (1, K*8, ...)
      h = F.relu(F.conv3d(f, w1.reshape(k * 8, 8, 1, 1, 1), b1.reshape(-1), groups=k))
      h = F.relu(F.conv3d(h, w2.reshape(k * 8, 8, 1, 1, 1), b2.reshape(-1), groups=k))
      outs.append(F.conv3d(h, w3.reshape(k, 8, 1, 1, 1), b3.reshape(-1), groups=k))
    return torch.cat(outs)


def key_table(model: nn.Module) -> dict:
  sd = model.state_dict()
  params = dict(model.named_parameters())
  backbone = sum(v.numel() for n, v in params.items() if n.startswith("backbone."))
  backbone_out = sum(v.numel() for n, v in params.items() if n.startswith("backbone.out."))
  return {"keys": {k: list(v.shape) for k, v in sd.items()},
          "parameters": {"backbone": backbone, "backbone_without_unused_out_block":
                         backbone - backbone_out, "total": sum(v.numel() for v in params.values())},
          "buffers": sorted(k for k in sd if k not in params)}


def fill(model: Universal, table: np.ndarray, seed: int) -> dict:
  """Loads seeded NumPy weights (anchor_weights.py) and the class table; -> the key table."""
  tab = key_table(model)
  weights = anchor_weights.random_state_dict(tab["keys"], seed)
  sd = model.state_dict()
  for key in list(sd):
    if key in weights:
      sd[key] = torch.from_numpy(weights[key])
  sd["organ_embedding"] = torch.from_numpy(table)
  model.load_state_dict(sd)
  return tab


def anchor_state_dict(model: Universal) -> collections.OrderedDict:
  """The model's state dict under the anchor's names (DataParallel's 'module.' prefix)."""
  return collections.OrderedDict(
      ("module." + k, v.detach().numpy().copy())
      for k, v in model.state_dict().items())


def write_json(path, obj):
  path.write_text(json.dumps(obj, indent=0, sort_keys=True) + "\n")


# -------------------------------------------------------------------------------------------

def goldens(out: dict):
  rng = np.random.default_rng(1)
  # U-Net, base width 2: two samples (each normalised by its own batch statistics).
  unet = Universal(AnchorUNet(b=2), embed_dim=SMALL_EMBED).eval()
  table_u = rng.standard_normal((NUM_CLASSES, SMALL_EMBED)).astype(np.float32)
  tab = fill(unet, table_u, seed=11)
  write_json(OUT / "unet_small.json", tab | {"base_channels": 2, "seed": 11})
  state_u = anchor_state_dict(unet)  # before any forward (ContBatchNorm3d updates its buffers)
  x_u = anchor_weights.golden_input((2, 1, 24, 24, 16), seed=21)
  with torch.no_grad():
    logits_u = unet(torch.from_numpy(x_u)).numpy()
  out.update(unet_table=table_u, unet_logits=logits_u[:, list(CHECKED)])

  swin = Universal(swin_features(feature_size=12), embed_dim=SMALL_EMBED).eval()
  table_s = rng.standard_normal((NUM_CLASSES, SMALL_EMBED)).astype(np.float32)
  tab = fill(swin, table_s, seed=12)
  write_json(OUT / "swin_small.json", tab | {"feature_size": 12, "seed": 12})
  # 64^3: the deepest map is 2^3 (InstanceNorm needs more than one voxel); windows of 7 shrink
  # to the map at 4^3 and 2^3 and are padded and shifted at 32^3 .. 8^3. Stored: a central
  # block and a stride-3 lattice of the logits (the whole would be 3 MB).
  x_s = anchor_weights.golden_input((1, 1, 64, 64, 64), seed=22)
  with torch.no_grad():
    logits_s = swin(torch.from_numpy(x_s)).numpy()[:, list(CHECKED)]
  out.update(swin_table=table_s,
             swin_logits_block=logits_s[:, :, 20:44, 20:44, 20:44],
             swin_logits_lattice=logits_s[:, :, ::3, ::3, ::3], checked=np.array(CHECKED))
  print("golden logits: unet", logits_u.shape, float(np.abs(logits_u).max()),
        "swin", logits_s.shape, float(np.abs(logits_s).max()))

  # pth_writer's files are what torch reads.
  tmp = OUT / "_writer_check.pth"
  pth_writer.save({"net": state_u, "epoch": 7}, tmp)
  back = torch.load(tmp, weights_only=True)
  assert back["epoch"] == 7 and list(back["net"]) == list(state_u)
  for k, v in state_u.items():
    assert np.array_equal(back["net"][k].numpy(), v), k
  tmp.unlink()
  return unet


def full_tables():
  write_json(OUT / "unet_full.json", key_table(Universal(AnchorUNet(b=32))))
  write_json(OUT / "swin_full.json", key_table(Universal(swin_features(feature_size=48))))
  for name in ("unet_full", "swin_full"):
    p = json.loads((OUT / f"{name}.json").read_text())["parameters"]
    print(name, {k: f"{v} ({v / 1e6:.2f} M)" for k, v in p.items()})


def format_fixture():
  g = torch.Generator().manual_seed(3)
  base = torch.randn(4, 6, generator=g)
  sd = collections.OrderedDict()
  sd["float32"] = torch.randn(2, 3, 2, generator=g)
  sd["transposed"] = base.t()                      # non-contiguous view
  sd["shared_row"] = base[1]                       # shares base's storage, with an offset
  sd["float16"] = torch.randn(5, generator=g).half()
  sd["bfloat16"] = torch.randn(3, 2, generator=g).bfloat16()
  sd["int64"] = torch.arange(-3, 4)
  sd["bool"] = torch.tensor([True, False, True])
  sd["scalar"] = torch.tensor(2.5)
  sd["param"] = nn.Parameter(torch.ones(2, 2))
  torch.save(sd, OUT / "format_fixture.pth")
  np.savez(OUT / "format_fixture_expected.npz",
           **{k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
              for k, v in sd.items()})


def pipeline(unet: Universal, ct: str, out: dict):
  """The small U-Net on the real CT, the anchor's way (MONAI transforms + sliding window)."""
  from monai.data import MetaTensor
  from monai.inferers import sliding_window_inference
  from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
  )
  t = Compose([LoadImaged(keys=["image"]), EnsureChannelFirstd(keys=["image"]),
               Orientationd(keys=["image"], axcodes="RAS"),
               Spacingd(keys=["image"], pixdim=(1.5, 1.5, 1.5), mode="bilinear"),
               ScaleIntensityRanged(keys=["image"], a_min=-175, a_max=250, b_min=0.0, b_max=1.0,
                                    clip=True),
               CropForegroundd(keys=["image"], source_key="image")])
  d = t({"image": ct})
  image = d["image"]
  with torch.no_grad():
    logits = sliding_window_inference(image[None].as_tensor(), (96, 96, 96), 1, unet,
                                      overlap=0.5, mode="gaussian")[0]
  probs = torch.sigmoid(logits)
  masks = (probs > 0.5).float()
  print("pipeline: cropped model grid", tuple(image.shape[1:]), "positive fractions",
        [round(float(masks[c].mean()), 3) for c in CHECKED])
  d["pred"] = MetaTensor(masks[list(CHECKED)], affine=image.affine, meta=image.meta)
  d["pred"].applied_operations = image.applied_operations
  inv = Invertd(keys="pred", transform=t, orig_keys="image", nearest_interp=True)(d)["pred"]
  inv = inv.numpy().astype(bool)                                          # (3, X, Y, Z)
  rng = np.random.default_rng(5)
  idx = np.stack([rng.integers(0, s, 4000) for s in image.shape[1:]], 1)
  crop = next(o for o in image.applied_operations if o["class"] == "CropForeground")
  out.update(pipeline_model_shape=np.array(image.shape[1:]),
             pipeline_crop=np.array(crop["extra_info"]["cropped"]),
             pipeline_affine=image.affine.numpy(),
             pipeline_sample_index=idx,
             pipeline_sample_logits=logits.numpy()[:, idx[:, 0], idx[:, 1], idx[:, 2]].T,
             # First checked class only in the model grid (1 MB for all three); all three in
             # the file's grid.
             pipeline_model_mask0=np.packbits(masks[CHECKED[0]].numpy().astype(bool)),
             pipeline_original_shape=np.array(inv.shape[1:]),
             pipeline_original_masks=np.packbits(inv))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--ct", required=True, help="example_ct_sm.nii.gz of totalsegmentator")
  args = parser.parse_args()
  OUT.mkdir(exist_ok=True)
  full_tables()
  format_fixture()
  out = {}
  unet = goldens(out)
  pipeline(unet, args.ct, out)
  np.savez_compressed(OUT / "goldens.npz", **out)
  total = sum(p.stat().st_size for p in OUT.iterdir())
  print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
