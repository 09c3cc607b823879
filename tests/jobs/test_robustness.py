"""The robustness benchmark command on a tiny trained run: JSON + PNG, clear errors.

The model is the tiny liver_synthetic config's synthetic model (the same compiled step as
tests/jobs/test_liver_synthetic.py, so a session running both compiles it once); the evaluation
set is swept into a held-out healthy phantom liver.
"""

import json
import pathlib
import shutil

import jax
import pytest

from configs import liver_synthetic
from dassemble_jax.jobs import robustness
from dassemble_jax.segmentation import assembly_data, train_loop

SOURCE = "phantom_healthy_liver"


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("robustness")
  cfg = liver_synthetic.get_config("tiny")
  cfg.batch_size = jax.device_count()
  cfg.data.phantom_sources = (SOURCE,)
  data = assembly_data.phantom_data(cfg, str(tmp / "data"))
  cfg.data.shard_dirs = (str(data["train"][SOURCE]),)
  cfg.data.val_dirs = (str(data["val"][SOURCE]),)
  run_dir = tmp / "run"
  out = train_loop.train(cfg, str(run_dir))
  raw = data["raw_test"][SOURCE]
  return {"tmp": tmp, "run": run_dir, "best_step": out["best_step"],
          "ct": raw / "images" / "liver_000.nii.gz", "seg": raw / "labels" / "liver_000.nii.gz"}


def _main(trained, out, *extra):
  return robustness.main(["--workdir", str(trained["run"]), "--out", str(out), *extra])


def test_writes_json_and_png_per_property_value(trained, capsys):
  out = trained["tmp"] / "bench"
  rc = _main(trained, out, "--property", "size", "--values", "12", "--cases", "1",
             "--ct", str(trained["ct"]), "--seg", str(trained["seg"]), "--liver-label", "1")
  assert rc == 0, capsys.readouterr().err
  result = _json(out / "robustness.json")
  assert result["checkpoint"] == "best" and result["checkpoint_step"] == trained["best_step"]
  (prop,) = result["results"]
  assert prop["property"] == "size" and prop["values"] == [12.0]
  (row,) = prop["per_value"]
  # The sweep inserted at least one tumor; every number is a fraction of it.
  assert row["cases"] == 1 and row["lesions"] >= 1 and 0 <= row["detected"] <= row["lesions"]
  assert 0.0 <= row["sensitivity"] <= 1.0 and 0.0 <= row["dsc"] <= 1.0
  assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (out / "sets" / "size" / "index.json").is_file()

  # An existing set is read, not regenerated: the same numbers.
  again = trained["tmp"] / "bench_again"
  assert _main(trained, again, "--set", str(out / "sets" / "size")) == 0
  assert _json(again / "robustness.json")["results"][0]["per_value"] == [row]


def test_missing_or_corrupt_inputs_name_the_file(trained, capsys, tmp_path):
  set_dir = tmp_path / "no_set"
  assert _main(trained, tmp_path / "o1", "--set", str(set_dir)) == 2
  assert str(set_dir / "index.json") in capsys.readouterr().err

  bad = tmp_path / "bad_set"
  bad.mkdir()
  (bad / "index.json").write_text("{not json")
  assert _main(trained, tmp_path / "o2", "--set", str(bad)) == 2
  assert str(bad / "index.json") in capsys.readouterr().err

  no_ckpt = tmp_path / "no_ckpt"
  shutil.copytree(trained["run"], no_ckpt, ignore=shutil.ignore_patterns("checkpoints"))
  rc = robustness.main(["--workdir", str(no_ckpt), "--out", str(tmp_path / "o3"),
                        "--set", str(bad)])
  assert rc == 2 and "checkpoint" in capsys.readouterr().err

  corrupt = tmp_path / "corrupt"
  shutil.copytree(trained["run"], corrupt)
  for f in (corrupt / "checkpoints").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  rc = robustness.main(["--workdir", str(corrupt), "--out", str(tmp_path / "o4"),
                        "--set", str(bad)])
  err = capsys.readouterr().err
  assert rc == 2 and str(corrupt) in err and "checkpoints" in err
