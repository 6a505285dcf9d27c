"""The commands' shared runner: one-line errors, ``--help`` that exits 0, quiet third-party noise.

Every ``python -m bpr_jax.X`` command ends with::

  if __name__ == "__main__":
    cli.run(main, define_flags)

``run`` silences third-party start-up noise (transformers' "PyTorch was not found", JAX's
"Unable to initialize backend", faiss's "Could not load library with AVX2 support") before any of
them is imported, defines ``--verbose``, parses the flags with absl, and calls ``main(argv)``.
An expected failure (``USER_ERRORS``: bad input, a missing file, an output made from other
inputs, a flag out of range) is printed as one line ``error: ...`` on stderr and exits 2; with
``--verbose`` the traceback follows.  Anything else is a bug and keeps its traceback.
``--help`` / ``--helpshort`` print the module docstring's usage and the flags, and exit 0.

Library use (``import bpr_jax``) is left alone: only ``run`` changes logging.
"""
from __future__ import annotations

import logging as logging_std
import os
import sys
import traceback
from typing import Callable, Sequence

EXIT_USER_ERROR = 2

# Loggers whose INFO/WARNING start-up lines look like failures but are not.
_NOISY_LOGGERS = ("jax._src.xla_bridge", "faiss.loader", "faiss", "transformers",
                  "tensorflow", "absl.tensorflow", "orbax", "etils")


class CommandError(ValueError):
  """A user-facing failure with a one-line message (raised by commands for bad flags or inputs)."""


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception types printed as one line (imported lazily: no jax import here)."""
  from bpr_jax.provenance import ProvenanceError  # pylint: disable=import-outside-toplevel
  kinds: list[type[BaseException]] = [CommandError, ProvenanceError, ValueError, FileNotFoundError,
                                       FileExistsError, NotADirectoryError, IsADirectoryError,
                                       PermissionError, KeyError]
  try:
    from bpr_jax.data.examples import DataError  # pylint: disable=import-outside-toplevel
    kinds.append(DataError)
  except ImportError:  # pragma: no cover
    pass
  return tuple(kinds)


def quiet_third_party() -> None:
  """Silences the start-up lines of transformers, JAX and faiss that are not failures."""
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  for name in _NOISY_LOGGERS:
    logging_std.getLogger(name).setLevel(logging_std.ERROR)


def one_line(error: BaseException) -> str:
  """An exception as one line of text (its message, whitespace collapsed)."""
  if isinstance(error, KeyError) and error.args:
    text = str(error.args[0])
  else:
    text = str(error) or type(error).__name__
  return " ".join(text.split())  # one line


def fail(error: BaseException | str, verbose: bool = False) -> "NoReturn":  # type: ignore[name-defined]
  """Prints ``error: ...`` (one line; the traceback too when ``verbose``) and exits 2."""
  if verbose and isinstance(error, BaseException):
    traceback.print_exception(error)
  print(f"error: {one_line(error) if isinstance(error, BaseException) else error}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[Sequence[str]], None], define_flags: Callable[[], None] | None = None,
        argv: Sequence[str] | None = None) -> None:
  """Runs a command's ``main`` under absl with the house rules (see the module docstring)."""
  quiet_third_party()
  from absl import app, flags  # pylint: disable=import-outside-toplevel

  if define_flags is not None:
    define_flags()
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_boolean("verbose", False, "Print the traceback of an error, not only its line.")
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("--help", "-h", "--helpshort", "-?", "--helpfull") for a in argv[1:]):
    try:
      flags.FLAGS(argv[:1] + [a for a in argv[1:] if a.startswith("--config")], known_only=True)
    except flags.Error:
      pass
    full = "--helpfull" in argv[1:]
    doc = (sys.modules["__main__"].__doc__ or "").strip()
    module = sys.modules["__main__"]
    text = (flags.FLAGS.get_help() if full
            else flags.FLAGS.module_help(module) or flags.FLAGS.main_module_help())
    try:
      print(doc + "\n" if doc else "", end="")
      print("\nflags:\n" + text if text.strip() else "")
      sys.stdout.flush()
    except BrokenPipeError:  # `--help | head`
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)

  def wrapped(args: Sequence[str]) -> None:
    logging_std.getLogger().setLevel(logging_std.WARNING)
    quiet_third_party()
    try:
      main(args)
    except app.UsageError as error:
      fail(error, flags.FLAGS["verbose"].value)
    except user_errors() as error:  # pylint: disable=catching-non-exception
      fail(error, flags.FLAGS["verbose"].value)

  try:
    app.run(wrapped, argv=argv, flags_parser=_parse_flags)
  except SystemExit:
    raise


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with a one-line error (the flag, the bad value, the closest name)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as error:
    message = " ".join(str(error).split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
