"""Paired comparisons of a table's runs, its report and the size sweep, on hand-made runs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from dassemble_jax.classification import paired_report
from dassemble_jax.jobs import size_sweep, tables

ODD, EVEN = ["1", "3", "5", "7", "9"], ["0", "2", "4", "6", "8"]


def fake_odd_even_runs(num_seeds=6, gain=0.02, epochs=6, skip_seed=None):
  """Runs whose AUCs are simple functions of seed and class, with histories."""
  runs = []
  for setting, classes in (("D0", ODD), ("D1", EVEN), ("D0+D1", ODD + EVEN)):
    for k in range(num_seeds):
      if setting == "D0+D1" and k == skip_seed:
        continue
      auc = {c: 0.9 + 0.001 * int(c) + 0.003 * ((k * 7 + int(c)) % 5)
             + (gain + 0.004 * ((k + int(c)) % 3) if setting == "D0+D1" else 0.0)
             for c in classes}
      hist = [{"epoch": e + 1, "loss": 1.0 / (e + 1),
               "val_mean_auc": 0.99 - 0.3 / (e + 1) ** 2 + 0.001 * k} for e in range(epochs)]
      runs.append({"setting": setting, "seed": k, "label_space": classes, "test_auc": auc,
                   "mean_test_auc": float(np.mean(list(auc.values()))), "best_epoch": epochs,
                   "history": hist})
  return runs


def test_compare_matches_scipy_per_class_and_for_the_mean():
  runs = fake_odd_even_runs()
  rows = paired_report.compare(runs, "D0+D1", "D0", ODD)
  assert [r["class_"] for r in rows] == ODD + ["mean"]
  for r in rows[:-1]:
    a = [100 * x["test_auc"][r["class_"]] for x in runs if x["setting"] == "D0+D1"]
    b = [100 * x["test_auc"][r["class_"]] for x in runs if x["setting"] == "D0"]
    t = scipy.stats.ttest_rel(a, b)
    assert r["mean"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert r["t_p"] == pytest.approx(t.pvalue, rel=1e-9)
    assert r["wilcoxon_p"] == pytest.approx(scipy.stats.wilcoxon(a, b).pvalue, rel=1e-9)
    assert r["decision"] == ("reproduces" if t.pvalue < 0.05 and r["mean"] > 0
                             else "no difference")
  # The whole comparison: each seed's mean over the five classes.
  per_seed = [np.mean([100 * (x["test_auc"][c] - y["test_auc"][c]) for c in ODD])
              for x in runs if x["setting"] == "D0+D1"
              for y in runs if y["setting"] == "D0" and y["seed"] == x["seed"]]
  t = scipy.stats.ttest_rel(per_seed, np.zeros(len(per_seed)))
  assert rows[-1]["mean"] == pytest.approx(np.mean(per_seed))
  assert rows[-1]["t_p"] == pytest.approx(t.pvalue, rel=1e-9)
  assert rows[-1]["decision"] == "reproduces"  # +2 points, small spread


def test_pairs_only_common_seeds_and_the_verdict_line():
  runs = fake_odd_even_runs(skip_seed=2)
  rows = paired_report.compare(runs, "D0+D1", "D1", EVEN)
  assert all(r["seeds"] == [0, 1, 3, 4, 5] and r["n"] == 5 for r in rows)
  comps = paired_report.table_comparisons("odd_even", runs)
  line = paired_report.verdict(comps[0])
  up = [r["class_"] for r in comps[0]["rows"][:-1] if r["decision"] == "reproduces"]
  assert line.startswith(f"D0+D1 vs D0 (5 seeds): higher at p < 0.05 on {len(up)} of 5 classes")
  # A comparison of one class has no 'mean' row.
  assert len(paired_report.compare(runs, "D0+D1", "D1", ["0"])) == 1


def test_curve_summary_by_hand():
  runs = fake_odd_even_runs(num_seeds=2, epochs=6)
  s = paired_report.curve_summary(runs)["D0"]
  # 6 epochs: the last third starts at epoch ceil(4) = 4; rise = v(6) - v(4), same for each seed.
  assert s["last_third_epoch"] == 4
  assert s["rise_last_third_mean"] == pytest.approx(100 * (0.3 / 16 - 0.3 / 36))


def test_report_written_and_rendered_from_stored_runs(tmp_path):
  runs = fake_odd_even_runs()
  extra = {"seeds": 6, "tiny": False, "wall_s": 1.0, "program_groups": [], "vmapped": False,
           "subset_sizes": {"D0": [["D0", 500, 250]], "D1": [["D1", 500, 250]],
                            "D0+D1": [["D0", 500, 250], ["D1", 500, 250]]},
           "recipe": {"widths": [8, 16, 32], "epochs": 6, "batch": 16, "learning_rate": 3e-3,
                      "test_subset": 2000, "backend": "cpu"}}
  (tmp_path / "odd_even_runs.json").write_text(json.dumps(runs))
  paths = tables.write_report("odd_even", str(tmp_path), runs, extra)
  md = (tmp_path / "odd_even.md").read_text()
  assert "D0 500 training + 250 validation images" in md and "not vmapped" in md
  assert paired_report.markdown(paired_report.table_comparisons("odd_even", runs)) in md
  stored = json.loads((tmp_path / "odd_even.json").read_text())
  assert stored["vmapped"] is False and len(stored["paired"]) == 2
  assert (tmp_path / "odd_even_curves.png").stat().st_size > 0 and "curves" in paths
  (tmp_path / "odd_even.md").write_text("stale")
  tables.render("odd_even", str(tmp_path))
  assert (tmp_path / "odd_even.md").read_text() == md


def test_render_names_a_missing_file(tmp_path):
  with pytest.raises(SystemExit, match="error: .*odd_even_runs.json"):
    tables.render("odd_even", str(tmp_path))


def test_size_sweep_report(tmp_path):
  for n, gain in ((100, 0.05), (1000, 0.0)):
    d = tmp_path / f"n{n}"
    d.mkdir()
    (d / "odd_even_runs.json").write_text(json.dumps(fake_odd_even_runs(gain=gain)))
    (d / "odd_even.json").write_text(json.dumps(
        {"subset_sizes": {"D0": [["D0", n, n // 2]], "D1": [["D1", n, n // 2]]},
         "recipe": {"epochs": 8}}))
  out = size_sweep.write_report(str(tmp_path), [str(tmp_path / "n1000"), str(tmp_path / "n100"),
                                                str(tmp_path / "missing")])
  rows = out["rows"]
  assert [r["num_train"] for r in rows] == [100, 1000] and rows[0]["seeds"] == 6
  whole = paired_report.compare(fake_odd_even_runs(gain=0.05), "D0+D1", "D0", ODD)[-1]
  assert rows[0]["gain_over_D0"]["mean"] == pytest.approx(whole["mean"])
  assert (tmp_path / "size_sweep.png").stat().st_size > 0
  assert "| 100 | 8 | 6 |" in (tmp_path / "size_sweep.md").read_text()


def test_size_sweep_whole_set_row(tmp_path):
  d = tmp_path / "nall"
  d.mkdir()
  (d / "odd_even_runs.json").write_text(json.dumps(fake_odd_even_runs()))
  (d / "odd_even.json").write_text(json.dumps(
      {"subset_sizes": {"D0": [["D0", 25445, 5055]], "D1": [["D1", 24555, 4945]]},
       "recipe": {"epochs": 3}, "num_train_all": True}))
  rows = size_sweep.write_report(str(tmp_path), [str(d)])["rows"]
  assert rows[0]["all"] and rows[0]["num_train"] == 25445
  assert "| all: 25,445 (D0) / 24,555 (D1) | 3 | 6 |" in (tmp_path / "size_sweep.md").read_text()


def test_size_sweep_sizes_flag():
  assert size_sweep.parse_sizes("100, 3000,all") == [100, 3000, -1]
  assert size_sweep.epochs_for(-1) == size_sweep.ALL_EPOCHS
  assert size_sweep.epochs_for(100) == tables.sweep_epochs(100)
  assert size_sweep.folder_for("w", -1) == "w/nall" and size_sweep.folder_for("w", 30) == "w/n30"
  for bad in ("0", "-5", "lots"):
    with pytest.raises(ValueError, match="--sizes"):
      size_sweep.parse_sizes(bad)


def test_merge_joins_table_parts(tmp_path):
  runs = fake_odd_even_runs()
  extra = {"seeds": 6, "tiny": False, "wall_s": 2.0, "program_groups": [["D0", 6]],
           "vmapped": False, "subset_sizes": {"D0": [["D0", 500, 250]]},
           "recipe": {"widths": [8, 16, 32], "epochs": 6, "batch": 16, "learning_rate": 3e-3,
                      "test_subset": 2000, "backend": "cpu"}}
  parts = []
  for name, settings in (("a", ("D0", "D1")), ("b", ("D0+D1",))):
    d = tmp_path / name
    d.mkdir()
    (d / "odd_even_runs.json").write_text(json.dumps([r for r in runs
                                                      if r["setting"] in settings]))
    sizes = {s: [[s, 500, 250]] for s in settings}
    (d / "odd_even_part.json").write_text(json.dumps(dict(extra, subset_sizes=sizes)))
    parts.append(str(d))
  merged = tables.merge("odd_even", parts, str(tmp_path / "w"))
  assert merged["wall_s"] == 4.0 and set(merged["subset_sizes"]) == {"D0", "D1", "D0+D1"}
  md = (tmp_path / "w" / "odd_even.md").read_text()
  assert paired_report.markdown(paired_report.table_comparisons("odd_even", runs)) in md
  with pytest.raises(SystemExit, match="error: .*missing"):
    tables.merge("odd_even", [str(tmp_path / "missing")], str(tmp_path / "w2"))


def test_tables_whose_curves_were_still_rising_run_longer():
  """overlap, its semi-supervised ablation and Example II run LONGER_EPOCHS; the rest 15."""
  epochs = {t: {c.num_epochs for _, c in tables.settings(t)}
            for t in ("odd_even", "overlap", "semi_ablation", "zero", "example2")}
  assert epochs == {"odd_even": {tables.MNIST_EPOCHS}, "overlap": {tables.LONGER_EPOCHS},
                    "semi_ablation": {tables.LONGER_EPOCHS}, "zero": {tables.MNIST_EPOCHS},
                    "example2": {tables.LONGER_EPOCHS}}
  assert tables.LONGER_EPOCHS == 2 * tables.MNIST_EPOCHS
  # The semi-supervised ramp follows the table's epochs (it is a reference to num_epochs).
  semi = dict(tables.settings("overlap"))["+ semi-supervised"]
  ramp = semi.semisup.rampup_steps
  semi.num_epochs = tables.MNIST_EPOCHS
  assert ramp > 0 and abs(semi.semisup.rampup_steps * 2 - ramp) <= 1  # integer division
  # The :tiny configs keep their own few epochs.
  assert {c.num_epochs for _, c in tables.settings("overlap", tiny=True)} == {2}


def test_semi_ablation_compares_only_the_settings_it_ran():
  two = paired_report.comparisons("semi_ablation", ["D0+D1 partial", "pseudo-label term only",
                                                    "consistency term only"])
  assert [(c["a"], c["b"]) for c in two] == [("pseudo-label term only", "D0+D1 partial"),
                                             ("consistency term only", "D0+D1 partial")]
  four = paired_report.comparisons("semi_ablation", [name for name, _ in
                                                     tables.settings("semi_ablation")])
  assert ("consistency term at 1/4 weight", "consistency term only") in [
      (c["a"], c["b"]) for c in four] and len(four) == 4


@pytest.mark.parametrize("args,message", [
    (["dassemble_jax.jobs.size_sweep", "--sizes=100,lots"],
     "error: --sizes: 'lots' is not a positive number of images or 'all'"),
    (["dassemble_jax.jobs.tables", "--table=odd_even", "--num_train=0"],
     "error: --num_train must be positive or -1 (all), got 0"),
    (["dassemble_jax.jobs.tables", "--table=overlap", "--only=D9"],
     "error: --only: ['D9'] are not columns of overlap"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
  out = subprocess.run([sys.executable, "-m", *args, f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [message]
  assert not (tmp_path / "w").exists()
