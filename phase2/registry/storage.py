"""The one way this project reaches S3 (boto3 is imported nowhere else).

Promises:
- Every object written here carries its sha256 as user metadata (``x-amz-meta-sha256``), and
  every read verifies it, so corruption at rest or in transit is caught.
- Nothing half-written is visible: S3 puts are atomic (a multipart upload appears only on
  CompleteMultipartUpload), and downloads go to a temp file next to the destination that is
  ``os.replace``d into place only after its sha256 matched.
- Errors surface as :class:`StorageError` with a one-line message naming endpoint, bucket and
  key, never a credential. Transient faults are retried by botocore's retry config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from phase2.infra.files import CHUNK, atomic_path, sha256_bytes, sha256_file
from phase2.infra.settings import S3Settings

SHA256_METADATA = "sha256"
# Multipart above 8 MiB: large weights upload in parallel parts, small JSON in one request.
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=8 * CHUNK, multipart_chunksize=8 * CHUNK, max_concurrency=4, use_threads=True
)


class StorageError(RuntimeError):
    """Any failure to reach or use the object store; the message is one line, secret-free."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the key exists (If-None-Match) or changed (If-Match)."""


class ObjectNotFound(StorageError):
    """The key does not exist in the bucket."""


class IntegrityError(StorageError):
    """Bytes read back do not match the sha256 they were stored or registered with."""


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if len(bucket) < 3 or not key:
        raise ValueError(f"S3 URI needs a bucket (>= 3 characters) and a key: {uri!r}")
    return bucket, key


