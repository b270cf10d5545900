"""The W&B Report of one pipeline run: panels over what the pipeline's steps logged to the run.

Built without network (:func:`wandb_report_spec`); saving it and linking it to the registered
model artifact need W&B online.
"""

from __future__ import annotations

from typing import Any

# W&B keys the steps log (tasks/) and the report's own.
# Not "dataset/what_changed": that run summary key holds the one-line summary (a table logged
# under it would be replaced in the run summary, which the report's table panels read).
WANDB_WHAT_CHANGED_TABLE = "dataset/what_changed_table"
WANDB_WHAT_CHANGED = {
    "title": "What changed since production's data",
    "text": "Instances per split and class, production's training data vs this run's (phase2 diff); "
    "images added, removed, modified and moved are in the run summary (dataset/images_*, "
    "dataset/labels_changed, dataset/what_changed). Empty when there is no production model yet.",
}
WANDB_EPOCH_METRICS = {
    "Losses": ["train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss", "val/dfl_loss"],
    "Precision and recall": ["metrics/precision", "metrics/recall"],
    "mAP": ["metrics/mAP50", "metrics/mAP50-95"],
    "Learning rate": ["lr/pg0", "lr/pg1", "lr/pg2"],
}
WANDB_IMAGES = {
    "Dataset": ["validation/class_counts", "dataset/balance"],
    "Evaluation": ["selection/pr_curve", "selection/confusion_matrix"],
    "Detections (ground truth green, predictions red)": ["report/detections"],
    "Label review: worst images (label green, prediction red, suspect orange)": ["label_review/worst"],
}
WANDB_TABLES = {
    "Dataset": ["dataset/balance_table"],
    "Selection": ["selection/candidates", "selection/per_class_val"],
    "Per class: new vs baseline vs production": ["report/per_class_comparison"],
    "Promotion": ["promotion/comparison"],
    "Label review queue (worst first)": ["label_review/queue"],
    "Timings": ["report/timings"],
}


def wandb_report_spec(
    *, entity: str, project: str, run_id: str, title: str, description: str = "", html_link: str | None = None
) -> Any:
    """The W&B Report of one pipeline run: its per-epoch line plots, the images and tables the
    steps logged, restricted to that run. Built without network; :func:`publish_wandb_report` saves it.
    """
    import wandb_workspaces.reports.v2 as wr

    def runset() -> wr.Runset:
        return wr.Runset(entity=entity, project=project, name=f"run {run_id}", filters=f"ID = '{run_id}'")

    def grid(panels: list) -> wr.PanelGrid:
        return wr.PanelGrid(runsets=[runset()], panels=panels)

    intro = [description] if description else []
    if html_link:
        intro.append(f"Offline HTML report (images embedded): {html_link}")
    blocks: list = [wr.P(text) for text in intro]
    blocks += [
        wr.H2("Training curves per epoch"),
        grid([wr.LinePlot(title=name, x="epoch", y=[*keys]) for name, keys in WANDB_EPOCH_METRICS.items()]),
        wr.H2(WANDB_WHAT_CHANGED["title"]),
        wr.P(WANDB_WHAT_CHANGED["text"]),
        grid([wr.WeavePanelSummaryTable(table_name=WANDB_WHAT_CHANGED_TABLE)]),
    ]
    for name, keys in WANDB_IMAGES.items():
        blocks += [wr.H2(name), grid([wr.MediaBrowser(title=key, media_keys=[key], num_columns=1) for key in keys])]
    for name, keys in WANDB_TABLES.items():
        blocks += [wr.H2(f"{name} (tables)"), grid([wr.WeavePanelSummaryTable(table_name=key) for key in keys])]
    return wr.Report(entity=entity, project=project, title=title[:128], description=description, blocks=blocks)


def publish_wandb_report(report: Any) -> str:
    """Save the report to W&B (online only); returns its URL."""
    report.save()
    return report.url


def link_report_to_artifact(artifact_path: str, report_url: str) -> None:
    """Record the W&B report URL in the registered model artifact's metadata (online only)."""
    import wandb

    artifact = wandb.Api().artifact(artifact_path)
    artifact.metadata = {**artifact.metadata, "wandb_report": report_url}
    artifact.save()
