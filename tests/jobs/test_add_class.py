"""Adding a class by fine-tuning (`init_from`, configs/universal_add_class.py) on the tiny phantom.

One module-scoped job: a model pretrained on the spleen source, fine-tuned from it on the
LiTS-like source (liver and liver tumor are the new classes), and the same from scratch.
"""

import json
import os

import jax
import numpy as np
import pytest

from configs import universal_add_class
from dassemble_jax.jobs import add_class
from dassemble_jax.segmentation import train_loop, trained_run
from dassemble_jax.segmentation.assembly_data import with_fields


def _tiny():
  c = universal_add_class.get_config("tiny")
  c.add_class.pretrain_sources = ("phantom_spleen",)
  c.add_class.finetune_sources = ("phantom_lits",)
  c.data.phantom_sources = ("phantom_spleen", "phantom_lits")
  c.data.phantom_train_cases = 1
  c.batch_size = jax.device_count()  # 8 fake CPU devices: one crop each
  c.model.norm = "batch"  # as the full config: running statistics must travel with init_from
  return c


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("add_class")
  config = _tiny()
  summary = add_class.run(config, str(workdir))
  return {"dir": workdir, "config": config, "summary": summary}


def _trained_ids(run_dir):
  with open(os.path.join(run_dir, trained_run.TRAINED_CLASSES_FILE)) as f:
    return set(json.load(f))


def test_job_trains_three_models_and_reports_the_new_classes(job):
  runs = job["dir"] / "runs"
  assert _trained_ids(runs / "pretrained") == {1}                 # spleen
  # Rehearsal (the default): fine-tuned and scratch models see the spleen source too.
  assert _trained_ids(runs / "finetuned") == {1, 6, 27}           # old + new (liver, tumor)
  assert _trained_ids(runs / "scratch") == {1, 6, 27}
  summary = json.loads((job["dir"] / "add_class.json").read_text())
  assert summary["classes"] == {"new": ["liver", "liver_tumor"], "old": ["spleen"], "both": []}
  text = (job["dir"] / "add_class.txt").read_text()
  assert "new classes (liver, liver_tumor): pretrained -, finetuned " in text
  assert "old classes (spleen): pretrained " in text
  # Each model is scored on what it was taught: the pretrained model has no liver value.
  dsc = summary["comparison"]["dsc"]
  assert dsc["pretrained"]["liver"] is None and dsc["finetuned"]["liver"] is not None
  assert dsc["finetuned"]["spleen"] is not None
  assert (job["dir"] / "overlays.png").stat().st_size > 0


def test_without_rehearsal_only_the_new_sources_are_fine_tuned(job):
  config = with_fields(job["config"], **{"add_class.rehearse": False})
  folders = add_class._folders(config, str(job["dir"]))  # pylint: disable=protected-access
  assert folders["finetune"] == folders["new"] and len(folders["new"]) == 1
  assert "phantom_lits" in folders["new"][0] and "phantom_spleen" in folders["pretrain"][0]
  rehearsed = add_class._folders(job["config"], str(job["dir"]))  # pylint: disable=protected-access
  assert rehearsed["finetune"] == rehearsed["new"] + rehearsed["pretrain"]


def test_finetuning_starts_from_the_pretrained_parameters(job, tmp_path):
  """At step 0 the fine-tuning state holds the pretrained best checkpoint's parameters and norm
  statistics, a fresh optimiser state and step 0."""
  runs = job["dir"] / "runs"
  pretrained = trained_run.restore_run(str(runs / "pretrained"))
  cfg = with_fields(
      _finetune_config(job), init_from=str(runs / "pretrained"))
  start = train_loop.train(cfg, str(tmp_path / "ft"), stop_at_step=0)["state"]
  assert int(start["step"]) == 0
  assert jax.tree.leaves(start["params"]) and jax.tree.leaves(start["batch_stats"])
  for part in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(jax.device_get(start[part])),
                    jax.tree.leaves(jax.device_get(pretrained.state[part])), strict=True):
      np.testing.assert_array_equal(a, b)
  # Fresh AdamW moments: all zero (the pretrained run's are not).
  start_mu = [x for x in jax.tree.leaves(jax.device_get(start["opt_state"])) if x.ndim > 0]
  assert all(not np.any(x) for x in start_mu)
  assert any(np.any(x) for x in jax.tree.leaves(jax.device_get(pretrained.state["opt_state"]))
             if x.ndim > 0)


def _finetune_config(job):
  """The fine-tuning config the job ran, from its saved config.json."""
  import ml_collections
  with open(job["dir"] / "runs" / "finetuned" / "config.json") as f:
    return ml_collections.ConfigDict(json.load(f))


def test_finetuned_run_records_its_origin_and_resumes_its_own_checkpoint(job, capsys):
  runs = job["dir"] / "runs"
  ft = trained_run.restore_run(str(runs / "finetuned"), "latest")
  assert ft.meta["init_from"]["dir"] == os.path.abspath(runs / "pretrained")
  assert int(ft.meta["step"]) == job["config"].add_class.finetune_steps
  # Rerunning the finished run resumes its own checkpoint; it is not initialised again.
  train_loop.train(_finetune_config(job), str(runs / "finetuned"))
  out = capsys.readouterr().out
  assert "Resumed" in out and "Initialised from" not in out


def test_mismatched_model_is_a_clear_error(job, tmp_path):
  runs = job["dir"] / "runs"
  cfg = with_fields(_finetune_config(job), **{
      "init_from": str(runs / "pretrained"), "model.base_channels": 4})
  with pytest.raises(train_loop.InitFromError, match=r"pretrained.*base_channels 2 vs 4"):
    train_loop.train(cfg, str(tmp_path / "wrong"), stop_at_step=0)


def test_init_from_a_folder_that_is_not_a_run_names_it(job, tmp_path):
  cfg = with_fields(_finetune_config(job), init_from=str(tmp_path))
  with pytest.raises(ValueError, match=str(tmp_path)):
    train_loop.train(cfg, str(tmp_path / "x"), stop_at_step=0)
  (tmp_path / trained_run.TRAINED_CLASSES_FILE).write_text("[1]")
  with pytest.raises(train_loop.InitFromError, match="config.json"):
    train_loop.train(cfg, str(tmp_path / "y"), stop_at_step=0)


def test_given_model_is_extended_with_named_datasets(job, tmp_path):
  """Real-data mode: `init_from` names the trained model, `data.shard_dirs` the new datasets;
  the given model is evaluated, not retrained."""
  data = job["dir"] / "data"
  c = with_fields(job["config"], **{
      "init_from": str(job["dir"] / "runs" / "pretrained"),
      "data.shard_dirs": (str(data / "shards" / "phantom_lits"),),
      "data.test_dirs": (str(data / "test_shards" / "phantom_lits"),)})
  summary = add_class.run(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "runs" / "pretrained").exists()
  assert (tmp_path / "w" / "overlays.png").exists()
  assert summary["classes"]["new"] == ["liver", "liver_tumor"]
  assert _trained_ids(tmp_path / "w" / "runs" / "finetuned") == {1, 6, 27}
  assert _trained_ids(tmp_path / "w" / "runs" / "scratch") == {6, 27}


def test_real_data_mode_needs_init_from(tmp_path):
  c = _tiny()
  c.data.shard_dirs = (str(tmp_path),)
  with pytest.raises(ValueError, match="init_from"):
    add_class.run(c, str(tmp_path / "w"))
