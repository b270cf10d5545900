"""Everything deployable that one registration adds to a version: exports with their parity
and the model card (called by tasks/register.py and by `phase2 export`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phase2.deploy.card import build_card, write_card
from phase2.deploy.export import ExportedModel, ExportError, export_weights
from phase2.deploy.parity import measure_parity
from phase2.deploy.settings import ExportSettings
from phase2.evaluation.evaluate import EvalProtocol
from phase2.evaluation.matches import MatchTable
from phase2.registry.manifest import ExportRecord

EXPORTS_DIR = "exports"


@dataclass
class Deployables:
    files: dict[str, Path] = field(default_factory=dict)  # {relpath in the version: local file}
    exports: dict[str, ExportRecord] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it was not exported
    gate: dict[str, Any] | None = None  # `phase2 evaluate` JSON of the .pt on the gate split
    reference: str = ""  # where the .pt's pass on the gate split came from (saved table or a new pass)

    def messages(self) -> list[str]:
        """One plain line per export (usable or not, with why) and per skipped format."""
        lines = []
        for fmt, export in self.exports.items():
            p = export.parity
            numbers = (
                f"|Δ mAP50| {p.delta_map50:.4f}, |Δ mAP50-95| {p.delta_map50_95:.4f}, "
                f"boxes {p.boxes_matched}/{p.boxes_pt}"
                if p
                else "parity not measured"
            )
            verdict = "usable" if export.usable else f"NOT USABLE: {export.reason}"
            lines.append(f"{fmt} export {export.path}: {verdict} ({numbers})")
        lines += [f"{fmt} export skipped: {why}" for fmt, why in self.skipped.items()]
        return lines


def export_record(exported: ExportedModel, parity: Any = None, problems: list[str] | None = None) -> ExportRecord:
    files = [f"{EXPORTS_DIR}/{rel}" for rel in exported.files()]
    return ExportRecord(
        format=exported.format,
        path=f"{EXPORTS_DIR}/{exported.path.name}",
        files=files,
        imgsz=exported.imgsz,
        half=exported.half,
        opset=exported.opset,
        parity=parity,
        usable=not problems if parity is not None else False,
        reason="; ".join(problems) if problems else (None if parity is not None else "parity not measured"),
    )


def pt_reference(
    weights: Path, data_yaml: Path, protocol: EvalProtocol, saved_matches: Path | None
) -> tuple[MatchTable, str]:
    """The .pt's validation pass on ``protocol.split`` and where it came from: the match table
    selection saved (``saved_matches``) when it is of these weights under this protocol, so the
    .pt is not evaluated twice; otherwise a new pass."""
    from phase2.evaluation.matches import collect_matches, load_match_table
    from phase2.infra.files import sha256_file

    if saved_matches is not None and Path(saved_matches).is_file():
        table = load_match_table(Path(saved_matches))
        if table.protocol == protocol and table.weights_sha256 == sha256_file(weights):
            return table, f"saved match table {saved_matches}"
    return collect_matches(weights, data_yaml, protocol), "new validation pass"


def prepare_deployables(
    *,
    weights: Path,
    data_yaml: Path,
    protocol: EvalProtocol,
    settings: ExportSettings,
    out_dir: Path,
    card_inputs: dict[str, Any],
    files: dict[str, Path],
    saved_matches: Path | None = None,
) -> Deployables:
    """Export ``weights`` to each format of ``settings`` at ``protocol.imgsz``, measure each
    against the .pt on ``protocol.split``, and write the model card describing ``files`` plus
    the exports. ``card_inputs``: the keyword arguments of :func:`build_card` not derived here.
    ``saved_matches``: the .pt's match table on that split from selection (used when it fits)."""
    from phase2.evaluation.uncertainty import evaluate_table

    out = Deployables()
    reference, out.reference = pt_reference(weights, data_yaml, protocol, saved_matches)
    out.gate = evaluate_table(reference)
    for fmt in settings.formats:
        try:
            exported = export_weights(
                weights, fmt, imgsz=protocol.imgsz, out_dir=out_dir / EXPORTS_DIR, half=settings.half, stem="best"
            )
        except ExportError as error:
            out.skipped[fmt] = str(error)
            continue
        parity, problems = measure_parity(weights, exported, data_yaml, reference, settings)
        record = export_record(exported, parity, problems)
        out.exports[fmt] = record
        out.files |= {f"{EXPORTS_DIR}/{rel}": path for rel, path in exported.files().items()}
    card = build_card(
        **card_inputs,
        data_yaml=data_yaml,
        gate=out.gate,
        imgsz=protocol.imgsz,
        exports=out.exports,
        files={**files, **out.files},
    )
    out.files |= write_card(card, out_dir / "card")
    return out
