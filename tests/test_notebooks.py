"""The colabs, executed top to bottom in their tiny mode (so they can never silently rot)."""

import pathlib

import nbclient
import nbformat

from tests.fake_cifar import write_cifar_pickles
from tests.fake_mnist import write_fake_mnist

REPO = pathlib.Path(__file__).resolve().parents[1]


def _execute(name: str, params: str) -> nbformat.NotebookNode:
  nb = nbformat.read(REPO / "colabs" / name, as_version=4)
  cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"{name}: expected one cell tagged 'parameters'"
  cells[0].source += "\n# --- test overrides ---\n" + params + f"\nREPO_DIR = {str(REPO)!r}\n"
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO / "colabs")}})
  client.execute(env={"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  return nb


def _text(nb) -> str:
  out = []
  for c in nb.cells:
    for o in c.get("outputs", []):
      out.append(o.get("text", ""))
      out.extend(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
  return "\n".join(out)


def _images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_mnist_notebook_tiny(tmp_path):
  idx = write_fake_mnist(tmp_path / "idx", num_train=10200, num_test=100)
  nb = _execute("mnist_label_assemble.ipynb",
                f"TINY = True\nSEEDS = 2\nDATA_PATH = {str(idx)!r}\n"
                f"WORKDIR = {str(tmp_path / 'w')!r}\nTABLES = ['odd_even']")
  text = _text(nb)
  assert "D0+D1 (ours)" in text and "D0+D1 (seed)" in text  # the table beside the seed's
  assert "gain of D0+D1 over the own dataset" in text
  assert _images(nb) >= 2  # the table's bar chart and the gain plot
  assert (tmp_path / "w" / "odd_even.json").exists()


def test_cifar_notebook_tiny(tmp_path, monkeypatch):
  root = write_cifar_pickles(tmp_path / "cifar", per_batch=40)
  nb_params = (f"TINY = True\nSEEDS = 1\nDATA_PATH = {str(root)!r}\n"
               f"WORKDIR = {str(tmp_path / 'w')!r}\n"
               # 200 fake training images: keep 60 for validation instead of 5,000.
               f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
               "import dassemble_jax.data.cifar as _c\n"
               "_c.load_cifar10_pickles.__defaults__ = (60,)")
  nb = _execute("cifar_label_assemble.ipynb", nb_params)
  text = _text(nb)
  assert "cat (ours)" not in text and "D0+D1 (ours)" in text and "seed paper: cat" in text
  assert _images(nb) >= 2
