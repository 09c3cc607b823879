"""Importing the anchor's Universal Model checkpoints, checked against PyTorch.

References (tests/models/anchor_reference/, made once by tests/models/make_anchor_reference.py
with torch 2.13 + MONAI 1.6.1): PyTorch's logits of the anchor's U-Net (written from its layer
table) and of MONAI's SwinUNETR with the anchor's heads, at reduced width, with seeded NumPy
weights (anchor_weights.py: rebuilt here, so no weight file is committed); the full-width
key/shape tables; the small U-Net on a real CT through MONAI's transforms and
sliding_window_inference.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import jax
import nibabel as nib
import numpy as np
import pytest
from flax import nnx

from dassemble_jax import fetch
from dassemble_jax.ct import taxonomy
from dassemble_jax.models import swin_unetr
from dassemble_jax.segmentation import anchor_import, train_loop, train_step, trained_run

REF = pathlib.Path(__file__).parents[1] / "models" / "anchor_reference"
sys.path.insert(0, str(REF.parent))
import anchor_weights
import pth_writer

GOLDENS = np.load(REF / "goldens.npz")
CHECKED = list(GOLDENS["checked"])
INPUTS = {"unet": ((2, 1, 24, 24, 16), 21), "swin": ((1, 1, 64, 64, 64), 22)}


def anchor_state(name: str) -> collections.OrderedDict:
  """The reduced-width model's state dict under the anchor's names, buffers included."""
  table = json.loads((REF / f"{name}_small.json").read_text())
  weights = anchor_weights.random_state_dict(table["keys"], table["seed"])
  state = collections.OrderedDict()
  for key in table["keys"]:
    if key.endswith("num_batches_tracked"):
      state[key] = np.zeros((), np.int64)
    elif key.endswith("relative_position_index"):
      state[key] = swin_unetr.relative_position_index((7, 7, 7)).astype(np.int64)
    elif key == "organ_embedding":
      state[key] = GOLDENS[f"{name}_table"]
    else:
      state[key] = weights[key]
  return state


def golden_input(name):
  shape, seed = INPUTS[name]
  return anchor_weights.golden_input(shape, seed).transpose(0, 2, 3, 4, 1)  # NDHWC


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "dassemble_jax.import_checkpoint", *args],
                        capture_output=True, text=True, check=False,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
  """The small U-Net saved as the anchor publishes it ({'net': ...}, 'module.' keys) and
  imported by the command line, with its class table given as a .pth."""
  root = tmp_path_factory.mktemp("anchor")
  state = anchor_state("unet")
  pth_writer.save({"net": collections.OrderedDict(("module." + k, v) for k, v in state.items()),
                   "epoch": 7}, root / "unet.pth")
  pth_writer.save(GOLDENS["unet_table"], root / "txt_encoding.pth")
  result = run_cli(f"--checkpoint={root / 'unet.pth'}", f"--class_table={root / 'txt_encoding.pth'}",
                   f"--out={root / 'run'}")
  assert result.returncode == 0, result.stderr
  assert "imported unet (width 2" in result.stdout
  return root / "run"


def test_unet_import_reproduces_pytorch(unet_run):
  model = trained_run.load_model(str(unet_run))
  # The run records the anchor's inference: its BatchNorm (per-window batch statistics), MONAI's
  # windows and weights, logits averaged, MONAI's resampled grid, the foreground crop.
  assert model.config.model.eval_batch_stats and model.spec.spacing == 1.5
  assert (model.spec.blend, model.spec.average, model.spec.resample_rule,
          model.spec.crop_foreground) == ("monai", "logits", "monai", True)
  logits = np.asarray(model.apply_fn(model.variables, golden_input("unet")))
  got = logits[..., CHECKED].transpose(0, 4, 1, 2, 3)
  # Two samples in one call, each normalised by its own statistics (PyTorch ran them one by one).
  np.testing.assert_allclose(got, GOLDENS["unet_logits"], atol=1e-4, rtol=0)
  summary = json.loads((unet_run / anchor_import.IMPORT_FILE).read_text())
  assert summary["layout"] == {"wrapper": "net", "prefix": "module."}
  assert [c["universal_id"] for c in summary["classes"]] == list(range(1, 33))


def test_swin_import_reproduces_pytorch():
  # Bare state dict, no prefix, backbone keys without 'backbone.' (as pred_pseudo.py re-keys).
  state = {k.removeprefix("backbone."): v for k, v in anchor_state("swin").items()}
  state, layout = anchor_import.normalize_state_dict(state, "swin")
  assert layout == {"wrapper": None, "prefix": None}
  arch, config, params, _stats = anchor_import.convert(state)
  assert (arch.backbone, arch.width, arch.embed_dim) == ("swin", 12, 16)
  # The graph without drawing random weights (eager init of the Swin takes ~20 s on a CPU).
  abstract = nnx.eval_shape(lambda: train_step.build_model(config, 16, rngs=nnx.Rngs(0)))
  abstract.eval()
  model = nnx.merge(nnx.graphdef(abstract), nnx.State(params))
  logits = np.asarray(jax.jit(lambda x, t: model(x, t))(golden_input("swin"),
                                                        GOLDENS["swin_table"]))
  got = logits[..., CHECKED].transpose(0, 4, 1, 2, 3)
  np.testing.assert_allclose(got[:, :, 20:44, 20:44, 20:44], GOLDENS["swin_logits_block"],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(got[:, :, ::3, ::3, ::3], GOLDENS["swin_logits_lattice"],
                             atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, backbone_m, total_m", [("unet", 19.07, 19.42),
                                                       ("swin", 62.19, 62.60)])
def test_full_width_tables_are_what_the_importer_accepts(name, backbone_m, total_m):
  table = json.loads((REF / f"{name}_full.json").read_text())
  shapes = table["keys"]
  arch, _config, mapping = anchor_import.plan(shapes, name)
  assert arch.width == (32 if name == "unet" else 48) and arch.embed_dim == 512
  used = {key for key, _ in mapping.values()}
  consumed = set(shapes) - used
  # Nothing but the documented no-destination keys is left over.
  assert all(k.endswith(("num_batches_tracked", "relative_position_index"))
             or k.startswith("backbone.out.") or k == "organ_embedding" for k in consumed)
  params = table["parameters"]
  assert round(params["backbone"] / 1e6, 2) == backbone_m
  assert round(params["total"] / 1e6, 2) == total_m
  # Our model holds every PyTorch parameter but MONAI's unused output block.
  _, ours, _ = anchor_import.abstract_model(arch)
  n_ours = sum(int(np.prod(v.shape)) for v in ours.values())
  assert n_ours == params["total"] - (params["backbone"]
                                      - params["backbone_without_unused_out_block"])


def test_missing_extra_misshaped_keys_are_named():
  shapes = {k: v.shape for k, v in anchor_state("unet").items()}
  broken = dict(shapes)
  del broken["backbone.up_tr128.ops.1.bn1.running_var"]
  broken["backbone.extra.weight"] = (3,)
  broken["controller.weight"] = (150, 512, 1, 1, 1)
  with pytest.raises(anchor_import.AnchorImportError) as e:
    anchor_import.plan(broken, "x.pth")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("x.pth: not the anchor's unet")
  assert "1 missing: backbone.up_tr128.ops.1.bn1.running_var" in msg
  assert "1 unexpected: backbone.extra.weight" in msg
  assert "1 misshaped: controller.weight [150, 512, 1, 1, 1]" in msg


def test_cli_refusals_leave_nothing(tmp_path):
  marker = tmp_path / "ran"
  state = anchor_state("unet")
  pth_writer.save({"net": state}, tmp_path / "good.pth")
  pth_writer.save(np.zeros((32, 15), np.float16), tmp_path / "table.pth")
  result = run_cli(f"--checkpoint={tmp_path / 'good.pth'}", f"--class_table={tmp_path / 'table.pth'}",
                   f"--out={tmp_path / 'run'}")
  assert result.returncode == 2 and not (tmp_path / "run").exists()
  assert result.stderr == (f"error: {tmp_path / 'table.pth'}: class table of shape (32, 15); the "
                           "checkpoint's text_to_vision needs (32, 16)\n")
  del state["GAP.3.bias"]
  pth_writer.save({"net": state}, tmp_path / "missing.pth")
  pth_writer.save({"net": state, "x": pth_writer.call("os", "system", f"touch {marker}")},
                  tmp_path / "evil.pth")
  for name, expected in [("missing.pth", "1 missing: GAP.3.bias"),
                         ("evil.pth", "refused pickle global os.system")]:
    result = run_cli(f"--checkpoint={tmp_path / name}", f"--out={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name}: "), lines
    assert expected in lines[0]
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no temp folder
  assert not marker.exists()


def test_class_names_map_onto_the_taxonomy():
  assert anchor_import.ANCHOR_CLASS_NAMES[7] == "Arota"          # the anchor's prompt typo
  assert anchor_import.ANCHOR_CLASS_NAMES[24] == "Celiac Truck"
  ids = anchor_import.anchor_to_universal_ids()
  assert ids == list(range(1, taxonomy.NUM_CLASSES + 1))
  assert taxonomy.CLASSES[ids[7] - 1].name == "aorta"
  assert taxonomy.CLASSES[ids[24] - 1].name == "celiac_trunk"


def test_fine_tuning_starts_from_the_imported_run(unet_run, tmp_path):
  run = trained_run.restore_run(str(unet_run))
  config = run.config.copy_and_resolve_references()
  config.num_steps = 2
  comp = train_step.compiled_for(config, run.table.shape[1])
  fresh = comp.init_state()
  state, step = train_loop.init_from_run(config, comp, fresh, run.table, str(unet_run),
                                         str(tmp_path / "finetune"))
  assert step == 0
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(run.state["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluation_accepts_the_imported_run(unet_run, tmp_path):
  """The held-out evaluation takes an imported run like one trained here: one small phantom
  spleen case, scored on the classes its source annotates with the run's own settings."""
  from dassemble_jax.ct import convert, phantom
  from dassemble_jax.segmentation import evaluate
  raw = phantom.write_raw_source("phantom_spleen", tmp_path / "raw", 1, seed=3,
                                 shape=(40, 36, 24), spacing=(3.0, 3.0, 4.0))
  shards = tmp_path / "shards"
  convert.convert_dataset(phantom.source_spec("phantom_spleen"), raw, shards, spacing=3.0,
                          progress=False)
  results, step = evaluate.evaluate_run(str(unet_run), [str(shards)])
  (case,) = results["cases"]
  assert case["source"] == "phantom_spleen"
  assert 0.0 <= case["dsc"]["spleen"] <= 1.0  # scored: the source annotates it
  scored = [name for name, v in case["dsc"].items() if np.isfinite(v)]
  assert scored == ["spleen"], scored  # every other class is unknown in this source
  assert step == 0


