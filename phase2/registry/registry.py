"""Model registry of record, kept in the S3 bucket (works offline, on any S3-compatible store).

Layout under ``models/<name>/``:
- ``versions/v<N>/.claim``: created with If-None-Match by whoever takes number N (the number is
  allocated by this conditional put; on 412 the next number is tried), so only one writer
  ever uploads files under ``v<N>/``.
- ``versions/v<N>/<relpath>``: the files.
- ``versions/v<N>/manifest.json``: written LAST, with If-None-Match. A version exists only once
  its manifest exists; the manifest lists the sha256 and size of every file. A writer that
  dies before it leaves a claim without manifest: never listed, never resolvable, its number
  is skipped.
- ``aliases.json``: ``{"aliases": {alias: N}}``, changed only by compare-and-swap (If-Match on
  the ETag read), retried on 412, so concurrent writers never lose an update. An alias can
  only point at a version whose manifest exists.

Security: Ultralytics weights are pickles (loading runs code). Everything downloaded here is
checked against the manifest's sha256 before it is moved into place, and file names in a
manifest are checked to be plain relative paths (a manifest is read from the bucket: a name
like ``../x`` must never become a path outside the download folder). A matching sha256 proves
only that the file is what the bucket holds, so weights handed out by :meth:`resolve_reference`
are also loaded with the weights-only loader first (phase2/training/checkpoints.py).
"""

from __future__ import annotations

import errno
import importlib.metadata
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from phase2.infra.files import atomic_write_text, sha256_bytes, sha256_file
from phase2.infra.settings import DEFAULT_MODEL_NAME, state_dir
from phase2.registry.manifest import (
    CARD_FILES,
    CLAIM,
    MANIFEST,
    WEIGHTS_FILE,
    ExportParity,
    ExportRecord,
    FileEntry,
    ModelVersion,
    RegistrationMetadata,
    RegistryError,
    check_relpath,
)
from phase2.registry.storage import (
    IntegrityError,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    parse_uri,
)
from phase2.training.checkpoints import verify_checkpoint

__all__ = [
    "CARD_FILES",
    "WEIGHTS_FILE",
    "ExportParity",
    "ExportRecord",
    "IntegrityError",
    "ModelVersion",
    "PromotionConflict",
    "PromotionVerdict",
    "Registry",
    "RegistryError",
]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_VERSION_RE = re.compile(r"^v?(\d+)$")
_CAS_ATTEMPTS = 64


class PromotionConflict(RegistryError):
    """Production moved since the promotion decision was made; decide again."""


class PromotionVerdict(Protocol):
    """What :meth:`Registry.apply_promotion` needs of a promotion decision
    (:class:`phase2.evaluation.promotion.PromotionDecision`); the policy itself lives there."""

    @property
    def promote(self) -> bool: ...

    @property
    def production_version(self) -> int | None: ...


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))