def _client_error_code(exc: BaseException) -> tuple[str, int]:
    """(error code, HTTP status) of a ClientError, also when wrapped by boto3's upload errors."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ClientError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return "", 0
    error = seen.response.get("Error", {})
    status = seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status or 0)


class ObjectStore:
    """One bucket on an S3-compatible endpoint (path-style addressing, as SeaweedFS needs)."""

    def __init__(
        self, settings: S3Settings, *, max_attempts: int = 5, connect_timeout: float = 5, read_timeout: float = 60
    ) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )

    def _new_client(self) -> Any:  # boto3 clients are generated at runtime: no static type
        secret = self.settings.secret_access_key
        key_id = self.settings.access_key_id
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=self._config,
        )

    @cached_property
    def _client(self) -> Any:
        return self._new_client()

    @cached_property
    def _create_only_client(self) -> Any:
        """A client whose object writes all carry If-None-Match: *.

        boto3's managed upload (TransferConfig, multipart) does not accept IfNoneMatch, so it is
        injected into the request that makes the object visible: PutObject for small files,
        CompleteMultipartUpload for multipart ones.
        """
        client = self._new_client()

        def add_if_none_match(params: dict[str, Any], **_: Any) -> None:
            params["IfNoneMatch"] = "*"

        for operation in ("PutObject", "CompleteMultipartUpload"):
            client.meta.events.register(f"before-parameter-build.s3.{operation}", add_if_none_match)
        return client

    @property
    def _where(self) -> str:
        return f"{self.settings.endpoint_url or 'AWS S3'} bucket {self.bucket!r}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate boto errors into one-line StorageErrors; never include credentials."""
        target = self.uri(key) if key is not None else f"bucket {self.bucket!r}"
        try:
            yield
        except StorageError:
            raise
        except (ClientError, S3UploadFailedError) as exc:
            code, status = _client_error_code(exc)
            if code in ("PreconditionFailed", "412") or status == 412:
                raise PreconditionFailed(f"{action} {target}: precondition failed (object exists or changed)") from exc
            if code == "NoSuchBucket":
                raise StorageError(
                    f"{action} {target}: bucket {self.bucket!r} does not exist at "
                    f"{self.settings.endpoint_url or 'AWS S3'} (create it or set PHASE2_S3_BUCKET)"
                ) from exc
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise ObjectNotFound(f"{action} {target}: no such object") from exc
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
                raise StorageError(
                    f"{action} {target}: access denied by {self.settings.endpoint_url or 'AWS S3'} ({code or status}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                ) from exc
            raise StorageError(f"{action} {target}: S3 error {code or status}") from exc
        except NoCredentialsError as exc:
            raise StorageError(
                f"{action} {target}: no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            ) from exc
        except EndpointConnectionError as exc:
            endpoint = self.settings.endpoint_url or "AWS S3"
            raise StorageError(
                f"{action} {target}: cannot reach S3 endpoint {endpoint} (is the server running?)"
            ) from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageError(
                f"{action} {target}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc

    # --- bucket ---------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (and is ours)."""
        with self._errors("create bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _client_error_code(exc)[1] != 404:
                    raise
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _client_error_code(exc)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # --- objects --------------------------------------------------------------------------

    def put_file(self, path: Path, key: str, *, if_none_match: bool = False, sha256: str | None = None) -> str:
        """Upload a file (multipart above 8 MiB); returns the new ETag.

        ``sha256`` may be passed when the caller already hashed the file. With
        ``if_none_match`` an existing key raises :class:`PreconditionFailed`.
        """
        path = Path(path)
        digest = sha256 or sha256_file(path)
        client = self._create_only_client if if_none_match else self._client
        with self._errors("upload", key):
            client.upload_file(
                str(path), self.bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA: digest}}, Config=TRANSFER_CONFIG
            )
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        if head.get("Metadata", {}).get(SHA256_METADATA) != digest:
            raise IntegrityError(f"upload {self.uri(key)}: object was replaced concurrently (sha256 differs)")
        return str(head["ETag"])

    def copy(self, source_key: str, key: str, *, sha256: str) -> str:
        """Server-side copy of ``source_key`` (whose bytes have ``sha256``) to ``key``: no bytes
        travel through this process. Refused when the source no longer has ``sha256`` (it was
        replaced meanwhile); returns the new ETag."""
        with self._errors("copy", key):
            self._client.copy(
                {"Bucket": self.bucket, "Key": source_key},
                self.bucket,
                key,
                ExtraArgs={"Metadata": {SHA256_METADATA: sha256}, "MetadataDirective": "REPLACE"},
                Config=TRANSFER_CONFIG,
            )
            head = self._client.head_object(Bucket=self.bucket, Key=key)
            source = self._client.head_object(Bucket=self.bucket, Key=source_key)
        if (
            source.get("Metadata", {}).get(SHA256_METADATA) != sha256
            or head["ContentLength"] != source["ContentLength"]
        ):
            raise IntegrityError(f"copy {self.uri(source_key)} -> {self.uri(key)}: the source changed meanwhile")
        return str(head["ETag"])

    def get_file(self, key: str, dest: Path, *, expected_sha256: str | None = None) -> Path:
        """Download to ``dest`` atomically, verified against ``expected_sha256`` (else the
        object's sha256 metadata; an object without either is refused)."""
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            with tmp.open("wb") as out, self._errors("download", key):
                # One GetObject: body and metadata come from the same version of the object.
                response = self._client.get_object(Bucket=self.bucket, Key=key)
                expected = expected_sha256 or response.get("Metadata", {}).get(SHA256_METADATA)
                if not expected:
                    raise IntegrityError(f"download {self.uri(key)}: no sha256 to verify against; refusing it")
                digest = hashlib.sha256()
                for chunk in response["Body"].iter_chunks(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != expected:
                raise IntegrityError(
                    f"download {self.uri(key)}: sha256 {digest.hexdigest()[:16]}... does not match the "
                    f"expected {expected[:16]}... (corrupted or tampered; nothing was written to {dest})"
                )
        return dest

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Single-request put (atomic); returns the new ETag."""
        conditions: dict[str, str] = {}
        if if_match is not None:
            conditions["IfMatch"] = if_match
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        with self._errors("put", key):
            response = self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata={SHA256_METADATA: sha256_bytes(data)},
                **conditions,
            )
        return str(response["ETag"])

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        """(content, ETag); verified against its sha256 metadata when present."""
        with self._errors("get", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            data = response["Body"].read()
        expected = response.get("Metadata", {}).get(SHA256_METADATA)
        if expected and sha256_bytes(data) != expected:
            raise IntegrityError(f"get {self.uri(key)}: content does not match its stored sha256 (corrupted)")
        return data, response["ETag"]

    def get_json(self, key: str) -> tuple[Any, str]:
        data, etag = self.get_bytes(key)
        try:
            return json.loads(data), etag
        except ValueError as exc:
            raise IntegrityError(f"get {self.uri(key)}: not valid JSON ({exc})") from exc

    def put_json_cas(self, key: str, obj: Any, etag: str | None) -> str:
        """Compare-and-swap a JSON document: create it (``etag=None``, If-None-Match) or replace
        exactly the version read (If-Match). Raises :class:`PreconditionFailed` when another
        writer got there first; re-read and retry."""
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        if etag is None:
            return self.put_bytes(key, data, content_type="application/json", if_none_match=True)
        return self.put_bytes(key, data, content_type="application/json", if_match=etag)

    def head(self, key: str) -> dict[str, Any]:
        """{"etag", "size", "sha256"} of an object (sha256 None when it has no metadata)."""
        with self._errors("head", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        return {
            "etag": response["ETag"],
            "size": response["ContentLength"],
            "sha256": response.get("Metadata", {}).get(SHA256_METADATA),
        }

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix``, sorted (pages through ListObjectsV2)."""
        keys: list[str] = []
        with self._errors("list", prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)
