"""atomic.py: a file appears whole under its name, or not at all."""

import json

import pytest

from dassemble_jax import atomic


def test_write_json_and_text_appear_whole_with_nothing_left_beside(tmp_path):
  atomic.write_json(tmp_path / "sub" / "a.json", {"x": [1, 2]})
  atomic.write_text(tmp_path / "b.txt", "hello\n")
  atomic.write_bytes(tmp_path / "c.bin", b"\x00\x01")
  assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"x": [1, 2]}
  assert (tmp_path / "b.txt").read_text() == "hello\n"
  assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "c.bin", "sub"]
  assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "table.md"
  path.write_text("old")
  with pytest.raises(RuntimeError, match="disk full"), atomic.open_for_write(path) as f:
    f.write("half of the new")
    raise RuntimeError("disk full")
  assert path.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["table.md"]
  with pytest.raises(TypeError):  # not JSON-serialisable: nothing written under the name
    atomic.write_json(tmp_path / "new.json", {"x": object()})
  assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


@pytest.mark.parametrize("name, suffix", [("scan.nii.gz", ".nii.gz"), ("plot.png", ".png"),
                                          ("notes", "")])
def test_temporary_path_keeps_the_suffix_and_sits_beside(tmp_path, name, suffix):
  """Libraries that pick a format from the name (nibabel, matplotlib) see the final suffix."""
  with atomic.temporary_path(tmp_path / name) as tmp:
    assert tmp.parent == tmp_path and tmp.name.endswith(suffix) and tmp.name != name
    assert not (tmp_path / name).exists()
    tmp.write_bytes(b"data")
  assert (tmp_path / name).read_bytes() == b"data"
  assert [p.name for p in tmp_path.iterdir()] == [name]
