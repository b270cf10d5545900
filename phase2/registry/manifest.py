"""What a version's manifest.json holds, validated when read (it comes from the bucket: names
and paths in it are untrusted until checked here). Re-exported by :mod:`phase2.registry.registry`."""

from __future__ import annotations

import re
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from phase2.infra.settings import git_sha
from phase2.registry.storage import StorageError

MANIFEST = "manifest.json"
WEIGHTS_FILE = "weights/best.pt"  # where the pipeline registers a version's weights
CLAIM = ".claim"
CARD_FILES = ("MODEL_CARD.md", "model_card.json")  # a version's model card, when it has one
DOWNLOAD_FORMATS = ("pt", "onnx", "openvino", "torchscript", "all")
_FORMAT_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class RegistryError(StorageError):
    """A registry reference or operation that cannot be satisfied (message says why)."""


def check_relpath(relpath: str) -> str:
    """A file name inside a version: relative POSIX path, no empty, '.' or '..' part, no backslash.

    Raises ValueError (inside a manifest, pydantic turns it into a ValidationError)."""
    parts = relpath.split("/")
    if (
        relpath.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or "\\" in relpath
        or "\0" in relpath
        or relpath in (MANIFEST, CLAIM)
    ):
        raise ValueError(
            f"bad file name {relpath!r} for a model version: use a relative path like 'weights/best.pt' "
            "(no '..', no leading '/', no empty parts, no backslash)"
        )
    return relpath


class FileEntry(BaseModel):
    sha256: str
    size: int


class ExportParity(BaseModel):
    """An export measured against the .pt it came from, under the evaluation protocol (phase2/deploy/parity.py)."""

    split: str
    n_images: int = Field(ge=0)
    imgsz: int = Field(description="the protocol's image size")
    map50_pt: float
    map50_export: float
    map50_95_pt: float
    map50_95_export: float
    delta_map50: float = Field(ge=0, description="|mAP50 export - mAP50 .pt|")
    delta_map50_95: float = Field(ge=0, description="|mAP50-95 export - mAP50-95 .pt|")
    box_conf: float
    box_iou: float
    boxes_pt: int = Field(ge=0, description=".pt detections at conf >= box_conf on the split")
    boxes_matched: int = Field(ge=0, description="of those, reproduced by the export (same class, IoU >= box_iou)")
    box_agreement: float | None = Field(description="boxes_matched / boxes_pt; None when the .pt made no such box")


class ExportRecord(BaseModel):
    """One deployable export of a version: where its files are, and whether it may be used."""

    format: str
    path: str = Field(description="the file (or folder) to load, relative to the version")
    files: list[str] = Field(description="every file of the export, relative to the version")
    imgsz: int = Field(description="the size it was exported at, checked at and run at")
    half: bool = False
    opset: int | None = None
    parity: ExportParity | None = None
    usable: bool
    reason: str | None = Field(None, description="why the export is not usable (or why parity was not measured)")

    @field_validator("format")
    @classmethod
    def _plain_format(cls, value: str) -> str:
        if not _FORMAT_RE.match(value):
            raise ValueError(f"bad export format name {value!r}")
        return value

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        return check_relpath(value)

    @field_validator("files")
    @classmethod
    def _relative_files(cls, values: list[str]) -> list[str]:
        return [check_relpath(value) for value in values]


class RegistrationMetadata(BaseModel):
    """What the caller supplies with the files; unknown keys are refused (typos lose lineage)."""

    model_config = ConfigDict(extra="forbid")

    metrics: dict[str, Any] = Field(default_factory=dict, description='{"val": METRICS, "test": METRICS}')
    recipe: dict[str, Any] = Field(default_factory=dict)
    dataset: dict[str, Any] = Field(default_factory=dict, description="version_id, manifest_sha256, uri")
    baseline: dict[str, Any] = Field(default_factory=dict, description="reference, sha256")
    code_version: str = Field(default_factory=git_sha)
    ultralytics_version: str | None = None
    torch_version: str | None = None
    wandb_run_path: str | None = None
    run_key: str | None = Field(
        None,
        validation_alias=AliasChoices("run_key", "flow_run_id"),  # manifests before the rename say flow_run_id
        description="the pipeline run that registered this version",
    )
    exports: dict[str, ExportRecord] = Field(default_factory=dict, description="format -> export with its parity")


class ModelVersion(RegistrationMetadata):
    """One immutable registered version: exactly the content of its manifest.json."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: int
    files: dict[str, FileEntry]
    created_at: str

    @field_validator("files")
    @classmethod
    def _relative_file_names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        # A manifest is read from the bucket: its names become local paths on download.
        for relpath in files:
            check_relpath(relpath)
        return files

    @model_validator(mode="after")
    def _exports_are_listed_files(self) -> ModelVersion:
        for fmt, export in self.exports.items():
            if fmt != export.format:
                raise ValueError(f"export {fmt!r} says it is format {export.format!r}")
            if unlisted := [f for f in export.files if f not in self.files]:
                raise ValueError(f"export {fmt!r} names files the version does not list: {unlisted}")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"

    def usable_export(self, fmt: str) -> ExportRecord:
        """The export in ``fmt``; RegistryError when there is none or it failed its parity check."""
        export = self.exports.get(fmt)
        if export is None:
            have = ", ".join(sorted(self.exports)) or "none"
            raise RegistryError(f"{self.ref} has no {fmt} export (exports: {have}); use --format pt")
        if not export.usable:
            raise RegistryError(f"{self.ref}: its {fmt} export is not usable: {export.reason}; use --format pt")
        return export

    def files_for(self, fmt: str) -> list[str]:
        """The files a download in ``fmt`` needs: ``all``; ``pt``: all but the exports; an export
        format: its files, the model card and the dataset manifest, no pickle."""
        if fmt not in DOWNLOAD_FORMATS:
            raise RegistryError(f"unknown format {fmt!r}: use one of {', '.join(DOWNLOAD_FORMATS)}")
        exported = {f for export in self.exports.values() for f in export.files}
        if fmt == "all":
            return list(self.files)
        if fmt == "pt":
            return [f for f in self.files if f not in exported]
        export = self.usable_export(fmt)
        return [f for f in self.files if f in export.files or f in CARD_FILES]

    def trained_on(self, source_dataset_version: str) -> bool:
        """Whether this version was trained on that source dataset version (its lineage)."""
        return self.dataset.get("source_version_id") == source_dataset_version
