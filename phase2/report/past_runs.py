"""The review report of a past run (``phase2 report RUN``): the local copy, the one stored in S3
with the run, or one built again from the run's files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phase2.registry.registry import Registry
from phase2.registry.storage import ObjectStore, StorageError
from phase2.report.html import build_html_report
from phase2.report.inputs import ReportError
from phase2.runs import RunNotFound, resolve_run
from phase2.training.recipe import Recipe


def report_for_run(
    run: str, *, rebuild: bool = False, store: ObjectStore | None = None, registry_version: dict[str, Any] | None = None
) -> Path:
    """The HTML report of a past run: the local copy, else the one stored in S3 with the run
    (``runs/<key>/report/report.html``), else built from the run's files. Returns its path.

    ``run``: a run key or the Prefect flow run id that made it. ``registry_version``: the
    registered version's manifest; looked up in ``store``'s registry when not given.
    """
    try:
        layout = resolve_run(run)
    except RunNotFound as error:
        raise ReportError(str(error)) from error
    html = layout.report_html
    if html.is_file() and not rebuild:
        return html
    if store is not None and not rebuild and _exists(store, layout.report_html_key):
        return store.get_file(layout.report_html_key, html)
    if not layout.root.is_dir():
        raise ReportError(f"run {layout.run_key}: no report in S3 and no run files in {layout.root} to build one from")
    summary = json.loads(layout.summary_json.read_text()) if layout.summary_json.is_file() else {}
    if registry_version is None and store is not None and summary.get("model"):
        name = summary["model"].split(":", 1)[0]
        registry_version = Registry(store, name).get(summary["model"]).model_dump(mode="json")
    return build_html_report(
        layout, html, registry_version=registry_version, minority_class=_minority_class(registry_version)
    )


def _minority_class(registry_version: dict[str, Any] | None) -> str | None:
    """The minority class of the recipe the version was trained with (registered with it);
    recipes registered before the field existed used the default."""
    recipe = (registry_version or {}).get("recipe")
    if not recipe:
        return None
    return str(recipe.get("minority_class", Recipe.model_fields["minority_class"].default))


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        return store.exists(key)
    except StorageError:  # S3 not reachable: fall back to the local files
        return False
