"""Keep third-party chatter off the terminal: prunecli's own lines are the whole output.

torch and the exporters log graph dumps, deprecation notices and tracer warnings that say
nothing to a user of prunecli and bury the one line that does. Outside ``--debug``, a command
runs with Python warnings ignored and log records below CRITICAL dropped; both are restored
afterwards, so library users of prunecli keep their own settings.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_libraries(*, enabled: bool) -> Iterator[None]:
    """Inside the block, ignore warnings and drop log records up to CRITICAL (when ``enabled``)."""
    if not enabled:
        yield
        return
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(previous)
