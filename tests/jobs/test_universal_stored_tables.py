"""The README's universal tables are the stored runs' numbers: recomputed here from the JSON.

Two stored seed studies of the universal job: the default size (configs/universal.py:seeds) in
results/universal_default/, and the ':small' variant (configs/universal.py:small,seeds) in
results/universal_default/small/. In each, seeds/seed_<s>/comparison.json are the per-seed runs
and seeds.json / seeds.txt what the study wrote from them. Each table is recomputed from the
per-seed files and compared with the stored study; README.md must show every line of the
default study's table and results/universal_default/README.md every line of both, so text and
data cannot drift apart.
"""

import json
import pathlib

import pytest

from configs import universal
from dassemble_jax.jobs import universal as universal_job
from dassemble_jax.segmentation import seed_study

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "universal_default"
STUDIES = {"default": RESULTS, "small": RESULTS / "small"}


def _recomputed(folder: pathlib.Path):
  study = json.loads((folder / "seeds.json").read_text())
  per_seed = {}
  for s in study["seeds"]:
    summary = json.loads((folder / "seeds" / f"seed_{s}" / "comparison.json").read_text())
    per_seed[s] = summary["comparison"]
  return study, seed_study.universal_table(per_seed)


def _missing_lines(table_text: str, doc: pathlib.Path) -> list[str]:
  lines = set(doc.read_text().splitlines())
  return [ln for ln in table_text.splitlines() if ln.strip() and ln not in lines]


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_stored_seed_study_is_recomputed_from_its_runs(name):
  folder = STUDIES[name]
  study, table = _recomputed(folder)
  assert len(study["seeds"]) >= 3
  assert table["text"] == study["text"]
  assert (folder / "seeds.txt").read_text() == study["text"] + "\n"
  for model, o in table["overall"].items():
    assert study["overall"][model]["verdict"] == o["verdict"]


def test_the_default_study_ran_the_default_config():
  study, _ = _recomputed(RESULTS)
  assert study["settings"] == universal_job.study_settings(universal.get_config("seeds"))
  assert study["seeds"] == list(universal.get_config("seeds").seeds)
  assert universal.get_config().seed_study == "results/universal_default/seeds.json"


def test_readmes_show_the_recomputed_tables_and_the_commands_that_made_them():
  _, default = _recomputed(RESULTS)
  _, small = _recomputed(STUDIES["small"])
  readme = ROOT / "README.md"
  missing = _missing_lines(default["text"], readme)
  assert not missing, f"README.md lacks these lines of the stored table: {missing[:3]}"
  assert "--config=configs/universal.py:seeds" in readme.read_text()
  results_readme = RESULTS / "README.md"
  for table in (default, small):
    missing = _missing_lines(table["text"], results_readme)
    assert not missing, f"{results_readme} lacks these lines of a stored table: {missing[:3]}"
  assert "--config=configs/universal.py:small,seeds" in results_readme.read_text()


def test_a_run_states_what_the_stored_study_says_about_it():
  """A run of the study's own settings gets its verdicts, whatever its seed; a run of other
  data or model settings is told that the study does not apply, and which settings differ."""
  study, _ = _recomputed(RESULTS)
  one = json.loads((RESULTS / "seeds" / f"seed_{study['seeds'][0]}" /
                    "comparison.json").read_text())["comparison"]
  default = universal.get_config()
  default.seed_study = str(RESULTS / "seeds.json")
  text = universal_job.stored_verdicts(default, one)
  assert "do not apply" not in text
  for model, o in study["overall"].items():
    assert f"on {model}'s {len(o['classes'])} classes" in text
  default.seed_study = str(STUDIES["small"] / "seeds.json")
  text = universal_job.stored_verdicts(default, one)
  assert "ran with other settings (data.phantom_shape" in text and "do not apply" in text
