"""Entry point: python -m dassemble_jax.main --config=configs/X.py[:arg] --workdir=DIR.

Initialises multi-host JAX (auto-detected on Cloud TPU and SLURM; explicit coordinator flags
otherwise), then runs the job the config names. Tests and notebooks call the job functions
directly, never this module.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs without a cluster "
                                   "manager); also needs --num_processes and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "'auto': initialise when a cluster (Cloud TPU, SLURM) or a "
                                 "coordinator is detected; 'on': always; 'off': single process.")


def _init_distributed() -> None:
  from dassemble_jax import distributed
  distributed.initialize(mode=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                         num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def _user_errors() -> tuple[type[BaseException], ...]:
  """Errors that mean bad input (a data file, a run folder, a label table), not a bug.

  Their messages already name the file and the problem, so main prints them as one line.
  """
  from dassemble_jax.classification.labels import LabelSpaceError
  from dassemble_jax.data.errors import DataFormatError, DatasetUnavailableError
  from dassemble_jax.data.records import RecordFormatError
  from dassemble_jax.fetch import FetchError
  from dassemble_jax.segmentation.train_loop import InitFromError
  from dassemble_jax.segmentation.trained_run import ModelDirError
  from dassemble_jax.workdir_lock import WorkdirBusyError
  return (DataFormatError, DatasetUnavailableError, RecordFormatError, LabelSpaceError,
          FetchError, InitFromError, ModelDirError, WorkdirBusyError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every save and restore at INFO; our own progress lines are what people read.
  logging.set_verbosity(logging.WARNING)
  _init_distributed()
  from dassemble_jax import workdir_lock
  try:
    with workdir_lock.hold(_WORKDIR.value, enabled=jax.process_index() == 0):
      _run_job(_CONFIG.value, _WORKDIR.value)
  except _user_errors() as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _run_job(config, workdir: str) -> None:
  job = config.get("job", "classification")
  if job == "classification":
    from dassemble_jax.jobs import classify
    classify.train_and_evaluate(config, workdir)
  elif job == "universal":
    from dassemble_jax.jobs import universal as universal_job
    universal_job.run(config, workdir)
  elif job == "universal_add_class":
    from dassemble_jax.jobs import add_class
    add_class.run(config, workdir)
  elif job == "liver_synthetic":
    from dassemble_jax.jobs import liver_synthetic
    liver_synthetic.run(config, workdir)
  elif job == "complete":
    from dassemble_jax.jobs import complete
    complete.run(config, workdir)
  else:
    raise app.UsageError(f"unknown job {job!r} in the config")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  jax.config.config_with_absl()
  app.run(main)
