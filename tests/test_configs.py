"""Every config and its tiny variant load; bad arguments and unknown fields fail clearly."""

import pathlib
import subprocess
import sys

import pytest

from configs import mnist_odd_even, mnist_overlap, mnist_zero

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module,settings", [
    (mnist_odd_even, ["D0", "D1", "D0+D1"]),
    (mnist_overlap, ["D0", "D1", "partial", "semi", "full"]),
    (mnist_zero, ["zero", "all"]),
])
def test_settings_and_tiny_variants(module, settings):
  for s in settings:
    full, tiny = module.get_config(s), module.get_config(f"{s},tiny")
    assert full.data.label_space and tiny.data.label_space == full.data.label_space
    assert all(t["num_train"] <= 48 for t in tiny.data.sources)
  with pytest.raises(ValueError, match="expected one of"):
    module.get_config("nonsense")


def test_overlap_full_setting_annotates_every_class():
  c = mnist_overlap.get_config("full")
  for s in c.data.sources:
    assert set(s["classes"]) == set(c.data.label_space)


def test_unknown_config_field_is_a_clear_error(tmp_path):
  out = subprocess.run([sys.executable, "-m", "dassemble_jax.main",
                        "--config=configs/mnist_zero.py:tiny", f"--workdir={tmp_path}",
                        "--config.no_such_field=3"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=False)
  assert out.returncode != 0
  assert "no_such_field" in out.stderr
  assert not any(tmp_path.iterdir())  # nothing half-written


def test_semi_setting_is_partial_plus_semisupervision():
  semi, partial = mnist_overlap.get_config("semi"), mnist_overlap.get_config("partial")
  assert semi.data == partial.data
  assert semi.semisup.enabled and not partial.semisup.enabled
  # A quarter of the training steps over 600 images: 12 epochs x 600 / 16 / 4; follows overrides.
  assert semi.semisup.rampup_steps == 112
  semi.num_epochs = 4
  assert semi.semisup.rampup_steps == 37
  assert mnist_overlap.get_config("semi,tiny").semisup.rampup_steps == 2 * 600 // 16 // 4


def test_every_package_module_imports_in_one_process():
  """No module of the package imports configs/, and no two define the same absl flag."""
  code = ("import pkgutil, importlib, sys, dassemble_jax\n"
          "for m in pkgutil.walk_packages(dassemble_jax.__path__, 'dassemble_jax.'):\n"
          "  importlib.import_module(m.name)\n"
          "assert not any(n == 'configs' or n.startswith('configs.') for n in sys.modules), "
          "sorted(n for n in sys.modules if n.startswith('configs'))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
