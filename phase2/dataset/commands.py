"""`phase2` commands of the dataset package (registered in phase2/cli/); each calls one library function.

Imports of the dataset code happen inside the commands, so `phase2 --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def convert_segments(
    data_yaml: Annotated[Path, typer.Argument(help="The dataset's data.yaml (never modified).")],
    out: Annotated[Path, typer.Option(help="New or empty directory for the converted copy.")],
) -> None:
    """Write a copy of a dataset whose polygon (segment) labels are boxes, for a detection recipe.

    Images are copied beside their converted labels; box rows are kept; the copy gets its own
    data.yaml with one image list per split. The source is only read.
    """
    from phase2.dataset.convert import convert_segment_dataset

    # Errors (a used --out: exit 2; an unreadable dataset: exit 1) reach the CLI's one boundary.
    result = convert_segment_dataset(data_yaml, out)
    typer.echo(
        f"{result.converted_rows} polygon rows converted to boxes in {result.label_files} label files; "
        f"{result.images} images copied: {result.data_yaml}"
    )
    typer.echo(f"next: phase2 validate {result.data_yaml}")


CONVERT_SEGMENTS_EXAMPLES = (
    "phase2 convert-segments data/site/data.yaml --out data/site-boxes",
    "phase2 validate data/site-boxes/data.yaml",
)
