"""`phase2` command line. Each command is thin: it calls the plain function of its stage.

Heavy imports (ultralytics, prefect, wandb) happen inside commands so `phase2 --help` is fast
and the offline environment is configured first. The app, its error boundary and output
conventions are in :mod:`phase2.cli.base`; commands are grouped by concern in this package, or
live beside their library (``phase2/<package>/commands.py``) and are registered here.
"""

from phase2.cli import dataset, deploy, evaluation, registry, stack, study  # noqa: F401  (registers the commands)
from phase2.cli.base import app, examples
from phase2.dataset.commands import CONVERT_SEGMENTS_EXAMPLES, convert_segments

app.command("convert-segments", epilog=examples(*CONVERT_SEGMENTS_EXAMPLES))(convert_segments)

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app()
