"""What a training run was started from, so a run folder is never reused for other inputs.

A run is resumed (or, once finished, returned) by its ``save_dir`` / S3 ``run_prefix``, which a
fixed ``run_name`` keeps the same across pipeline runs. Without a check, a run started on new
data would return the weights trained on the old data, and they would be registered under the
new lineage. So the run records its :class:`RunIdentity` (dataset version, start weights, train
args) in ``identity.json`` next to its checkpoints, locally and in S3, and in its COMPLETE
marker; fine_tune refuses a folder or prefix whose recorded identity differs from the call's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from phase2.infra.files import atomic_write_text, sha256_bytes, sha256_file

IDENTITY_FILE = "identity.json"


class StaleRun(RuntimeError):
    """The run folder or S3 prefix holds a run of other inputs; the message says what differs."""


def train_args_sha256(train_args: dict[str, Any]) -> str:
    return sha256_bytes(json.dumps(train_args, sort_keys=True, default=str).encode())


class RunIdentity(BaseModel):
    """The inputs a run's weights depend on. Build it with :meth:`of`."""

    model_config = ConfigDict(frozen=True)

    dataset_version: str = Field(description="the dataset version trained on (its version id)")
    baseline: str = Field(description="sha256 of the start weights; the model yaml's name when from scratch")
    train_args_sha256: str = Field(description="sha256 of the Ultralytics train args (canonical JSON)")
    train_args: dict[str, Any] = Field(default_factory=dict, description="kept to say which args differ")

    @classmethod
    def of(cls, *, dataset_version: str, weights: Path | str, train_args: dict[str, Any]) -> RunIdentity:
        """``weights`` as handed to fine_tune: a checkpoint file (hashed) or a model yaml name."""
        baseline = sha256_file(weights) if Path(weights).is_file() else str(weights)
        args = json.loads(json.dumps(train_args, default=str))
        return cls(
            dataset_version=dataset_version,
            baseline=baseline,
            train_args_sha256=train_args_sha256(train_args),
            train_args=args,
        )

    def differences(self, recorded: RunIdentity) -> list[str]:
        """What differs between ``recorded`` (the run's) and this identity, as ``what: old -> new``."""
        diffs = []
        if recorded.dataset_version != self.dataset_version:
            diffs.append(f"dataset version {recorded.dataset_version!r} -> {self.dataset_version!r}")
        if recorded.baseline != self.baseline:
            diffs.append(f"start weights {_short(recorded.baseline)} -> {_short(self.baseline)}")
        if recorded.train_args_sha256 != self.train_args_sha256:
            keys = sorted(set(recorded.train_args) | set(self.train_args))
            changed = [
                f"{key} {recorded.train_args.get(key)!r} -> {self.train_args.get(key)!r}"
                for key in keys
                if recorded.train_args.get(key) != self.train_args.get(key)
            ]
            diffs.append(f"train args ({', '.join(changed) or 'recorded without them'})")
        return diffs


def _short(baseline: str) -> str:
    return f"sha256 {baseline[:12]}..." if len(baseline) == 64 and baseline.isalnum() else repr(baseline)


def check_identity(ours: RunIdentity, recorded: RunIdentity | None, where: str, fix: str) -> None:
    """Refuse (:class:`StaleRun`) a run whose recorded identity is missing or differs from ``ours``."""
    if recorded is None:
        raise StaleRun(
            f"{where} has no record of the inputs it was trained from (written before phase2 recorded "
            f"them), so it may be another dataset's or baseline's run; {fix}"
        )
    diffs = ours.differences(recorded)
    if diffs:
        raise StaleRun(
            f"{where} was trained from other inputs: {'; '.join(diffs)}. Its weights must not be used "
            f"for this run; {fix}"
        )


def parse_identity(data: str | bytes) -> RunIdentity | None:
    """A recorded identity; None when it is not one (a corrupt record proves nothing)."""
    try:
        return RunIdentity.model_validate_json(data)
    except ValidationError:
        return None


def read_identity(path: Path) -> RunIdentity | None:
    """The identity recorded at ``path``; None when there is none."""
    try:
        return parse_identity(path.read_bytes())
    except OSError:
        return None


def write_identity(path: Path, identity: RunIdentity) -> Path:
    return atomic_write_text(path, identity.model_dump_json(indent=2))
