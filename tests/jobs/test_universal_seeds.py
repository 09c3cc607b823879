"""The universal job across seeds: per-seed runs, the paired table, a run's stored verdicts."""

import json

import pytest

from configs import universal
from dassemble_jax.jobs import universal as universal_job


def _comparison(seed):
  """A fake 'comparison' of one seed: the assembly beats src_a's liver by 0.1 on every seed,
  src_b's spleen flips sign with the seed."""
  return {"classes": ["liver", "spleen"],
          "dsc": {"assembly": {"liver": 0.8 + 0.01 * seed, "spleen": 0.5},
                  "src_a": {"liver": 0.7 + 0.01 * seed, "spleen": None},
                  "src_b": {"liver": 0.6, "spleen": 0.5 + (0.2 if seed % 2 else -0.2)}}}


def test_seed_study_runs_each_seed_once_and_a_run_prints_its_verdicts(tmp_path, monkeypatch,
                                                                      capsys):
  config = universal.get_config("seeds")
  calls = []
  real_run = universal_job.run

  def fake_run(cfg, workdir):
    if tuple(cfg.get("seeds", ()) or ()):
      return real_run(cfg, workdir)
    assert cfg.seed_study == ""  # per-seed runs never print a study's verdicts
    calls.append(int(cfg.seed))
    (tmp_path / "study" / f"seed_{cfg.seed}").mkdir(parents=True)
    (tmp_path / "study" / f"seed_{cfg.seed}" / "comparison.json").write_text(
        json.dumps({"comparison": _comparison(int(cfg.seed))}))

  monkeypatch.setattr(universal_job, "run", fake_run)
  table = universal_job.run(config, str(tmp_path / "study"))
  assert calls == [0, 1, 2, 3, 4]
  assert table["comparisons"]["src_a"]["liver"]["diff"] == pytest.approx([0.1] * 5)
  assert table["comparisons"]["src_a"]["liver"]["verdict"] == "better"
  assert table["comparisons"]["src_b"]["spleen"]["verdict"] == "undecided"
  stored = tmp_path / "study" / universal_job.SEEDS_FILE
  assert json.loads(stored.read_text())["text"] == table["text"]
  assert (tmp_path / "study" / "seeds.txt").read_text() == table["text"] + "\n"
  # A rerun reads the per-seed results instead of training again.
  assert universal_job.run(config, str(tmp_path / "study"))["text"] == table["text"]
  assert calls == [0, 1, 2, 3, 4]

  # A single run with the same settings names what held across the stored seeds.
  single = universal.get_config()
  single.seed_study = str(stored)
  text = universal_job.stored_verdicts(single, _comparison(0))
  assert "on src_a's 1 classes" in text and "held, assembly better" in text
  assert "liver better (+0.100" in text
  assert "not decided: spleen" in text or "not decided across seeds" in text
  # Another training length: applied, the difference stated; other data or model: named, not
  # applied; no study named or a missing file: nothing.
  single.num_steps = 7
  text = universal_job.stored_verdicts(single, _comparison(0))
  assert "num_steps 100 there vs 7 here" in text and "held, assembly better" in text
  single.crop_size = 16
  assert "other settings (crop_size, num_steps)" in universal_job.stored_verdicts(
      single, _comparison(0))
  single.seed_study = str(tmp_path / "missing.json")
  assert universal_job.stored_verdicts(single, _comparison(0)) == ""


def test_seed_study_needs_two_distinct_seeds(tmp_path):
  config = universal.get_config("seeds")
  config.seeds = (1, 1)
  with pytest.raises(ValueError, match="distinct seeds"):
    universal_job.run(config, str(tmp_path))
