"""The classification tables of results/README.md and README.md against their stored runs.

Reads only the stored JSON under results/ (no training): every table's .md is recomputed from its
runs, every table row, verdict line and decimal number that the READMEs' classification text
shows must come out of that recomputation, and every paired row the READMEs show is recomputed
once more with scipy.stats straight from the runs. So text and data cannot drift apart.
"""

import json
import pathlib
import re

import numpy as np
import pytest
import scipy.stats

from dassemble_jax.classification import paired_report, paper_numbers
from dassemble_jax.jobs import size_sweep, tables

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
DECIMAL = re.compile(r"(?<![\w.])[+-]?\d+\.\d+")


def stored_tables():
  """(table, folder) of every stored table run under results/."""
  out = []
  for runs in sorted(RESULTS.rglob("*_runs.json")):
    table = runs.name[:-len("_runs.json")]
    # Parts of a table (--only; {table}_part.json) are joined into their table's folder.
    if table in tables.TABLES and (runs.parent / f"{table}.json").exists():
      out.append((table, runs.parent))
  return out


def readme_texts() -> dict[str, str]:
  """results/README.md, and README.md's classification sections."""
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  out = {"results/README.md": (RESULTS / "README.md").read_text(encoding="utf-8")}
  for title in ("## Reproducing the paper", "## More results"):
    start = readme.index(title)
    end = readme.find("\n## ", start + len(title))
    out[f"README.md {title}"] = readme[start:end if end > 0 else None]
  return out


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
  """{path: markdown} recomputed from the stored runs (tables and the size sweep)."""
  out = {str(folder / f"{table}.md"): tables.stored_markdown(table, str(folder))
         for table, folder in stored_tables()}
  sweep = RESULTS / "size_sweep"
  if (sweep / "size_sweep.json").exists():
    stored = json.loads((sweep / "size_sweep.json").read_text(encoding="utf-8"))
    folders = [str(ROOT / r["folder"]) for r in stored["rows"]]
    out[str(sweep / "size_sweep.md")] = _sweep_markdown(folders)
  return out


def _sweep_markdown(folders) -> str:
  rows = size_sweep.summarise(folders)
  return size_sweep.report_markdown(rows)


def test_there_are_stored_tables():
  names = {t for t, _ in stored_tables()}
  assert {"odd_even", "overlap", "zero", "example2"} <= names


def test_every_stored_report_is_its_runs(generated):
  for path, md in generated.items():
    assert pathlib.Path(path).read_text(encoding="utf-8") == md, path


def test_every_readme_row_and_verdict_comes_from_the_runs(generated):
  gen = "\n".join(generated.values())
  for name, text in readme_texts().items():
    for line in text.splitlines():
      if line.startswith("|") and not set(line) <= set("|-: "):
        assert line in gen, f"{name}: table row not recomputed from stored runs: {line}"
      if line.startswith("- ") and " seeds)" in line:
        assert line in gen, f"{name}: verdict not recomputed from stored runs: {line}"


def test_every_readme_decimal_comes_from_the_runs(generated):
  allowed = set(DECIMAL.findall("\n".join(generated.values())))
  allowed |= {f"{v:.1f}" for t in paper_numbers.SEED.values() for col in t.values()
              for v in col.values()}
  allowed |= {tok.lstrip("+-") for tok in allowed}  # prose may quote a difference unsigned
  for name, text in readme_texts().items():
    for tok in DECIMAL.findall(text):
      assert tok in allowed, f"{name}: the number {tok} is not in any recomputed table"


def _cells(line):
  return [c.strip() for c in line.strip("|").split("|")]


def test_readme_paired_rows_recomputed_with_scipy(generated):
  checked = 0
  for text in readme_texts().values():
    for line in text.splitlines():
      cells = _cells(line) if line.startswith("|") else []
      if len(cells) != 9 or " vs " not in cells[0]:
        continue
      path = next(p for p, md in generated.items() if line in md.splitlines())
      folder = pathlib.Path(path).parent
      table = pathlib.Path(path).stem
      runs = json.loads((folder / f"{table}_runs.json").read_text(encoding="utf-8"))
      a, b = cells[0].split(" vs ")
      cls = cells[1]
      classes = ([cls] if cls != "mean" else
                 next(c["classes"] for c in json.loads(
                     (folder / f"{table}.json").read_text(encoding="utf-8"))["paired"]
                      if c["a"] == a and c["b"] == b))
      sa = {r["seed"]: r for r in runs if r["setting"] == a}
      sb = {r["seed"]: r for r in runs if r["setting"] == b}
      seeds = sorted(set(sa) & set(sb))
      d = np.array([np.mean([100 * (sa[k]["test_auc"][c] - sb[k]["test_auc"][c])
                             for c in classes]) for k in seeds])
      t = scipy.stats.ttest_1samp(d, 0.0)
      ci = t.confidence_interval(0.95)
      assert int(cells[2]) == len(seeds)
      assert cells[3] == f"{d.mean():+.2f}"
      assert cells[4] == f"[{ci.low:+.2f}, {ci.high:+.2f}]"
      assert cells[5] == paired_report.fmt_p(t.pvalue)
      nonzero = d[d != 0]
      if 0 < len(nonzero) == len(np.unique(np.abs(nonzero))):  # scipy's exact test: no ties
        w = scipy.stats.wilcoxon(nonzero, method="exact").pvalue
        assert cells[6] == paired_report.fmt_p(w)
      assert cells[7] == f"{int(np.sum(d > 0))}/{len(seeds)}"
      checked += 1
  assert checked >= 10
