"""One-line errors for every entry point: `error: <file>: <problem>`, a non-zero exit, no traceback.

A user error (a missing or malformed input, a bad config, an output that cannot be written) is
reported as one line; a traceback means a bug. `--debug` on any entry point shows the traceback
of a user error too. Entry points use:

  run_main(main, argv, user_errors=(...))   call main(argv) and turn user errors into one line
  check_output_folder(path, flag)           an output folder that is a file or unwritable
  parse_flags(argv, flag_values)            absl flags (+ an ml_collections --config), parsed with
                                            config errors (missing file, failing import, bad
                                            variant, unknown field, wrong type) as UserError
  define_debug_flag() / add_debug_argument(parser)   the --debug switch (absl / argparse)
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence

from absl import flags

DEBUG = "debug"


class UserError(Exception):
  """Bad input or an unusable output, already phrased as '<file>: <problem>'."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work (an unknown source or architecture, more examples asked
  for than the data holds, a workdir prepared from other settings)."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
  """Whether --debug is on the command line (read from argv itself: a config error stops the
  flag parser before the flag's own value is set)."""
  argv = sys.argv if argv is None else argv
  on = False
  for a in argv[1:]:
    if a == "--":
      break
    if a in ("--debug", "-debug") or a.lower() in ("--debug=true", "--debug=1"):
      on = True
    elif a in ("--nodebug", "-nodebug") or a.lower() in ("--debug=false", "--debug=0"):
      on = False
  return on


def define_debug_flag(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  return flags.DEFINE_bool(DEBUG, False, "Show the traceback of a user error (bad input, bad "
                           "config, unwritable output) instead of one line.",
                           flag_values=flag_values)


def add_debug_argument(parser) -> None:
  parser.add_argument("--debug", action="store_true",
                      help="show the traceback of a user error instead of one line")


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> None:
  """Refuses, before any work, an output folder that is an existing file (or lies under one) or
  cannot be created or written; a missing folder is fine (it is made when written)."""
  path = os.fspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{path}: {flag} exists and is not a folder")
  parent = path
  while not os.path.exists(parent):  # the nearest existing folder is where it will be made
    up = os.path.dirname(os.path.abspath(parent))
    if up == parent:
      break
    parent = up
  if os.path.exists(parent) and not os.path.isdir(parent):
    raise UserError(f"{path}: {flag} lies under {parent}, which is a file")
  if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
    read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
    why = "a read-only file system" if read_only else f"no write permission on {parent}"
    raise UserError(f"{path}: {flag} is not writable ({why})")


def _os_message(e: OSError, where: str | os.PathLike | None) -> str:
  """'<path>: <problem>' for an OSError; `where` names the output when the error has no path
  (a write that hits a full disk reports no file name)."""
  path = e.filename if e.filename is not None else where
  problem = e.strerror or str(e) or type(e).__name__
  if e.filename2 is not None:
    problem = f"{problem} (-> {e.filename2})"
  return f"{path}: {problem}" if path is not None else problem


def message(e: BaseException, where: str | os.PathLike | None = None) -> str:
  """The error as one line."""
  if isinstance(e, OSError) and e.errno is not None:
    text = _os_message(e, where)
  else:
    text = str(e)
    if isinstance(e, KeyError) and len(e.args) == 1:  # KeyError's str() is the key's repr
      text = str(e.args[0])
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def report(e: BaseException, where: str | os.PathLike | None = None) -> None:
  print(f"error: {message(e, where)}", file=sys.stderr, flush=True)


# Libraries that write through C++ (Orbax via TensorStore, array_record) report a full disk as
# a ValueError/RuntimeError whose text carries the OS error; a full disk is never a bug.
_DISK_FULL = re.compile(r"No space left on device|os_error_code='?28\b|Disk quota exceeded")


def disk_full(e: BaseException) -> bool:
  """Whether `e` (or an exception it was raised from) is a full disk or quota."""
  return any((isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT))
             or _DISK_FULL.search(str(c)) is not None for c in _chain(e))


class _NoUserErrorTracebacks(logging.Filter):
  """Drops the traceback (not the line) a library logs for a failed write in a background thread
  (Orbax's async save): the main thread reports the same failure as one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and record.exc_info[1] is not None and (
        isinstance(record.exc_info[1], OSError) or disk_full(record.exc_info[1])):
      record.exc_info, record.exc_text = None, None
    return True


def _quiet_after_report() -> None:
  """After a user error is reported, the process only exits; writers still open then (a
  TensorBoard event writer's thread and atexit flush) fail again on the same full or read-only
  disk. Their OSErrors are the error already reported: dropped; anything else still shows.
  Only the interpreter's own hooks are replaced (a test runner's stay, and nothing leaks into
  the tests after this one)."""
  if (sys.unraisablehook is not sys.__unraisablehook__
      or threading.excepthook is not threading.__excepthook__):
    return

  def unraisable(u, default=sys.unraisablehook):
    if not isinstance(u.exc_value, OSError):
      default(u)

  def thread(a, default=threading.excepthook):
    if not isinstance(a.exc_value, OSError):
      default(a)
  sys.unraisablehook, threading.excepthook = unraisable, thread


def run_main(main: Callable[..., int | None], argv: Sequence[str] | None = None, *,
             user_errors: tuple[type[BaseException], ...] = (),
             output: str | os.PathLike | None = None, exit_code: int = 1,
             debug: bool | None = None) -> int:
  """Calls `main(argv)`; a user error (`user_errors`, UserError, OSError, a full disk reported
  by any library) becomes one line on stderr and `exit_code`, or its traceback with `debug`
  (None: --debug on sys.argv). `output` names the place written when the error carries no path
  (a full disk). Returns main's exit status (None: 0)."""
  debug = debug_requested() if debug is None else debug
  quiet = _NoUserErrorTracebacks()
  if not debug:
    logging.getLogger("absl").addFilter(quiet)
  try:
    return main(argv) or 0
  except Exception as e:  # pylint: disable=broad-except  # re-raised unless a user error
    if debug or not (isinstance(e, (UserError, OSError, *user_errors)) or disk_full(e)):
      raise
    if disk_full(e) and not isinstance(e, OSError):
      e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    report(e, output)
    _quiet_after_report()
    return exit_code
  finally:
    logging.getLogger("absl").removeFilter(quiet)


