"""`phase2` command line. Each command is thin: it calls the plain function of its stage.

Heavy imports (ultralytics, prefect, wandb) happen inside commands so `phase2 --help` is fast
and the offline environment is configured first. The app, its error boundary and output
conventions are in :mod:`phase2.cli.base`; commands are grouped by concern in this package, or
live beside their library (``phase2/<package>/commands.py``) and are registered here.
"""

from phase2.cli import dataset, registry, stack  # noqa: F401  (registers the commands)
from phase2.cli.base import app, examples
from phase2.dataset.commands import CONVERT_SEGMENTS_EXAMPLES, convert_segments
from phase2.evaluation.commands import compare_command, evaluate_command

app.command("convert-segments", epilog=examples(*CONVERT_SEGMENTS_EXAMPLES))(convert_segments)
app.command(
    "evaluate",
    epilog=examples(
        "phase2 evaluate site-inspection-detector:production --data data.yaml --split test",
        "phase2 evaluate runs/train/weights/best.pt --data data.yaml --json",
    ),
)(evaluate_command)
app.command(
    "compare",
    epilog=examples(
        "phase2 compare site-inspection-detector:production runs/train/weights/best.pt --data data.yaml",
        "phase2 compare v3 v4 --data data.yaml --split test --json",
    ),
)(compare_command)

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app()
