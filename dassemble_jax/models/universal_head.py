"""The text-conditioned universal head (CLIP-Driven Universal Model) and the full model.

For every (sample b, class k):
  image code   g_b = Linear(GAP(ReLU(GroupNorm(deep_b))))                       (256,)
  class code   t_k = ReLU(Linear(E_k))        E: the (K, D) class-embedding table  (256,)
  controller   theta_bk = Linear([g_b, t_k])                                        (153,)
  head input   f_b = Conv1x1(ReLU(GroupNorm(decoder_b)))                            (S, 8)
  logits       z_bk = W3 . ReLU(W2 . ReLU(W1 . f_b + b1) + b2) + b3                 (S,)
with theta = [W1 (8x8), W2 (8x8), W3 (1x8), b1 (8), b2 (8), b3 (1)] in the anchor's order
(weights first, each (out, in) row-major, then biases), so its controllers import unchanged.
The dynamic heads run over all (b, k) at once, no loop over samples or classes: as three einsums
(`dynamic_heads`, the reference form) or as dense block-diagonal matmuls (`dynamic_heads_blockdiag`,
the default: 1.75x faster with the loss on an H100, benchmarks/universal_step.md).

The embedding table is an *input* (`__call__(..., class_embeddings)`), not a parameter: it comes
from `text_encoder.embed_prompts` (MiniLM, 384-d) or a user's table (`load_embedding_table`,
e.g. CLIP's 512-d), and the model works with any D.

Ablations (`class_code`):
  'text'    the paper: ReLU(Linear(D -> 256)) of the given table.
  'onehot'  DoDNet-style: the raw one-hot vector of the class (K dims) is the class code; the
            controller takes 256 + K inputs. The table is ignored.
  'learned' the anchor's 'rand_embedding': a learned (K, 256) table (N(0, 1) init, as
            torch.nn.Embedding). The table is ignored.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

CODE_DIM = 256
HEAD_CHANNELS = 8
# Weights of the three dynamic 1x1x1 convolutions 8->8->8->1, then their biases.
WEIGHT_NUMS = (HEAD_CHANNELS * HEAD_CHANNELS, HEAD_CHANNELS * HEAD_CHANNELS, HEAD_CHANNELS)
BIAS_NUMS = (HEAD_CHANNELS, HEAD_CHANNELS, 1)
NUM_HEAD_PARAMS = sum(WEIGHT_NUMS) + sum(BIAS_NUMS)  # 153
CLASS_CODES = ("text", "onehot", "learned")


def split_head_params(theta: jax.Array):
  """(..., 153) -> w1 (..., 8, 8), w2 (..., 8, 8), w3 (..., 1, 8), b1 (..., 8), b2, b3 (..., 1).

  Weights are (out, in), matching the anchor's grouped-conv reshape.
  """
  if theta.shape[-1] != NUM_HEAD_PARAMS:
    raise ValueError(f"expected {NUM_HEAD_PARAMS} head parameters, got {theta.shape[-1]}")
  lead = theta.shape[:-1]
  c = HEAD_CHANNELS
  cuts = list(itertools.accumulate(WEIGHT_NUMS + BIAS_NUMS))[:-1]
  w1, w2, w3, b1, b2, b3 = jnp.split(theta, cuts, axis=-1)
  return (w1.reshape(*lead, c, c), w2.reshape(*lead, c, c), w3.reshape(*lead, 1, c),
          b1, b2, b3)


def dynamic_heads(features: jax.Array, theta: jax.Array) -> jax.Array:
  """Per-(sample, class) three-layer 1x1x1 MLPs with generated weights.

  features (B, D, H, W, 8), theta (B, K, 153) -> logits (B, D, H, W, K).
  """
  w1, w2, w3, b1, b2, b3 = split_head_params(theta.astype(features.dtype))
  # (B, D, H, W, K, 8): every class's first layer on the shared 8-channel feature.
  h = jnp.einsum("bdhwi,bkoi->bdhwko", features, w1) + b1[:, None, None, None]
  h = jax.nn.relu(h)
  h = jnp.einsum("bdhwki,bkoi->bdhwko", h, w2) + b2[:, None, None, None]
  h = jax.nn.relu(h)
  return jnp.einsum("bdhwki,bki->bdhwk", h, w3[:, :, 0]) + b3[:, None, None, None, :, 0]


def dynamic_heads_blockdiag(features: jax.Array, theta: jax.Array) -> jax.Array:
  """`dynamic_heads` as three dense matmuls over a (B, voxels, K x 8) layout.

  Layer 1 multiplies by all classes' first layers side by side, (8, K*8); layers 2 and 3 by
  block-diagonal (K*8, K*8) and (K*8, K) matrices. That is K times the heads' FLOPs (still tiny
  next to the backbone) but every product is a plain batched matmul on one layout, so XLA needs
  no per-(sample, class) transposes of the (B, voxels, K, 8) activations. Equal to
  `dynamic_heads` (test); which is faster is a device question (benchmarks/universal_step.md).
  features (B, D, H, W, 8), theta (B, K, 153) -> logits (B, D, H, W, K).
  """
  w1, w2, w3, b1, b2, b3 = split_head_params(theta.astype(features.dtype))
  b, k = theta.shape[:2]
  c = HEAD_CHANNELS
  eye = jnp.eye(k, dtype=features.dtype)
  f = features.reshape(b, -1, c)                                              # (B, S, 8)
  w1_all = jnp.transpose(w1, (0, 3, 1, 2)).reshape(b, c, k * c)              # [b, i, (k, o)]
  w2_blocks = jnp.einsum("kl,bkoi->bkilo", eye, w2).reshape(b, k * c, k * c)  # [b, (k, i), (l, o)]
  w3_blocks = jnp.einsum("kl,bki->bkil", eye, w3[:, :, 0]).reshape(b, k * c, k)
  h = jax.nn.relu(jnp.einsum("bsi,bio->bso", f, w1_all) + b1.reshape(b, 1, k * c))
  h = jax.nn.relu(jnp.einsum("bsi,bio->bso", h, w2_blocks) + b2.reshape(b, 1, k * c))
  out = jnp.einsum("bsi,bio->bso", h, w3_blocks) + b3.reshape(b, 1, k)
  return out.reshape(*features.shape[:-1], k)


# How the logits are computed. 'fused' trains through `segmentation.fused_heads` (the heads and
# the loss's sums in one GPU kernel, no logits in memory); where logits are needed (evaluation,
# prediction) it computes them as 'blockdiag'.
HEAD_IMPLS = {"einsum": dynamic_heads, "blockdiag": dynamic_heads_blockdiag,
              "fused": dynamic_heads_blockdiag}
# The default everywhere (configs/universal.py sets the same): the fastest of the three that
# materialises logits (benchmarks/universal_step.md); the three give the same numbers.
DEFAULT_HEAD_IMPL = "blockdiag"


class UniversalHead(nnx.Module):
  """Maps (deepest feature, decoder feature, class table) to per-class logits (NDHWK)."""

  def __init__(self, deep_channels: int, decoder_channels: int, num_classes: int,
               embed_dim: int | None = None, *, class_code: str = "text",
               num_groups: int = 16, head_impl: str = DEFAULT_HEAD_IMPL, dtype=None,
               rngs: nnx.Rngs):
    if head_impl not in HEAD_IMPLS:
      raise ValueError(f"head_impl must be one of {tuple(HEAD_IMPLS)}, got {head_impl!r}")
    self.head_impl = head_impl
    if class_code not in CLASS_CODES:
      raise ValueError(f"class_code must be one of {CLASS_CODES}, got {class_code!r}")
    if class_code == "text" and not embed_dim:
      raise ValueError("class_code='text' needs embed_dim (the width of the embedding table)")
    self.num_classes = num_classes
    self.class_code = class_code
    self.embed_dim = embed_dim
    self.dtype = dtype
    kw = {"dtype": dtype, "rngs": rngs}
    # Image code: GroupNorm(16) -> ReLU -> GAP -> Linear(deep -> 256). Narrow test models get
    # the largest group count dividing their width.
    self.gap_norm = nnx.GroupNorm(deep_channels, num_groups=math.gcd(num_groups, deep_channels),
                                  epsilon=1e-5, **kw)
    self.gap_proj = nnx.Linear(deep_channels, CODE_DIM, **kw)
    # Head input: GroupNorm(16) -> ReLU -> 1x1x1 conv to 8 channels.
    self.precls_norm = nnx.GroupNorm(decoder_channels,
                                     num_groups=math.gcd(num_groups, decoder_channels),
                                     epsilon=1e-5, **kw)
    self.precls_conv = nnx.Linear(decoder_channels, HEAD_CHANNELS, **kw)
    code_dim = CODE_DIM
    if class_code == "text":
      self.text_to_vision = nnx.Linear(embed_dim, CODE_DIM, **kw)
    elif class_code == "learned":
      self.organ_embedding = nnx.Param(
          jax.random.normal(rngs.params(), (num_classes, CODE_DIM), jnp.float32))
    else:
      code_dim = num_classes
    self.controller = nnx.Linear(CODE_DIM + code_dim, NUM_HEAD_PARAMS, **kw)

  def class_codes(self, class_embeddings: jax.Array | None) -> jax.Array:
    """(K, code_dim) codes of all classes."""
    k = self.num_classes
    if self.class_code == "text":
      if class_embeddings is None:
        raise ValueError("class_code='text' needs the (num_classes, embed_dim) class table")
      if class_embeddings.shape != (k, self.embed_dim):
        raise ValueError(f"class table must be ({k}, {self.embed_dim}), "
                         f"got {tuple(class_embeddings.shape)}")
      return jax.nn.relu(self.text_to_vision(class_embeddings))
    if self.class_code == "learned":
      return self.organ_embedding[...]
    return jnp.eye(k, dtype=jnp.float32)

  def controller_params(self, deep: jax.Array, class_embeddings=None) -> jax.Array:
    """deep (B, d, h, w, C) -> theta (B, K, 153)."""
    g = jax.nn.relu(self.gap_norm(deep))
    g = self.gap_proj(g.astype(jnp.float32).mean(axis=(1, 2, 3)).astype(g.dtype))  # (B, 256)
    t = self.class_codes(class_embeddings).astype(g.dtype)  # (K, code)
    b, k = g.shape[0], t.shape[0]
    cond = jnp.concatenate([jnp.broadcast_to(g[:, None], (b, k, g.shape[-1])),
                            jnp.broadcast_to(t[None], (b, k, t.shape[-1]))], axis=-1)
    return self.controller(cond)

  def head_inputs(self, deep: jax.Array, decoder: jax.Array,
                  class_embeddings: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """-> (head input f (B, D, H, W, 8), generated head parameters theta (B, K, 153))."""
    theta = self.controller_params(deep, class_embeddings)
    f = self.precls_conv(jax.nn.relu(self.precls_norm(decoder)))
    return f, theta

  def __call__(self, deep: jax.Array, decoder: jax.Array,
               class_embeddings: jax.Array | None = None) -> jax.Array:
    """deep (B, d, h, w, Cd), decoder (B, D, H, W, Cf) -> logits (B, D, H, W, K)."""
    return HEAD_IMPLS[self.head_impl](*self.head_inputs(deep, decoder, class_embeddings))


class UniversalModel(nnx.Module):
  """Backbone ('unet' | 'swin') + universal head. Params float32; `dtype` is the compute dtype.

  `model(x, class_embeddings)`: x (B, D, H, W, 1) -> logits (B, D, H, W, num_classes).
  `embed_dim` is the width of the class table (384 for MiniLM, 512 for CLIP); it is only
  needed for class_code='text'. `backbone_kwargs` pass through (e.g. base_channels,
  feature_size for tiny test models).

  Adding a class: see `dassemble_jax.models.text_encoder` (the class is a row of the table; with
  text codes no parameter depends on the number of classes; fine-tune with `config.init_from`).
  """

  def __init__(self, backbone: str = "unet", num_classes: int = 32,
               embed_dim: int | None = 384, *, class_code: str = "text", in_channels: int = 1,
               head_impl: str = DEFAULT_HEAD_IMPL, dtype=None,
               backbone_kwargs: dict | None = None,
               rngs: nnx.Rngs):
    backbone_kwargs = dict(backbone_kwargs or {})
    if backbone == "unet":
      from dassemble_jax.models.unet3d import UNet3D
      self.backbone = UNet3D(in_channels, dtype=dtype, rngs=rngs, **backbone_kwargs)
    elif backbone == "swin":
      from dassemble_jax.models.swin_unetr import SwinUNETR
      self.backbone = SwinUNETR(in_channels, dtype=dtype, rngs=rngs, **backbone_kwargs)
    else:
      raise ValueError(f"backbone must be 'unet' or 'swin', got {backbone!r}")
    self.head = UniversalHead(self.backbone.deep_channels, self.backbone.out_channels,
                              num_classes, embed_dim, class_code=class_code,
                              head_impl=head_impl, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, class_embeddings: jax.Array | None = None) -> jax.Array:
    deep, dec = self.backbone(x)
    return self.head(deep, dec, class_embeddings)

  def head_inputs(self, x: jax.Array, class_embeddings: jax.Array | None = None):
    """x -> (f (B, D, H, W, 8), theta (B, K, 153)): everything but the dynamic heads."""
    deep, dec = self.backbone(x)
    return self.head.head_inputs(deep, dec, class_embeddings)
