"""The README's universal tables are the stored runs' numbers: recomputed here from the JSON.

results/universal_default/seeds/seed_<s>/comparison.json are the per-seed runs of the seed study
(configs/universal.py:seeds); seeds.json / seeds.txt are what the study wrote from them. The
table is recomputed from the per-seed files, compared with the stored study, and every line of
it must appear in README.md as it stands, so text and data cannot drift apart.
"""

import json
import pathlib

from configs import universal
from dassemble_jax.jobs import universal as universal_job
from dassemble_jax.segmentation import seed_study

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "universal_default"


def _recomputed():
  study = json.loads((RESULTS / "seeds.json").read_text())
  per_seed = {}
  for s in study["seeds"]:
    summary = json.loads((RESULTS / "seeds" / f"seed_{s}" / "comparison.json").read_text())
    per_seed[s] = summary["comparison"]
  return study, seed_study.universal_table(per_seed)


def test_stored_seed_study_is_recomputed_from_its_runs():
  study, table = _recomputed()
  assert len(study["seeds"]) >= 3
  assert table["text"] == study["text"]
  assert (RESULTS / "seeds.txt").read_text() == study["text"] + "\n"
  for model, o in table["overall"].items():
    assert study["overall"][model]["verdict"] == o["verdict"]


def test_readme_shows_the_recomputed_table_and_the_command_that_made_it():
  _, table = _recomputed()
  readme = (ROOT / "README.md").read_text()
  lines = set(readme.splitlines())
  missing = [ln for ln in table["text"].splitlines() if ln.strip() and ln not in lines]
  assert not missing, f"README.md lacks these lines of the stored table: {missing[:3]}"
  assert "--config=configs/universal.py:small,seeds" in readme


def test_a_run_states_what_the_stored_study_says_about_it():
  """The stored study's own settings get its verdicts; the default run is told that the study
  ran with other settings (it is the ':small' variant) and which."""
  study, _ = _recomputed()
  one = json.loads((RESULTS / "seeds" / f"seed_{study['seeds'][0]}" /
                    "comparison.json").read_text())["comparison"]
  small = universal.get_config("small")
  small.seed_study = str(RESULTS / "seeds.json")
  text = universal_job.stored_verdicts(small, one)
  for model, o in study["overall"].items():
    assert f"on {model}'s {len(o['classes'])} classes" in text
  default = universal.get_config()
  default.seed_study = str(RESULTS / "seeds.json")
  text = universal_job.stored_verdicts(default, one)
  assert "ran with other settings (data.phantom_shape" in text and "do not apply" in text
