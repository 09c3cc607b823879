"""The viewer sidecars of label maps (3D Slicer, ITK-SNAP, JSON): one row per universal class."""

import json

from dassemble_jax.ct import label_tables, taxonomy


def test_viewer_files(tmp_path):
  ctbl = [line.split() for line in label_tables.slicer_color_table().splitlines()
          if not line.startswith("#")]
  assert len(ctbl) == 33 and ctbl[0][:2] == ["0", "background"]
  assert [(int(r[0]), r[1]) for r in ctbl[1:]] == [(c.id, c.name) for c in taxonomy.CLASSES]
  assert all(len(r) == 6 and all(0 <= int(v) <= 255 for v in r[2:]) for r in ctbl)
  itk = [line for line in label_tables.itksnap_label_file().splitlines()
         if not line.startswith("#")]
  assert len(itk) == 33 and itk[27].split()[0] == "27" and '"Liver Tumor"' in itk[27]
  paths = label_tables.write_viewer_files(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths) == [
      "classes.json", "labels.ctbl", "labels_itksnap.txt"]
  names = json.loads((tmp_path / "classes.json").read_text())
  assert names["0"] == "background" and names["6"] == "liver" and len(names) == 33