@pytest.mark.slow  # ~4 min on 2 CPU cores: 12 windows of 96^3 with 32 dynamic heads each
@pytest.mark.network_cache
def test_real_ct_matches_the_monai_pipeline(unet_run, tmp_path):
  """The small U-Net on TotalSegmentator's example CT, file to file through the run's predictor,
  against MONAI (Orientationd RAS, Spacingd 1.5 mm, ScaleIntensityRanged, CropForegroundd,
  sliding_window_inference(96^3, 0.5, gaussian, one window a call), sigmoid > 0.5, Invertd).

  Conventions that differ from the project's own, all taken from the anchor for imported runs
  (the run's config records them): MONAI's grid ((n-1)*old/new + 1 voxels, not n*old/new), the
  foreground crop, MONAI's window starts (not evenly spread), its Gaussian clamped at 1e-3 in 3D
  (not floored per axis), logits averaged (not probabilities), BatchNorm on each window's own
  statistics. Post-processing is off: the reference has none."""
  archive = fetch.pip_download("totalsegmentator==2.18.0", sdist=True)
  with tarfile.open(archive) as tar:
    data = tar.extractfile("totalsegmentator-2.18.0/tests/reference_files/example_ct_sm.nii.gz")
    (tmp_path / "ct.nii.gz").write_bytes(data.read())
  model = trained_run.load_model(str(unet_run), postprocess=False)
  (result,) = model.predict_paths(tmp_path / "ct.nii.gz", tmp_path / "out", per_class=True)
  assert len(result.per_class) == 32
  shape = tuple(GOLDENS["pipeline_original_shape"])
  ref = np.unpackbits(GOLDENS["pipeline_original_masks"])[:3 * np.prod(shape)]
  ref = ref.reshape((3, *shape)).astype(bool)
  for i, k in enumerate(CHECKED):
    ours = np.asarray(nib.load(str(tmp_path / "out" / "ct" /
                                   f"{trained_run.CLASS_NAMES[k]}.nii.gz")).dataobj).astype(bool)
    agreement = float(np.mean(ours == ref[i]))
    print(f"{trained_run.CLASS_NAMES[k]}: agreement {agreement:.6f}, positives ours "
          f"{ours.mean():.4f} MONAI {ref[i].mean():.4f}")
    assert agreement >= 0.999, (trained_run.CLASS_NAMES[k], agreement, ours.mean(), ref[i].mean())
