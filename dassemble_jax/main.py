"""Entry point: python -m dassemble_jax.main --config=configs/X.py[:arg] --workdir=DIR.

Initialises multi-host JAX (auto-detected on Cloud TPU and SLURM; explicit coordinator flags
otherwise), then runs the job the config names. Tests and notebooks call the job functions
directly, never this module.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dassemble_jax import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, sys_argv=None) -> dict:
  """main's flags on `flag_values` (tests use a fresh FlagValues and pass their argv)."""
  def kw(**k):
    return {"flag_values": flag_values, **k}
  return {
      "config": config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                                lock_config=True, sys_argv=sys_argv, **kw()),
      "workdir": flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here.",
                                     **kw()),
      "coordinator_address": flags.DEFINE_string(
          "coordinator_address", None, "host:port of process 0 (multi-process runs without a "
          "cluster manager); also needs --num_processes and --process_id.", **kw()),
      "num_processes": flags.DEFINE_integer("num_processes", None, "Total processes.", **kw()),
      "process_id": flags.DEFINE_integer("process_id", None, "This process's index.", **kw()),
      "distributed": flags.DEFINE_enum(
          "distributed", "auto", ["auto", "on", "off"], "'auto': initialise when a cluster "
          "(Cloud TPU, SLURM) or a coordinator is detected; 'on': always; 'off': single process.",
          **kw()),
      "debug": cli.define_debug_flag(flag_values),
  }


_FLAGS = define_flags()


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Flags parsed; any config error (missing file, failing import, bad variant, unknown field,
  wrong type, no --workdir) raises cli.UserError naming the config file and the problem."""
  rest = cli.parse_flags(argv, flag_values, required=["workdir"])
  if len(rest) > 1:
    raise cli.UserError(f"unexpected arguments: {rest[1:]}")
  cli.check_output_folder(flag_values["workdir"].value, "--workdir")
  return rest


def _init_distributed() -> None:
  from dassemble_jax import distributed
  distributed.initialize(mode=_FLAGS["distributed"].value,
                         coordinator_address=_FLAGS["coordinator_address"].value,
                         num_processes=_FLAGS["num_processes"].value,
                         process_id=_FLAGS["process_id"].value)


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


def main(argv) -> int:
  del argv  # parse_flags refused extra arguments
  # Orbax logs every save and restore at INFO; our own progress lines are what people read.
  logging.set_verbosity(logging.WARNING)
  _init_distributed()
  return run(_FLAGS["config"].value, _FLAGS["workdir"].value, debug=_FLAGS["debug"].value)


def run(config, workdir: str, *, debug: bool = False) -> int:
  """The job under the workdir's lock; a user error (bad data, unwritable workdir, full disk)
  is one line and exit status 1 (its traceback with debug)."""
  from dassemble_jax import workdir_lock

  def locked(_):
    with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
      _run_job(config, workdir)
  return cli.run_main(locked, user_errors=_user_errors(), output=workdir, debug=debug)


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
  elif job == "partial_full":
    from dassemble_jax.jobs import partial_full
    partial_full.run(config, workdir)
  else:
    raise cli.UserError(f"config.job={job!r}: unknown job; expected 'classification', "
                        "'universal', 'universal_add_class', 'liver_synthetic', 'complete' or "
                        "'partial_full'")


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.absl_flags_parser(parse_flags))
