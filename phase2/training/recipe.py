"""Training recipes: YAML data in configs/, validated by pydantic, linted for silent traps.

The same models type the flow's parameters, so the Prefect UI renders them as a form.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from phase2.deploy.settings import ExportSettings
from phase2.evaluation.label_review import LabelReviewSettings
from phase2.evaluation.promotion import PromotionRule
from phase2.evaluation.selection import SelectionPolicy

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_UNION_MEMBER = re.compile(r"^(int|float|str|bool|none|literal\[.*\]|function-.*|constrained-.*)$")


class RecipeError(ValueError):
    """A recipe file that can't be used; the message names the file, the key and the fix."""


class TrainArgs(BaseModel):
    """Ultralytics `train` arguments. Unknown keys are rejected (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "baseline",
        description="Start weights: 'baseline' (the flow's baseline parameter), a local .pt, an "
        "s3:// URI, a registry reference like site-inspection-detector:production, or a model yaml "
        "(from scratch).",
    )
    epochs: PositiveInt = 80
    imgsz: int | Literal["native"] = Field(
        640, description="Training size in px, or 'native': the dataset's recommended size."
    )
    batch: int = Field(8, ge=-1, description="Images per batch (-1: Ultralytics auto-batch on GPU).")
    nbs: PositiveInt = Field(
        64,
        description="Nominal batch: gradients accumulate to it (and weight decay "
        "scales by batch/nbs). On small datasets nbs=batch gives more optimizer steps.",
    )
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, mps, 0, or '0,1' for DDP.")
    workers: int = Field(4, ge=0)
    optimizer: Literal["SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp", "MuSGD", "auto"] = "AdamW"
    lr0: float = Field(0.0001, gt=0)
    lrf: float = Field(0.01, gt=0, le=1)
    cos_lr: bool = True
    warmup_epochs: float = Field(3.0, ge=0)
    warmup_bias_lr: float = Field(0.1, ge=0)
    warmup_momentum: float = Field(0.8, ge=0, le=1)
    momentum: float = Field(0.937, ge=0, le=1)
    weight_decay: float = Field(0.001, ge=0)
    box: float = Field(10.0, ge=0)
    cls: float = Field(0.6, ge=0)
    dfl: float = Field(1.7, ge=0)
    iou: float | None = Field(None, gt=0, le=1, description="NMS IoU of per-epoch validation.")
    conf: float | None = Field(None, ge=0, le=1, description="Confidence of per-epoch validation.")
    max_det: PositiveInt = 300
    mosaic: float = Field(0.2, ge=0, le=1)
    mixup: float = Field(0.0, ge=0, le=1)
    copy_paste: float = Field(0.0, ge=0, le=1)
    degrees: float = Field(5.0, ge=-180, le=180)
    translate: float = Field(0.1, ge=0, le=1)
    scale: float = Field(0.6, ge=0)
    shear: float = Field(0.0, ge=-180, le=180)
    perspective: float = Field(0.0, ge=0, le=0.001)
    flipud: float = Field(0.0, ge=0, le=1)
    fliplr: float = Field(0.5, ge=0, le=1)
    close_mosaic: int = Field(20, ge=0)
    hsv_h: float = Field(0.015, ge=0, le=1)
    hsv_s: float = Field(0.7, ge=0, le=1)
    hsv_v: float = Field(0.4, ge=0, le=1)
    patience: PositiveInt = 15
    save_period: int = Field(5, description="Extra checkpoint every N epochs (-1: off).")
    seed: int = 0
    deterministic: bool = True
    amp: bool = True
    cache: bool | Literal["ram", "disk"] = False
    plots: bool = True

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        bare_yaml = value.endswith((".yaml", ".yml")) and "/" not in value
        if bare_yaml and not re.fullmatch(r"yolo(v8|11|12|26)?[nsmlx]?\.ya?ml", value):
            raise ValueError(f"unknown model yaml {value!r}; use e.g. yolo11n.yaml or yolo11s.yaml")
        return value

    def ultralytics_kwargs(self, imgsz: int) -> dict[str, Any]:
        """Arguments for `YOLO.train`, with the resolved image size and no unset values."""
        args = self.model_dump(exclude={"model"}, exclude_none=True)
        args["imgsz"] = imgsz
        return args


DEFAULT_MINORITY_VAL_TARGET = 18


class RebalanceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    targets: dict[str, int] = Field(
        default_factory=dict,
        description=f"Val instances wanted per class; unset: the minority class to {DEFAULT_MINORITY_VAL_TARGET}.",
    )
    test_targets: dict[str, int] = Field(
        default_factory=dict,
        description="Test (promotion gate split) instances wanted per class, moved from train; unset: test as is.",
    )
    seed: int = 0


class ValidationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phash_threshold: int = Field(4, ge=0, le=64)
    allow: list[str] = Field(default_factory=list, description="Finding codes that don't block training.")


class CheckpointSettings(BaseModel):
    """How often training's checkpoints (last.pt, best.pt, epochN.pt) are copied to S3 while it runs."""

    model_config = ConfigDict(extra="forbid")

    upload_interval_s: float = Field(
        60.0,
        ge=0,
        description="At least this long between checkpoint uploads while training, counted from its start (0: "
        "every save). A failed training sends its newest one, the end sends the final ones; a lost machine loses "
        "at most this plus one epoch. Each upload is a whole checkpoint (26 MB for yolo11n with AdamW).",
    )


