"""Teach a trained Universal Model a class none of its sources annotated, by fine-tuning.

  python -m dassemble_jax.main --config=configs/universal_add_class.py --workdir=DIR

Why text codes make this cheap: every parameter of the model is shared by all classes (the
controller turns [image code, class code] into each class's head), so a class is one row of the
embedding table, i.e. one prompt. A model that never saw a label of the class already has a
head for it; fine-tuning on a dataset that annotates it teaches it, with no new output layer.

`run(config, workdir)`:
1. data: with no datasets named, the phantom sources are converted into DIR/data (as in the
   universal job); the pretraining sources (`add_class.pretrain_sources`) annotate none of the
   new classes, the fine-tuning sources (`add_class.finetune_sources`) do;
2. 'pretrained' (DIR/runs/pretrained): a model of the pretraining sources, or the trained run
   named by `init_from` (then not retrained);
3. 'finetuned' (DIR/runs/finetuned): starts from the pretrained model's best checkpoint
   (`train.init_from_run`: parameters kept, optimiser and schedule fresh) and trains on the
   new sources (with `add_class.rehearse`, plus the pretraining sources) for
   `add_class.finetune_steps` at `add_class.finetune_learning_rate`;
4. 'scratch' (DIR/runs/scratch): the same sources and steps from a random start, at the
   config's own learning rate: what fine-tuning is measured against;
5. all three on the held-out cases: per-class DSC (each model on the classes it was taught; the
   fine-tuned model on the old and the new ones), the new classes and the old ones summarised
   (did fine-tuning learn the new class, and did it keep the old ones?), DIR/add_class.txt,
   DIR/add_class.json and DIR/overlays.png (held-out cases of the new class first).

With converted real datasets: `--config.init_from=OLD/runs/assembly` (required; its class
table is used unless `model.embedding_table` names another) and `--config.data.shard_dirs` =
the datasets annotating the new class, plus old ones to rehearse (`test_dirs`, `val_dirs` as in
the universal job). The classes of the 32-class taxonomy are the output space (labels are
stored as 32-bit masks): a class outside it needs a row in `ct/taxonomy.py` and is not possible
without widening the masks.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from dassemble_jax.segmentation import assembly_data, evaluate, reports, train_loop, trained_run


def _folders(config, workdir: str) -> dict:
  """{'pretrain', 'new', 'finetune', 'test', 'val': lists of converted folders}; 'new' are the
  sources annotating the new classes, 'finetune' those plus, with rehearsal, the pretraining
  sources."""
  d, a = config.data, config.add_class
  if d.shard_dirs:
    if not config.init_from:
      raise ValueError("data.shard_dirs names the datasets of the new class; name the trained "
                       "model to extend with --config.init_from=DIR/runs/<model>")
    return {"pretrain": [], "new": list(d.shard_dirs), "finetune": list(d.shard_dirs),
            "test": list(d.test_dirs), "val": list(d.get("val_dirs", ()) or ())}
  overlap = set(a.pretrain_sources) & set(a.finetune_sources)
  if overlap:
    raise ValueError(f"add_class: {sorted(overlap)} both pretrain and fine-tune; the point is a "
                     "class the pretrained model never saw")
  data = assembly_data.phantom_data(config, os.path.join(workdir, "data"))
  pick = lambda names: [str(data["train"][n]) for n in names]
  new = pick(a.finetune_sources)
  rehearsal = pick(a.pretrain_sources) if a.rehearse else []
  return {"pretrain": pick(a.pretrain_sources), "new": new, "finetune": new + rehearsal,
          "test": [str(p) for p in data["test"].values()],
          "val": [str(p) for p in data["val"].values()]}


def class_groups(pretrained: np.ndarray, new_dirs) -> dict[str, np.ndarray]:
  """(32,) bool masks: 'new' (taught by the new sources only), 'old' (by the pretraining only:
  does fine-tuning keep them?) and 'both'."""
  new = trained_run.trained_class_mask(list(new_dirs))
  return {"new": new & ~pretrained, "old": pretrained & ~new, "both": pretrained & new}


def _evaluate_run(run_dir: str, test_dirs) -> dict:
  """The held-out evaluation of a trained folder (its best checkpoint), with its own config;
  'masks' holds the predictions ({case: (X, Y, Z, 32) bool})."""
  results, step = evaluate.evaluate_run(run_dir, test_dirs)
  reports.write_results(run_dir, results, title=os.path.basename(os.path.normpath(run_dir)))
  return {"step": step, "masks": results["masks"],
          "eval": {k: v for k, v in results.items() if k != "masks"}}


def summary_lines(results: dict, groups: dict[str, np.ndarray]) -> list[str]:
  """Mean held-out DSC of each model over each group of classes ('-': none scored)."""
  lines = []
  for label, mask in groups.items():
    names = [trained_run.CLASS_NAMES[k] for k in np.flatnonzero(mask)]
    cells = []
    for model, r in results.items():
      dsc = r["eval"]["summary"]["all"]["dsc"]
      vals = [float(dsc[c]) for c in names
              if dsc.get(c) is not None and not math.isnan(float(dsc[c]))]
      cells.append(f"{model} {np.mean(vals):.3f}" if vals else f"{model} -")
    if names:
      lines.append(f"{label} classes ({', '.join(names)}): " + ", ".join(cells))
  return lines


def run(config, workdir: str) -> dict:
  """The whole job (see the module docstring); returns the JSON-able summary."""
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  a = config.add_class
  folders = _folders(config, workdir)
  print(f"data ready in {time.perf_counter() - t0:.1f} s", flush=True)
  if config.model.class_code == "text" and not config.model.embedding_table:
    # One table for all three models: the fine-tuned one must read the codes it was trained
    # with, so a given model brings its own (a new table: --config.model.embedding_table).
    if config.init_from:
      table_path = os.path.join(str(config.init_from), trained_run.EMBEDDINGS_FILE)
    else:
      table_path = os.path.join(workdir, trained_run.EMBEDDINGS_FILE)
      train_loop.class_table(config, workdir)
    print(f"class codes: {table_path}", flush=True)
    config = assembly_data.with_fields(config, **{"model.embedding_table": table_path})
  common = {"data.test_dirs": tuple(folders["test"]), "data.val_dirs": tuple(folders["val"])}

  results, masks = {}, {}  # masks: {model: {held-out case: (X, Y, Z, 32) bool}}, for overlays
  pretrained_dir = str(config.init_from) or os.path.join(workdir, "runs", "pretrained")
  if config.init_from:
    print(f"\n=== model 'pretrained': {pretrained_dir} (given) ===", flush=True)
    results["pretrained"] = _evaluate_run(pretrained_dir, folders["test"])
    masks["pretrained"] = results["pretrained"].pop("masks")
  else:
    print(f"\n=== model 'pretrained': {len(folders['pretrain'])} source(s), "
          f"{a.pretrain_steps} steps ===", flush=True)
    cfg = assembly_data.with_fields(config, **common, **{
        "data.shard_dirs": tuple(folders["pretrain"]), "num_steps": int(a.pretrain_steps)})
    out = train_loop.train_and_evaluate(cfg, pretrained_dir)
    masks["pretrained"] = out.pop("masks", {})
    results["pretrained"] = out

  finetune = {**common, "data.shard_dirs": tuple(folders["finetune"]),
              "num_steps": int(a.finetune_steps)}
  for name, fields in (("finetuned", {"init_from": pretrained_dir,
                                      "learning_rate": float(a.finetune_learning_rate)}),
                       ("scratch", {"init_from": ""})):
    print(f"\n=== model '{name}': {len(folders['finetune'])} source(s), {a.finetune_steps} "
          f"steps{' from ' + pretrained_dir if fields['init_from'] else ' from scratch'} ===",
          flush=True)
    cfg = assembly_data.with_fields(config, **finetune, **fields)
    out = train_loop.train_and_evaluate(cfg, os.path.join(workdir, "runs", name))
    masks[name] = out.pop("masks", {})
    results[name] = out

  summary = {"results": results}
  if folders["test"] and all("eval" in r for r in results.values()):
    groups = class_groups(trained_run.run_trained_classes(pretrained_dir), folders["new"])
    text, table = reports.comparison_table(
        results, title="pretrained; fine-tuned from it; the same data and steps from scratch")
    text = "\n".join([text, *summary_lines(results, groups)])
    print("\n" + text, flush=True)
    summary.update(comparison=table, classes={
        label: [trained_run.CLASS_NAMES[k] for k in np.flatnonzero(m)]
        for label, m in groups.items()})
    reports.write_text(os.path.join(workdir, "add_class.txt"), text + "\n")
    if jax.process_index() == 0:
      # Cases that annotate a new class first: that is where the three models differ most.
      cases = evaluate.load_cases(folders["test"])
      cases.sort(key=lambda c: not (c.annotated.astype(bool) & groups["new"]).any())
      shown = reports.pick_cases(cases, int(config.eval.num_overlays))
      path = reports.overlay_png(os.path.join(workdir, "overlays.png"), shown, masks)
      print(f"overlays: {path}", flush=True)
  summary["seconds"] = time.perf_counter() - t0
  reports.write_summary(os.path.join(workdir, "add_class.json"), summary)
  print(f"job done in {summary['seconds']:.0f} s; results in {workdir}", flush=True)
  return summary
