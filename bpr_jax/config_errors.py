"""One-line errors of a config flag (`--config=FILE[:ARG] --config.FIELD=VALUE`), for the commands
that take one (`bpr_jax.main`, `bpr_jax.binarize`): a missing file (naming the closest), an error
inside the file (with its line), an override of a field that does not exist (naming the closest).

  holder = config_flags.DEFINE_config_file("config", ...)
  one_line_config_errors(holder)   # before flags are parsed
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
from typing import Sequence

from absl import flags

from bpr_jax import cli

def overridden_fields(argv: Sequence[str], name: str = "config") -> list[str]:
  """The FIELD of each --NAME.FIELD[=VALUE] / --noNAME.FIELD in `argv`, in order."""
  pattern = re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)")
  return [m.group(1) for m in map(pattern.match, argv) if m]


def missing_field(config, fields: Sequence[str], name: str = "config") -> str | None:
  """One line for the first of `fields` (dotted paths) that `config` lacks, naming the closest
  valid field; None when every field exists."""
  for field in fields:
    node, parts = config, field.split(".")
    for i, part in enumerate(parts):
      prefix = ".".join(parts[:i])
      keys = list(node.keys()) if hasattr(node, "keys") else None
      if keys is None:
        return f"--{name}.{field}: {prefix} is a value, not a group of fields"
      if part not in keys:
        close = difflib.get_close_matches(part, [str(k) for k in keys], n=1, cutoff=0.5)
        if close:
          hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
        else:
          hint = f"fields{' of ' + prefix if prefix else ''}: {', '.join(sorted(map(str, keys)))}"
        return f"--{name}.{field}: no such field; {hint}"
      node = node[part]
  return None


def _missing_file(path: str) -> str | None:
  """One line when the config file `path` is missing, naming the closest file beside it."""
  if os.path.isfile(path):
    return None
  folder = os.path.dirname(path) or "."
  try:
    names = [n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_")]
  except OSError:
    names = []
  close = difflib.get_close_matches(os.path.basename(path), names, n=1, cutoff=0.5)
  hint = f"; did you mean {os.path.join(os.path.dirname(path), close[0])}?" if close else ""
  return f"--config={path}: no such file{hint}"


def _config_file_line(error: BaseException, path: str) -> str:
  """The line of `path` (the config file) an exception came from, if any: ' (FILE:LINE)'."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  if isinstance(error, SyntaxError) and error.lineno:
    return f" ({path}:{error.lineno})"
  return f" ({path}:{frames[-1].lineno})" if frames else ""


def one_line_config_errors(holder: flags.FlagHolder) -> None:
  """Makes the config flag's parse fail with a flags.Error of one line (which `cli.run` prints
  as `error: ...`): a missing file (with the closest name), an error inside the file (with its
  line), an override of a field that does not exist (with the closest field)."""
  flag = flags.FLAGS[holder.name]
  parse = flag.parse

  def checked_parse(argument):
    path = str(argument).split(":", 1)[0]
    missing = _missing_file(path)
    if missing:
      raise flags.IllegalFlagValueError(missing)
    try:
      parse(argument)
    except flags.IllegalFlagValueError as error:
      text = str(error)
      if "Error whilst parsing config file" in text:  # ml_collections' TypeError/ValueError with a traceback
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        raise flags.IllegalFlagValueError(f"--config={argument}: error in the config file: {last}") from None
      raise
    except flags.Error:
      raise
    except Exception as error:  # pylint: disable=broad-except
      fields = overridden_fields(sys.argv, holder.name)
      message = None
      if isinstance(error, (KeyError, AttributeError)) and fields:
        try:
          message = missing_field(flag.parser.parse(argument), fields, holder.name)
        except Exception:  # pylint: disable=broad-except
          message = None
      if message is None:
        message = (f"--config={argument}: {type(error).__name__}: {cli.one_line(error)}"
                   f"{_config_file_line(error, path)}")
      raise flags.IllegalFlagValueError(message) from None
    value = flag.value
    if type(value).__name__ == "_ErrorConfig":  # ml_collections defers a failed load until first use
      cause = object.__getattribute__(value, "_error")
      raise flags.IllegalFlagValueError(f"--config={argument}: cannot load the config file: "
                                        f"{' '.join(str(cause).split())}")

  flag.parse = checked_parse
