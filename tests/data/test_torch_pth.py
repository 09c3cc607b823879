"""PyTorch .pth files read without PyTorch: values from a file torch.save wrote, code refused."""

import pathlib
import sys
import zipfile

import numpy as np
import pytest

from dassemble_jax.data import torch_pth
from dassemble_jax.data.errors import DataFormatError, UnsafePickleError

REF = pathlib.Path(__file__).parents[1] / "models" / "anchor_reference"
sys.path.insert(0, str(REF.parent))
import pth_writer


def test_reads_what_torch_wrote():
  # torch 2.13 torch.save: float32, a transposed view, a row sharing the view's storage at an
  # offset, float16, bfloat16, int64, bool, a 0-d tensor, an nn.Parameter.
  got = torch_pth.load_pth(REF / "format_fixture.pth")
  expected = np.load(REF / "format_fixture_expected.npz")
  assert list(got) == ["float32", "transposed", "shared_row", "float16", "bfloat16", "int64",
                       "bool", "scalar", "param"]
  for key in expected.files:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  assert got["transposed"].shape == (6, 4) and got["float16"].dtype == np.float16
  assert got["bfloat16"].dtype == np.float32 and got["int64"].dtype == np.int64
  assert got["scalar"].shape == () and got["bool"].dtype == np.bool_


def test_code_global_refused_before_it_runs(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pth"
  pth_writer.save({"w": np.ones(2, np.float32),
                   "x": pth_writer.call("os", "system", f"touch {marker}")}, path)
  with pytest.raises(UnsafePickleError, match=r"evil.pth: refused pickle global os.system"):
    torch_pth.load_pth(path)
  assert not marker.exists()
  pth_writer.save({"x": pth_writer.call("builtins", "eval", "1+1")}, path)
  with pytest.raises(UnsafePickleError, match="builtins.eval"):
    torch_pth.load_pth(path)


def test_not_a_pth(tmp_path):
  legacy = tmp_path / "legacy.pth"
  legacy.write_bytes(b"\x80\x02}q\x00.")  # a bare pickle: torch.save before 1.6
  with pytest.raises(DataFormatError, match="legacy pre-1.6"):
    torch_pth.load_pth(legacy)
  good = tmp_path / "good.pth"
  pth_writer.save({"w": np.arange(10, dtype=np.float32)}, good)
  # A storage shorter than the tensor it backs (truncated download).
  broken = tmp_path / "broken.pth"
  with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
    for name in src.namelist():
      data = src.read(name)
      dst.writestr(name, data[:16] if name.endswith("data/0") else data)
  with pytest.raises(DataFormatError, match="broken.pth: storage data/0 holds 4 elements"):
    torch_pth.load_pth(broken)
  with pytest.raises(DataFormatError, match="no such file"):
    torch_pth.load_pth(tmp_path / "missing.pth")
