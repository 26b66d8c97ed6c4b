"""Entry point for the faust CLI: `faust -A agents.worker worker -l info`."""

from agents import build_worker
from agents.event_loop import use_uvloop_by_default
from streams.tls import TlsConfigError

use_uvloop_by_default()
try:
    app = build_worker()
except TlsConfigError as error:
    # One line an operator can act on, not a traceback through the faust CLI's import machinery.
    raise SystemExit(f"Laneway cannot start: {error}") from None