class Registry:
    """The registry for one model name in one bucket."""

    def __init__(self, store: ObjectStore, name: str = DEFAULT_MODEL_NAME) -> None:
        if not _NAME_RE.match(name):
            raise RegistryError(f"bad model name {name!r}: lowercase letters, digits, '.', '_', '-' (2-64 chars)")
        self.store = store
        self.name = name
        self.prefix = f"models/{name}/"

    def version_prefix(self, version: int) -> str:
        """The key prefix under which version ``version`` keeps its files."""
        return f"{self.prefix}versions/v{version}/"

    def version_uri(self, version: int) -> str:
        return self.store.uri(self.version_prefix(version))

    def manifest_key(self, version: int) -> str:
        """The key of version ``version``'s manifest.json (the version exists once it does)."""
        return self.version_prefix(version) + MANIFEST

    def manifest_uri(self, version: int) -> str:
        return self.store.uri(self.manifest_key(version))

    @property
    def _aliases_key(self) -> str:
        return self.prefix + "aliases.json"

    # --- registering --------------------------------------------------------------------

    def _numbers_taken(self) -> list[int]:
        numbers = set()
        for key in self.store.list(self.prefix + "versions/"):
            match = re.match(re.escape(self.prefix) + r"versions/v(\d+)/", key)
            if match:
                numbers.add(int(match.group(1)))
        return sorted(numbers)

    def _claim_version(self, owner: str) -> int:
        number = max(self._numbers_taken(), default=0) + 1
        while True:
            try:
                self.store.put_bytes(self.version_prefix(number) + CLAIM, owner.encode(), if_none_match=True)
                return number
            except PreconditionFailed:
                # Someone took N, or our own put succeeded and its retry saw the result.
                data, _ = self.store.get_bytes(self.version_prefix(number) + CLAIM)
                if data == owner.encode():
                    return number
                number += 1

    def register(self, files: dict[str, Path], metadata: dict[str, Any]) -> ModelVersion:
        """Upload ``files`` ({relpath in the version: local path}) as the next version.

        Returns the new version once its manifest (written last) exists.
        """
        if not files:
            raise RegistryError("nothing to register: no files given")
        meta = RegistrationMetadata.model_validate(metadata)
        meta.ultralytics_version = meta.ultralytics_version or _installed_version("ultralytics")
        meta.torch_version = meta.torch_version or _installed_version("torch")
        entries: dict[str, FileEntry] = {}
        sources: dict[str, Path] = {}
        for relpath, local in files.items():
            local = Path(local)
            if not local.is_file():
                raise RegistryError(f"cannot register {relpath!r}: {local} is not a file")
            try:
                relpath = check_relpath(relpath)
            except ValueError as exc:
                raise RegistryError(str(exc)) from None
            entries[relpath] = FileEntry(sha256=sha256_file(local), size=local.stat().st_size)
            sources[relpath] = local
        owner = f"{datetime.now(UTC).isoformat()} {random.getrandbits(64):016x}"
        version = self._claim_version(owner)
        for relpath, local in sources.items():
            self.store.put_file(
                local, self.version_prefix(version) + relpath, if_none_match=True, sha256=entries[relpath].sha256
            )
        manifest = ModelVersion(
            name=self.name,
            version=version,
            files=entries,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            **meta.model_dump(),
        )
        body = manifest.model_dump_json(indent=2).encode()
        try:
            self.store.put_bytes(self.manifest_key(version), body, content_type="application/json", if_none_match=True)
        except PreconditionFailed:
            # Only we hold the claim, so the manifest there is ours if a retried put landed.
            if self.store.get_bytes(self.manifest_key(version))[0] != body:
                raise RegistryError(
                    f"{self.name}:v{version} was written by someone else; claim protocol broken"
                ) from None
        return manifest

    # --- reading ------------------------------------------------------------------------

    def _load(self, version: int) -> ModelVersion:
        try:
            data, _ = self.store.get_bytes(self.manifest_key(version))
        except ObjectNotFound:
            raise RegistryError(f"{self.name}:v{version} does not exist (no manifest)") from None
        try:
            manifest = ModelVersion.model_validate_json(data)
        except ValidationError as exc:
            problems = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
            raise IntegrityError(
                f"{self.name}:v{version}: manifest {self.store.uri(self.manifest_key(version))} is refused: {problems}"
            ) from None
        if (manifest.name, manifest.version) != (self.name, version):
            raise IntegrityError(
                f"{self.store.uri(self.manifest_key(version))} describes "
                f"{manifest.name}:v{manifest.version}, not {self.name}:v{version}"
            )
        return manifest

    def list_versions(self) -> list[ModelVersion]:
        """Complete versions (those with a manifest), oldest first."""
        return [self._load(n) for n in self._numbers_taken() if self.store.exists(self.manifest_key(n))]

    def _read_aliases(self) -> tuple[dict[str, int], str | None]:
        try:
            doc, etag = self.store.get_json(self._aliases_key)
        except ObjectNotFound:
            return {}, None
        return {k: int(v) for k, v in doc.get("aliases", {}).items()}, etag

    def aliases(self) -> dict[str, int]:
        return self._read_aliases()[0]

    def alias_target(self, alias: str) -> ModelVersion | None:
        """The version ``alias`` points at; None while the alias is unset."""
        number = self.aliases().get(alias)
        return None if number is None else self._load(number)

    def find_registration(self, run_key: str, weights_sha256: str) -> ModelVersion | None:
        """The version that run ``run_key`` already registered with these weights (at
        :data:`WEIGHTS_FILE`), if any: a retried or re-run pipeline registers once."""
        for version in self.list_versions():
            weights = version.files.get(WEIGHTS_FILE)
            if version.run_key == run_key and weights is not None and weights.sha256 == weights_sha256:
                return version
        return None

    def get(self, ref: str) -> ModelVersion:
        """``"v3"``, ``"3"``, an alias (``"production"``), ``"latest"``, or any of those after
        ``"name:"`` (another name is looked up in its own registry)."""
        name, sep, rest = ref.partition(":")
        if sep:
            if name != self.name:
                return Registry(self.store, name).get(rest)
            ref = rest
        if match := _VERSION_RE.match(ref):
            return self._load(int(match.group(1)))
        if ref == "latest":
            versions = self.list_versions()
            if not versions:
                raise RegistryError(f"{self.name} has no versions yet")
            return versions[-1]
        aliases = self.aliases()
        if ref not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise RegistryError(f"{self.name} has no alias {ref!r} (aliases: {known})")
        return self._load(aliases[ref])

    # --- aliases ------------------------------------------------------------------------

    def _update_aliases(self, change: Callable[[dict[str, int]], dict[str, int]]) -> dict[str, int]:
        """Read-modify-write of aliases.json by compare-and-swap; ``change`` may run repeatedly."""
        for attempt in range(_CAS_ATTEMPTS):
            current, etag = self._read_aliases()
            updated = change(dict(current))
            if updated == current and etag is not None:
                return current
            try:
                self.store.put_json_cas(self._aliases_key, {"aliases": updated}, etag)
                return updated
            except PreconditionFailed:
                _backoff(attempt)
        raise RegistryError(f"aliases of {self.name}: gave up after {_CAS_ATTEMPTS} concurrent-update conflicts")

    def set_alias(self, alias: str, version: int | str) -> ModelVersion:
        """Point ``alias`` at a complete version (its manifest must exist)."""
        if not _ALIAS_RE.match(alias) or _VERSION_RE.match(alias) or alias == "latest":
            raise RegistryError(f"bad alias {alias!r}: lowercase word such as 'production' (not a version number)")
        target = self.get(str(version)) if isinstance(version, str) else self._load(version)

        def move(aliases: dict[str, int]) -> dict[str, int]:
            aliases[alias] = target.version
            return aliases

        self._update_aliases(move)
        return target

    # --- downloading --------------------------------------------------------------------

    def download(self, ref: str, dest_dir: Path, fmt: str = "all") -> Path:
        """Download a version into ``dest_dir/<name>-v<N>/`` (files + manifest.json) and return
        that directory. Every file is sha256-verified against the manifest; on any failure
        nothing is left in ``dest_dir``. An existing identical download is reused.

        ``fmt`` other than ``all`` downloads only that format's files (:meth:`ModelVersion.files_for`)
        into ``<name>-v<N>-<fmt>/``; an export that failed its parity check is refused."""
        name, sep, rest = ref.partition(":")
        if sep and name != self.name:
            return Registry(self.store, name).download(rest, dest_dir, fmt)
        version = self.get(ref)
        wanted = version.files_for(fmt)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / (f"{self.name}-v{version.version}" + ("" if fmt == "all" else f"-{fmt}"))
        manifest_json = version.model_dump_json(indent=2)
        for existing in (target, _hashed_name(target, manifest_json)):
            if _is_download_of(existing, manifest_json):
                return existing
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=dest_dir)).resolve()
        try:
            for relpath in wanted:
                entry = version.files[relpath]
                key = self.version_prefix(version.version) + relpath
                local_path = (staging / relpath).resolve()
                if not local_path.is_relative_to(staging):  # names are validated on read; never trust one
                    raise IntegrityError(
                        f"{version.ref}: file name {relpath!r} in its manifest points outside the download "
                        f"folder; refusing it (nothing written to {dest_dir})"
                    )
                try:
                    local = self.store.get_file(key, local_path, expected_sha256=entry.sha256)
                except IntegrityError:
                    raise IntegrityError(
                        f"{version.ref}: file {relpath!r} ({self.store.uri(key)}) does not match the sha256 in "
                        f"its manifest: corrupted or tampered; refusing to download it (nothing written to {dest_dir})"
                    ) from None
                if local.stat().st_size != entry.size:
                    raise IntegrityError(f"{version.ref}: file {relpath!r} has the wrong size")
            atomic_write_text(staging / MANIFEST, manifest_json)
            target = _publish_download(staging, target, manifest_json)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def read_text(self, version: ModelVersion, relpath: str) -> str:
        """One small file of a version (such as its model card), sha256-checked against the manifest."""
        entry = version.files.get(relpath)
        if entry is None:
            raise RegistryError(f"{version.ref} has no file {relpath!r} (registered before model cards existed?)")
        key = self.version_prefix(version.version) + relpath
        data, _ = self.store.get_bytes(key)
        if sha256_bytes(data) != entry.sha256:
            raise IntegrityError(
                f"{version.ref}: file {relpath!r} ({self.store.uri(key)}) does not match the sha256 in its manifest: "
                "corrupted or tampered; refusing it"
            )
        return data.decode()

    def resolve_export(self, uri_or_ref: str, fmt: str, cache_dir: Path | None = None) -> Path:
        """A local, verified export for inference without unpickling: a local file, an ``s3://``
        URI (checked against its sha256 metadata), or a registry reference (only that export's
        files are downloaded, each checked against the manifest; an export that failed its parity
        check is refused). Nothing is loaded here."""
        local = Path(uri_or_ref).expanduser()
        if local.exists():
            return local.resolve()
        cache = Path(cache_dir or state_dir() / "cache")
        if uri_or_ref.startswith("s3://"):
            return self._fetch_s3(uri_or_ref, cache)
        if ":" in uri_or_ref and not uri_or_ref.startswith((".", "/")):
            version = self.get(uri_or_ref)
            export = version.usable_export(fmt)
            folder = Registry(self.store, version.name).download(f"v{version.version}", cache / "registry", fmt)
            return folder / export.path
        raise RegistryError(
            f"model {uri_or_ref!r} is not an existing file, an s3:// URI or a registry reference like "
            f"'{self.name}:production'"
        )

    def _fetch_s3(self, uri: str, cache: Path) -> Path:
        """An ``s3://`` object in the local cache, checked against its sha256 metadata (required)."""
        bucket, key = parse_uri(uri)
        store = (
            self.store
            if bucket == self.store.bucket
            else ObjectStore(self.store.settings.model_copy(update={"bucket": bucket}))
        )
        expected = store.head(key)["sha256"]
        if not expected:
            raise IntegrityError(f"{uri} has no sha256 metadata; upload it with phase2 (or pass a local path)")
        dest = cache / "s3" / bucket / key
        if not (dest.is_file() and sha256_file(dest) == expected):
            store.get_file(key, dest, expected_sha256=expected)
        return dest

    def weights_file(self, version: ModelVersion) -> str:
        """The relpath of a version's weights: its only .pt file, else ``weights/best.pt``/``best.pt``."""
        pts = [p for p in version.files if p.endswith(".pt")]
        if len(pts) == 1:
            return pts[0]
        for preferred in ("weights/best.pt", "best.pt"):
            if preferred in version.files:
                return preferred
        raise RegistryError(f"{version.ref} has no single weights file (.pt files: {pts or 'none'})")

    def resolve_reference(self, uri_or_ref: str, cache_dir: Path | None = None) -> Path:
        """Local weights for a baseline given as a local path, an ``s3://`` URI, or a registry
        reference ``name:alias`` / ``name:vN``. Remote ones are downloaded into a cache under the
        state dir and sha256-verified (registry: manifest; s3:// URI: the object's sha256
        metadata, required). Every one is then loaded with the weights-only loader
        (:func:`phase2.training.checkpoints.verify_checkpoint`): a pickle that is not a plain
        YOLO checkpoint raises :class:`~phase2.training.checkpoints.UnsafeCheckpoint`, even when
        its sha256 matches, since the hash lives in the same bucket as the file."""
        local = Path(uri_or_ref).expanduser()
        if local.is_file():
            return verify_checkpoint(local.resolve())
        cache = Path(cache_dir or state_dir() / "cache")
        if uri_or_ref.startswith("s3://"):
            return verify_checkpoint(self._fetch_s3(uri_or_ref, cache))
        if ":" in uri_or_ref and not uri_or_ref.startswith((".", "/")):
            version = self.get(uri_or_ref)
            registry = Registry(self.store, version.name)
            folder = registry.download(f"v{version.version}", cache / "registry")
            return verify_checkpoint(folder / registry.weights_file(version))
        raise RegistryError(
            f"{uri_or_ref!r}: no such file, and not an s3:// URI or a registry reference like '{self.name}:production'"
        )

    # --- promotion ----------------------------------------------------------------------

    def apply_promotion(self, decision: PromotionVerdict, version: int) -> dict[str, int]:
        """``candidate`` -> version always; ``production`` -> version when the decision says so,
        and only if production is still the version the decision compared against."""
        self.set_alias("candidate", version)
        if not decision.promote:
            return self.aliases()
        self._load(version)

        def promote(aliases: dict[str, int]) -> dict[str, int]:
            current = aliases.get("production")
            if current != decision.production_version and current != version:
                raise PromotionConflict(
                    f"production of {self.name} moved to v{current} after the decision compared against "
                    f"{'v' + str(decision.production_version) if decision.production_version else 'no production'}; "
                    "evaluate again"
                )
            aliases["production"] = version
            return aliases

        return self._update_aliases(promote)


# --- download folders: shared by concurrent runs, never deleted under them ----------------------


def _is_download_of(folder: Path, manifest_json: str) -> bool:
    try:
        return (folder / MANIFEST).read_text() == manifest_json
    except OSError:
        return False


def _hashed_name(target: Path, manifest_json: str) -> Path:
    return target.with_name(f"{target.name}-{sha256_bytes(manifest_json.encode())[:12]}")


def _publish_download(staging: Path, target: Path, manifest_json: str) -> Path:
    """Move a complete, verified download into place without deleting a folder another run may be
    reading: a ``target`` holding something else is left alone and this copy is named by its
    manifest's hash instead. Renaming onto a non-empty folder fails, so of concurrent downloads of
    one version the first wins and the others use its identical copy."""
    if target.exists() and not _is_download_of(target, manifest_json):
        target = _hashed_name(target, manifest_json)
    try:
        staging.rename(target)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not _is_download_of(target, manifest_json):
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return target
