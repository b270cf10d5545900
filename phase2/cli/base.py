"""The `phase2` app objects, its one error boundary, and its output conventions.

- Expected failures (this project's error classes, missing or unreadable files, ValueErrors
  raised by our code, usage mistakes) become ONE stderr line ``error: <input>: <what> (<fix>)``
  and exit 1 (2 for usage); anything else is a bug and keeps its traceback.
- ``--json`` output is pure JSON on stdout: while a command runs in JSON mode, everything else
  written to stdout (library logs, progress) goes to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import typer
from typer._click.core import Context  # typer vendors click: its own classes, not click's
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from phase2.infra.settings import PROJECT_ROOT, configure_environment

# Commands that create the state dir (./.phase2) when none is found; every other command reads.
CREATES_STATE = frozenset({"up", "run", "deploy"})
_OUR_CODE = tuple(str(PROJECT_ROOT / part) for part in ("phase2", "flows", "tasks"))
_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class CliError(Exception):
    """An expected failure reported by a command: ``error: <message>``, exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _ours(cls: type) -> bool:
    return any(c.__module__.split(".")[0] in ("phase2", "flows", "tasks") for c in cls.__mro__[:-1])


def _raised_by_our_code(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_OUR_CODE)


def is_expected(exc: BaseException) -> bool:
    """An input or environment problem the user can fix (not a bug of ours)."""
    if isinstance(exc, _OS_ERRORS) or _ours(type(exc)):
        return True
    return isinstance(exc, ValueError) and _raised_by_our_code(exc)


def one_line(exc: BaseException) -> str:
    """The error as one line; an OSError from the OS names its file first."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


class Phase2Group(TyperGroup):
    """The error boundary: every command and sub-group of `phase2` runs inside ``invoke``."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except typer.Exit:
            raise
        except UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            typer.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            if not is_expected(exc):
                raise
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        finally:
            _restore_stdout()


def new_app(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True, cls=Phase2Group, rich_markup_mode="markdown")


app = new_app("Phase 2 training pipeline for the site-inspection detector.")
models_app = new_app("Registered models: list, show, download, promote.")
wandb_app = new_app("Weights & Biases: publish offline runs once online.")
app.add_typer(models_app, name="models")
app.add_typer(wandb_app, name="wandb")


def package_version() -> str:
    try:
        return version("phase2")
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"phase2 {package_version()}")
        raise typer.Exit()


@app.callback()
def _setup(
    ctx: typer.Context,
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    # Read-only commands create no ./.phase2: without a state dir they use a scratch one.
    configure_environment(create_state=ctx.invoked_subcommand in CREATES_STATE)


def examples(*lines: str) -> str:
    """An ``Examples:`` block for a command's help (its epilog)."""
    return "**Examples:**\n\n" + "\n\n".join(f"`{line}`" for line in lines)


# --- output --------------------------------------------------------------------------------

_real_stdout: IO[str] | None = None


def json_mode(enabled: bool) -> None:
    """In JSON mode, send everything but the JSON document to stderr (library logs included)."""
    global _real_stdout
    if not enabled or _real_stdout is not None:
        return
    _real_stdout = sys.stdout
    sys.stdout = sys.stderr
    for handler in logging.getLogger("ultralytics").handlers:  # bound to stdout when it was imported
        if isinstance(handler, logging.StreamHandler) and handler.stream is _real_stdout:
            handler.setStream(sys.stderr)


def _restore_stdout() -> None:
    global _real_stdout
    if _real_stdout is not None:
        sys.stdout, _real_stdout = _real_stdout, None


def print_json(data: Any) -> None:
    """The command's one JSON document, on the real stdout."""
    stream = _real_stdout or sys.stdout
    stream.write(json.dumps(data, indent=2, default=str) + "\n")
    stream.flush()


JSON_HELP = "Print the result as JSON on stdout (logs go to stderr)."
# One spelling of a model everywhere a command takes one.
MODEL_HELP = (
    "A model: a registry reference NAME:VERSION|ALIAS (site-inspection-detector:production, or just "
    "production / v3 for the default name), an s3:// URI, or a local .pt."
)


def data_yaml_path(path: Path) -> Path:
    """A dataset argument: a data.yaml, or a directory holding one."""
    if path.is_dir():
        candidate = path / "data.yaml"
        if not candidate.is_file():
            raise CliError(f"{path}: a directory without data.yaml (pass the dataset's data.yaml)")
        return candidate
    return path


def out_dir(path: Path) -> Path:
    """An ``--out`` that must be a directory: refuse an existing file before doing any work."""
    if path.exists() and not path.is_dir():
        raise CliError(f"{path}: --out is an existing file, not a directory (pass a new or existing directory)")
    return path