# ------------------------------------------------------------------------------------------------
# absl flags with an ml_collections config file.

def _config_path(argv: Sequence[str], name: str) -> str:
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1].split(":", 1)[0]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return f"--{name}"


def _chain(e: BaseException) -> list[BaseException]:
  out = [e]
  while (e.__cause__ or e.__context__) is not None and len(out) < 20:
    e = e.__cause__ or e.__context__
    out.append(e)
  return out


def _config_problem(e: BaseException, argv: Sequence[str], name: str) -> str:
  """'<config file>: <problem>' for an exception raised while parsing the flags."""
  path = _config_path(argv, name)
  chain = _chain(e)
  # An override naming no field: ml_collections raises AttributeError(KeyError(did-you-mean)).
  keys = [c for c in chain if isinstance(c, KeyError)]
  if isinstance(e, AttributeError) and keys:
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith(f"--{name}.")]
    key = message(keys[-1])
    hint = message(keys[0]) if len(keys) > 1 else key
    shown = [o for o in overrides if o.rsplit(".", 1)[-1] == key.strip("'\"")] or overrides
    return f"{path}: {shown[0] if shown else key}: no such field in the config ({hint})"
  if isinstance(e, flags.UnrecognizedFlagError):
    return f"--{getattr(e, 'flagname', '?')}: unknown flag (see --helpshort)"
  last = chain[-1]
  if isinstance(last, OSError) and path != f"--{name}" and not os.path.exists(path):
    return f"{path}: no such config file"
  if isinstance(last, AttributeError) and "get_config" in str(last):
    return f"{path}: defines no get_config()"
  if isinstance(last, IsADirectoryError):
    return f"{path}: is a folder, not a config file"
  if isinstance(last, OSError) and last.errno is not None:
    return _os_message(last, path)
  if isinstance(last, SyntaxError):
    return f"{path}: line {last.lineno}: cannot import the config (SyntaxError: {last.msg})"
  if isinstance(e, flags.IllegalFlagValueError):
    text = str(e)
    m = re.match(r"flag (--\S+?)=(.*?): ", text)
    if m and m.group(1) != f"--{name}":  # an override of the wrong type
      return f"{path}: {m.group(1)}={m.group(2)}: {message(last)}"
    # get_config raised (a bad variant): ml_collections put the traceback into the message;
    # the last exception of the chain is the config's own.
    return f"{path}: {type(last).__name__}: {message(last)}"
  if isinstance(e, flags.Error):
    return f"{path}: {message(e)}"
  return f"{path}: cannot load the config ({type(last).__name__}: {message(last)})"


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS, *,
                config: str | None = "config", required: Sequence[str] = ()) -> list[str]:
  """Parses absl flags (with the ml_collections config flag `config`, if any), raising UserError
  with one line for any config or flag problem (a missing `required` flag too); returns the
  remaining arguments."""
  try:
    rest = flag_values(list(argv))
    value = flag_values[config].value if config else None
    if value is not None:
      value.get("job")  # a config that failed to load raises its error on first access
  except Exception as e:  # the config file's own code can raise anything: all are user errors
    raise UserError(_config_problem(e, argv, config or "config")) from e
  for flag in ([config] if config else []) + list(required):
    if flag_values[flag].value is None:
      raise UserError(f"--{flag}: required (see --helpshort)")
  if config and flag_values[config].value is not None and not hasattr(flag_values[config].value,
                                                                      "get"):
    raise UserError(f"{_config_path(argv, config)}: get_config() returned "
                    f"{type(flag_values[config].value).__name__}, not a ConfigDict")
  return rest


def absl_flags_parser(parse: Callable[[list[str]], list[str]], *, exit_code: int = 1
                      ) -> Callable[[list[str]], list[str]]:
  """An `app.run(..., flags_parser=)` around `parse` (e.g. parse_flags) that reports its
  UserError in one line and exits (the traceback with --debug)."""
  def parser(argv: list[str]) -> list[str]:
    try:
      return parse(argv)
    except UserError as e:
      if debug_requested(argv):
        raise
      report(e)
      sys.exit(exit_code)
  return parser
