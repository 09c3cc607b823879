"""Table runners on tiny configs: files written, Example II statistics, CIFAR from real pickles."""

import json

import numpy as np
import pytest
import scipy.stats

from dassemble_jax.classification import example2, table_report
from dassemble_jax.data import mnist
from dassemble_jax.jobs import tables
from tests.fake_cifar import write_cifar_pickles
from tests.fake_mnist import write_fake_mnist


def test_odd_even_tiny_table_files(tmp_path):
  idx = write_fake_mnist(tmp_path / "idx", num_train=10200, num_test=100)
  out = tables.run_table("odd_even", str(tmp_path / "w"), seeds=2, tiny=True,
                         data_path=str(idx), verbose=False)
  for ext in ("md", "json", "png"):
    assert (tmp_path / "w" / f"odd_even.{ext}").stat().st_size > 0
  assert out["columns"] == ["D0", "D1", "D0+D1"]
  assert out["summary"]["D0"]["1"]["n"] == 2 and "0" not in out["summary"]["D0"]
  md = (tmp_path / "w" / "odd_even.md").read_text()
  assert "D0+D1 (seed)" in md and "| 9 |" in md and "±" in md
  # D0 and D1 share one program (4 runs); D0+D1 (10 classes) has its own (2 runs).
  assert sorted(out["program_groups"]) == [["D0", "D1", 4], ["D0+D1", 2]]
  runs = json.loads((tmp_path / "w" / "odd_even_runs.json").read_text())
  assert len(runs) == 6 and all(1 <= r["best_epoch"] <= 2 for r in runs)


def test_all_images_per_source_records_the_counts(tmp_path):
  """--num_train=-1 trains each source on every image of its digits; the table states counts."""
  idx = write_fake_mnist(tmp_path / "idx", num_train=10300, num_test=100)
  out = tables.run_table("odd_even", str(tmp_path / "w"), seeds=1, tiny=True, num_train=-1,
                         data_path=str(idx), verbose=False, only=["D0"])
  raw = mnist.load_mnist_idx(idx)
  train, val = raw["train"][1], raw["validation"][1]
  odd = lambda y: int(np.sum(y % 2 == 1))
  assert out["num_train_all"] is True
  assert out["subset_sizes"] == {"D0": [("D0", odd(train), odd(val))]}
  runs = json.loads((tmp_path / "w" / "odd_even_runs.json").read_text())
  assert runs[0]["source_sizes"] == {"D0": [odd(train), odd(val)]}
  with pytest.raises(ValueError, match="num_train"):
    tables.run_table("odd_even", str(tmp_path / "x"), seeds=1, tiny=True, num_train=0)


def test_example2_analysis_by_hand():
  cols = None
  results = [{"setting": "only 8", "seed": s, "test_auc": {"8": 0.9}} for s in (0, 1)]
  gains = {"3": 0.03, "5": 0.02, "1": -0.01}
  for j, g in gains.items():
    results += [{"setting": f"+{j}", "seed": s, "test_auc": {"8": 0.9 + g + 0.002 * s}}
                for s in (0, 1)]
  sims = {"1": 0.1, "3": 0.8, "5": 0.5}
  orig = example2.similarity
  example2.similarity = lambda c, i: sims
  try:
    out = example2.analyse(results, [("only 8", _Cfg())], "8")
  finally:
    example2.similarity = orig
  assert out["classes"] == ["1", "3", "5"]
  np.testing.assert_allclose(out["gain_mean"], [-0.009, 0.031, 0.021], atol=1e-12)
  r, p = scipy.stats.pearsonr([0.1, 0.8, 0.5], [-0.009, 0.031, 0.021])
  assert out["correlation"]["pearson_r"] == pytest.approx(r)
  assert out["correlation"]["p_value"] == pytest.approx(p)
  del cols


class _Cfg:
  class data:
    seed = 0

  def copy_and_resolve_references(self):
    return _Cfg()


def test_similarity_of_class_means(tmp_path):
  idx = write_fake_mnist(tmp_path / "idx", num_train=10200, num_test=100)
  (_, c), = [s for s in example2.settings("8", tiny=True) if s[0] == "only 8"]
  c.data.source, c.data.path = "idx", str(idx)
  sim = example2.similarity(c, "8")
  assert sorted(sim) == [str(d) for d in range(10) if d != 8]
  assert all(-1.0 <= v <= 1.0 for v in sim.values())
  # Independent check: SciPy's cosine distance on the centred class means, in float64.
  import scipy.spatial.distance

  from dassemble_jax.classification import multirun
  tr = multirun.load_splits(c)["train"]
  x = tr["image"].reshape(len(tr["label"]), -1).astype(np.float64)
  x -= x.mean(0)
  m8, m3 = x[tr["label"] == 8].mean(0), x[tr["label"] == 3].mean(0)
  assert sim["3"] == pytest.approx(1 - scipy.spatial.distance.cosine(m8, m3), abs=1e-9)


def test_cifar_tiny_table_from_real_pickle_format(tmp_path):
  root = write_cifar_pickles(tmp_path / "cifar", per_batch=40)
  # 200 training images: the loader keeps the last 5,000 for validation by default, so shrink it.
  from dassemble_jax.data import cifar
  orig = cifar.NUM_VALIDATION
  cifar.load_cifar10_pickles.__defaults__ = (60,)
  try:
    out = tables.run_table("cifar", str(tmp_path / "w"), seeds=1, tiny=True,
                           data_path=str(root), verbose=False)
  finally:
    cifar.load_cifar10_pickles.__defaults__ = (orig,)
  assert out["summary"]["D0"].keys() == {"bird", "cat", "deer", "dog", "frog", "horse"}
  assert set(out["summary"]["D0+D1"]) == set(cifar.CIFAR10_CLASSES)
  assert (tmp_path / "w" / "cifar.png").stat().st_size > 0


def test_unknown_table_and_bad_seeds():
  with pytest.raises(ValueError, match="unknown table"):
    tables.settings("nope")
  with pytest.raises(ValueError, match="seeds"):
    tables.run_table("odd_even", "/tmp/x", seeds=0)


def test_markdown_mean_row():
  summary = {"A": {"1": {"mean": 0.9, "std": 0.0, "n": 2, "values": [0.9, 0.9]},
                   "2": {"mean": 0.7, "std": 0.0, "n": 2, "values": [0.6, 0.8]}}}
  md = table_report.markdown(summary, ["A"], ["1", "2"], {"A": {"1": 99.0}})
  assert "| 1 | 90.00 ± 0.00 | 99.0 |" in md
  assert "| mean | 80.00 ± 7.07 | - |" in md


def test_all_tables_runs_tables_side_by_side_and_names_a_failure(tmp_path):
  from dassemble_jax.jobs import all_tables
  idx = write_fake_mnist(tmp_path / "idx", num_train=10200, num_test=100)
  walls = all_tables.run_all(str(tmp_path / "w"), seeds=1, jobs=2, tiny=True,
                             data_path=str(idx), tables=("odd_even", "zero"))
  for t in ("odd_even", "zero"):
    assert (tmp_path / "w" / t / f"{t}.md").stat().st_size > 0
    assert (tmp_path / "w" / t / "log.txt").stat().st_size > 0
  assert walls["total"] < walls["odd_even"] + walls["zero"]  # they overlapped
  with pytest.raises(RuntimeError, match=r"odd_even \(see .*odd_even/log.txt\)"):
    all_tables.run_all(str(tmp_path / "bad"), seeds=1, jobs=1, tiny=True,
                       data_path=str(tmp_path / "missing"), tables=("odd_even",))
