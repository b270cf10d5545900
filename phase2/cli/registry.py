"""`phase2 models …`: the model registry (phase2/registry/) from the command line.

A model reference is ``NAME:VERSION|ALIAS`` (``site-inspection-detector:v3``,
``site-inspection-detector:production``), or just ``VERSION|ALIAS`` for the default model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from phase2.cli.base import JSON_HELP, CliError, examples, json_mode, models_app, print_json

REF_HELP = "Model reference NAME:VERSION|ALIAS (e.g. site-inspection-detector:production), or v3 / production."


def open_registry(ref: str = "") -> tuple[Any, str]:
    """(Registry for the name in ``NAME:REF`` or the default name, the part after the name).

    Fails within ~2 s with what to do when no S3 server is reachable (stack down, bad endpoint).
    """
    from phase2.infra.seaweedfs import reachable_s3_settings
    from phase2.infra.settings import DEFAULT_MODEL_NAME
    from phase2.registry.registry import Registry
    from phase2.registry.storage import ObjectStore

    name, sep, rest = ref.partition(":")
    store = ObjectStore(reachable_s3_settings(), max_attempts=2, connect_timeout=3)
    return (Registry(store, name), rest) if sep else (Registry(store, DEFAULT_MODEL_NAME), ref)


def _metric(version: Any, split: str, *path: str) -> str:
    node = version.metrics.get(split, {})
    for part in path:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return f"{node:.4f}" if isinstance(node, (int, float)) else "-"


@models_app.command(
    "list",
    epilog=examples("phase2 models list", "phase2 models list --name my-detector --json"),
)
def models_list(
    name: Annotated[str | None, typer.Option(help="Model name (default: site-inspection-detector).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Registered versions with their aliases and headline metrics."""
    json_mode(as_json)
    registry, _ = open_registry(f"{name}:" if name else "")
    versions, aliases = registry.list_versions(), registry.aliases()
    if as_json:
        print_json({"aliases": aliases, "versions": [v.model_dump(mode="json") for v in versions]})
        return
    by_version: dict[int, list[str]] = {}
    for alias, number in sorted(aliases.items()):
        by_version.setdefault(number, []).append(alias)
    typer.echo(f"{registry.name}: {len(versions)} version(s)")
    typer.echo(f"{'version':>7}  {'created_at':25}  {'val mAP50-95':>12}  {'test mAP50-95':>13}  {'code':12}  aliases")
    for v in versions:
        typer.echo(
            f"{'v' + str(v.version):>7}  {v.created_at:25}  {_metric(v, 'val', 'overall', 'mAP50-95'):>12}  "
            f"{_metric(v, 'test', 'overall', 'mAP50-95'):>13}  {v.code_version[:12]:12}  "
            f"{', '.join(by_version.get(v.version, []))}"
        )


@models_app.command(
    "show",
    epilog=examples(
        "phase2 models show site-inspection-detector:production",
        "phase2 models show v3 --json",
    ),
)
def models_show(
    ref: Annotated[str, typer.Argument(help=REF_HELP)],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON instead of the model card.")
    ] = False,
) -> None:
    """The version's model card (MODEL_CARD.md, sha256-checked); --json: its full manifest (files with
    sha256, metrics, lineage, exports with parity) and aliases. Versions without a card show the manifest."""
    from phase2.registry.registry import CARD_FILES

    registry, rest = open_registry(ref)
    version = registry.get(rest)
    aliases = sorted(a for a, n in registry.aliases().items() if n == version.version)
    if not as_json and CARD_FILES[0] in version.files:
        typer.echo(f"{version.ref}  aliases: {', '.join(aliases) or 'none'}  {registry.version_uri(version.version)}")
        typer.echo(registry.read_text(version, CARD_FILES[0]))
        return
    json_mode(True)
    print_json({**version.model_dump(mode="json"), "aliases": aliases, "uri": registry.version_uri(version.version)})


@models_app.command(
    "download",
    epilog=examples(
        "phase2 models download site-inspection-detector:production --out models/",
        "phase2 models download v3 --out models/ --format onnx --json",
    ),
)
def models_download(
    ref: Annotated[str, typer.Argument(help=REF_HELP)],
    out: Annotated[Path | None, typer.Option(help="Directory; the model lands in DIR/NAME-vN/.")] = None,
    to: Annotated[Path | None, typer.Option("--to", help="Same as --out.")] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="pt (weights, no exports), onnx|openvino|torchscript (that export + the card, no pickle), or all.",
        ),
    ] = "all",
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Download a version (or one format of it), verifying every file's sha256 against the manifest (a
    tampered file is refused, nothing half-written kept; an export that failed its parity check is refused)."""
    json_mode(as_json)
    target = out or to
    if target is None:
        raise CliError("--out DIR is required (where the model is written)", exit_code=2)
    if target.exists() and not target.is_dir():
        raise CliError(f"{target}: --out is an existing file, not a directory (pass a directory)")
    registry, rest = open_registry(ref)
    folder = registry.download(rest, target, fmt)
    if as_json:
        print_json({"path": str(folder)})
    else:
        typer.echo(str(folder))


@models_app.command(
    "promote",
    epilog=examples("phase2 models promote site-inspection-detector:v3", "phase2 models promote v3 --alias staging"),
)
def models_promote(
    ref: Annotated[str, typer.Argument(help=REF_HELP)],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Move an alias to a version by hand (compare-and-swap; the version must be complete)."""
    json_mode(as_json)
    registry, rest = open_registry(ref)
    previous = registry.aliases().get(alias)
    version = registry.set_alias(alias, rest)
    if as_json:
        print_json({"model": registry.name, "alias": alias, "previous": previous, "version": version.version})
        return
    was = f"v{previous}" if previous else "unset"
    typer.echo(f"{registry.name}: {alias} {was} -> v{version.version}")
