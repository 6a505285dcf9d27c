"""Console hygiene for the commands."""
from __future__ import annotations

import logging as logging_std

from absl import logging


class _QuietLibraries(logging_std.Filter):
  """Drops INFO records of orbax (dozens of lines per checkpoint) from the console."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def quiet_libraries() -> None:
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
