"""A folder that is not a readable run is a ModelDirError naming the file, never a traceback."""

import json

import numpy as np
import pytest

from dassemble_jax.segmentation import trained_run


def _folder(tmp_path, config_text):
  (tmp_path / trained_run.CONFIG_FILE).write_text(config_text)
  np.save(tmp_path / trained_run.EMBEDDINGS_FILE, np.zeros((32, 8), np.float32))
  (tmp_path / trained_run.TRAINED_CLASSES_FILE).write_text(json.dumps(["liver"]))
  return tmp_path


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_config_that_is_not_a_run_config_names_the_file(tmp_path, text):
  run = _folder(tmp_path, text)
  with pytest.raises(trained_run.ModelDirError) as e:
    trained_run.restore_run(str(run))
  assert str(e.value).startswith(f"{run / trained_run.CONFIG_FILE}: not a run's config")


def test_a_folder_without_trained_classes_is_named(tmp_path):
  with pytest.raises(trained_run.ModelDirError) as e:
    trained_run.run_trained_classes(str(tmp_path))
  assert str(e.value).startswith(f"{tmp_path}: not a Universal Model run folder")