class Recipe(BaseModel):
    """A whole Phase 2 recipe: training arguments plus the policies around them."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    classes: list[str] | None = Field(
        None,
        min_length=1,
        description="Class names the dataset must have, in order; unset: whatever its data.yaml names.",
    )
    minority_class: str = Field(
        "toe_drain", description="The rare class that rebalancing, validation and the report watch."
    )
    train: TrainArgs = Field(default_factory=TrainArgs)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    rebalance: RebalanceSettings = Field(default_factory=RebalanceSettings)
    selection: SelectionPolicy = Field(default_factory=SelectionPolicy)
    promotion: PromotionRule = Field(default_factory=PromotionRule)
    export: ExportSettings = Field(default_factory=ExportSettings)
    label_review: LabelReviewSettings = Field(default_factory=LabelReviewSettings)
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)

    @model_validator(mode="after")
    def _class_names_are_known(self) -> Recipe:
        if "targets" not in self.rebalance.model_fields_set:
            self.rebalance.targets = {self.minority_class: DEFAULT_MINORITY_VAL_TARGET}
        if self.classes is None:
            return self
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes} name a class twice")
        named = {
            "minority_class": [self.minority_class],
            "rebalance.targets": list(self.rebalance.targets),
            "rebalance.test_targets": list(self.rebalance.test_targets),
            "selection.class_floors": list(self.selection.class_floors),
            "promotion.per_class_min": list(self.promotion.per_class_min),
        }
        for field, names in named.items():
            if unknown := [n for n in names if n not in self.classes]:
                raise ValueError(f"{field} names {unknown}, not among classes {self.classes}")
        return self


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Load configs/<name>.yaml or a path; errors name the file, the key and what is wrong."""
    path = Path(path_or_name)
    if not path.suffix:
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    elif not path.exists() and path.parent == Path(".") and path.suffix in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{path.stem}.yaml"  # `phase2-seed.yaml` names the recipe phase2-seed
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise RecipeError(f"{path}: recipe not found. Known recipes: {known} (or pass a path to a recipe file)")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise RecipeError(
            f"{path}: not a text YAML file (pass a recipe .yaml, e.g. a copy of configs/phase2-seed.yaml)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({exc}). Fix the syntax.") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with at least `name:` and `train:`")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for err in exc.errors():
            # Union members show up in loc ("imgsz.int", "imgsz.literal['native']"): keep field names.
            key = ".".join(str(p) for p in err["loc"] if not _UNION_MEMBER.match(str(p)))
            hint = "remove it or fix its spelling" if err["type"] == "extra_forbidden" else "fix the value"
            problems.setdefault(key or "recipe", []).append(f"{err['msg']} ({hint})")
        raise RecipeError("\n".join(f"{path}: {key}: {'; or '.join(msgs)}" for key, msgs in problems.items())) from None


class LintWarning(BaseModel):
    code: str
    field: str
    message: str


def lint_recipe(recipe: Recipe, native_imgsz: int | None = None) -> list[LintWarning]:
    """Settings that silently do something else than the user thinks."""
    t = recipe.train
    out: list[LintWarning] = []
    if t.conf is not None:
        out.append(
            LintWarning(
                code="TRAIN_CONF",
                field="train.conf",
                message=f"conf={t.conf} at training time only changes per-epoch validation: it lowers "
                "results.csv metrics and the fitness that picks best.pt. Remove it; set conf at inference.",
            )
        )
    if t.iou is not None:
        out.append(
            LintWarning(
                code="TRAIN_IOU",
                field="train.iou",
                message=f"iou={t.iou} is the NMS threshold of per-epoch validation, not a box-loss or "
                "matching threshold: it does not make boxes tighter.",
            )
        )
    if t.close_mosaic >= t.epochs and t.mosaic > 0:
        out.append(
            LintWarning(
                code="CLOSE_MOSAIC_GE_EPOCHS",
                field="train.close_mosaic",
                message=f"close_mosaic={t.close_mosaic} >= epochs={t.epochs}: mosaic={t.mosaic} is never used.",
            )
        )
    if t.optimizer != "auto" and t.warmup_epochs > 0 and t.warmup_bias_lr > 10 * t.lr0:
        out.append(
            LintWarning(
                code="WARMUP_BIAS_LR",
                field="train.warmup_bias_lr",
                message=f"warmup_bias_lr={t.warmup_bias_lr} is {t.warmup_bias_lr / t.lr0:.0f}x lr0={t.lr0}: "
                "bias parameters start warmup at that rate (see lr/pg0 in results.csv). Set it near lr0.",
            )
        )
    if native_imgsz and isinstance(t.imgsz, int) and t.imgsz > 1.5 * native_imgsz:
        factor = (t.imgsz / native_imgsz) ** 2
        out.append(
            LintWarning(
                code="IMGSZ_ABOVE_NATIVE",
                field="train.imgsz",
                message=f"imgsz={t.imgsz} upsamples images whose largest side is {native_imgsz} px: "
                f"~{factor:.1f}x the compute for no new detail. Use imgsz: native.",
            )
        )
    if t.save_period == 0:
        out.append(
            LintWarning(
                code="SAVE_PERIOD_ZERO",
                field="train.save_period",
                message="save_period=0 is treated as off; use -1 or a positive period.",
            )
        )
    return out


def resolve_imgsz(recipe: Recipe, recommended_imgsz: int | None) -> int:
    if recipe.train.imgsz == "native":
        if not recommended_imgsz:
            raise RecipeError(f"recipe {recipe.name}: imgsz 'native' needs the dataset's recommended size")
        return recommended_imgsz
    return int(recipe.train.imgsz)
