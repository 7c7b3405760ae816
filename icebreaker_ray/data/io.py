"""The one storage layer: validated, atomic Parquet I/O, files, model folders, manifests.

Every path may be a local path or a pyarrow filesystem URI (``s3://bucket/run``,
``gs://...``, ``file:///...``), so the same stage code runs on a laptop and on a
cluster with shared storage. Nothing outside this module opens a stage output by path.

    out = StageWriter("runs/demo", "simulate")
    out.write_table("sessions", table)          # validated against the schema, temp + rename
    out.commit(metrics={...})                   # manifest written last
    is_complete("runs/demo", "simulate", fingerprint=...)           # -> True
    read_table("runs/demo/simulate/sessions.parquet", "sessions")   # validated on read

(:func:`icebreaker_ray.pipeline.run_stage` adds the stage's chained fingerprint to the
manifest after the stage function returns.)

A stage counts as finished only when its manifest exists and every file it lists is
present with the recorded size; the manifest is written last, so a stage killed midway
is rerun, not trusted.

Model folders (libraries that need a directory: ``torch.load`` of several files,
``from_pretrained``, ``SentenceTransformer``):

    with output_dir("s3://bucket/run/train-scorer/scorer") as d:   # a local directory;
        model.save(d)                                             # uploaded on success
    d = local_dir("s3://bucket/run/train-scorer/scorer")  # the path itself when local, else a
                                                          # download cached by uri + listing
    train_storage("s3://bucket/run/_ray_train")           # RunConfig kwargs for Ray Train

S3 credentials and endpoint come from the standard AWS environment, read by pyarrow
(and Ray Train, which gets the same filesystem): ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (or a profile / instance role), ``AWS_DEFAULT_REGION``, and
``AWS_ENDPOINT_URL=http://host:port`` for an S3-compatible server (MinIO, Ceph, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from icebreaker_ray.data.schemas import ALLOWED_VALUES, OPTIONAL, schema

MANIFEST = "_manifest.json"
ATTEMPT = "_attempt.json"  # the config fingerprint of the latest (maybe unfinished) run


class DataError(ValueError):
    """A table or file does not meet its contract; the message names the file and column."""


# ----------------------------------------------------------------------------- paths


# The AWS variables that change which S3 filesystem a URI resolves to (see module doc).
_S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
           "AWS_PROFILE", "AWS_ACCESS_KEY_ID")
_BUCKET_FS: dict[tuple[str, ...], pafs.FileSystem] = {}


def is_local(uri: str | os.PathLike[str]) -> bool:
    """True for a plain path or a ``file://`` URI."""
    uri = os.fspath(uri)
    return "://" not in uri or uri.startswith("file://")


def absolute(uri: str | os.PathLike[str]) -> str:
    """``uri`` as every process can use it: a local path made absolute (Ray workers run in
    another working directory), a URI unchanged."""
    uri = os.fspath(uri)
    return os.path.abspath(uri) if "://" not in uri else uri


def resolve(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    uri = os.fspath(uri)
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    if scheme not in ("s3", "gs", "gcs") or "?" in rest:
        return pafs.FileSystem.from_uri(uri)
    # One filesystem per bucket: from_uri looks the bucket's region up on every call.
    bucket = rest.split("/", 1)[0]
    key = (scheme, bucket, *(os.environ.get(k, "") for k in _S3_ENV))
    if key not in _BUCKET_FS:
        _BUCKET_FS[key] = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]
    return _BUCKET_FS[key], rest.rstrip("/")


def join(base: str | os.PathLike[str], *parts: str) -> str:
    return "/".join([os.fspath(base).rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def listing(uri: str) -> list[tuple[str, int, int]]:
    """(path relative to ``uri``, size, mtime in ns) of every file at or under ``uri``,
    sorted: what a fingerprint of external inputs (bring-your-own logs) and the cache key
    of a downloaded model folder are made of."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    files = [info] if info.type == pafs.FileType.File else [
        f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if f.type == pafs.FileType.File]
    return sorted((f.path[len(path):].lstrip("/"), int(f.size or 0), int(f.mtime_ns or 0))
                  for f in files)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise DataError(f"{uri}: no such file")
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, payload: bytes) -> None:
    """Write a file atomically (temp file + rename)."""
    fs, path = resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(payload)
    fs.move(tmp, path)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri).decode())


def delete(uri: str) -> None:
    """Remove a file or a directory tree if it exists."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


# ----------------------------------------------------------------------------- model folders


def upload_dir(local: str | os.PathLike[str], uri: str | os.PathLike[str]) -> str:
    """Copy the local directory ``local`` to ``uri``, replacing what was there.

    A local target is replaced by a rename; a remote one is deleted, then uploaded (its
    stage's manifest, written last, is what says the folder is whole).
    """
    local, uri = os.fspath(local), os.fspath(uri)
    if is_local(uri):
        target = resolve(uri)[1]
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(local, tmp)
        _replace_local(tmp, target)
        return uri
    fs, path = resolve(uri)
    delete(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return uri


def _replace_local(tmp: str, target: str) -> None:
    if os.path.isdir(target):
        shutil.rmtree(target)
    elif os.path.exists(target):
        os.remove(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(tmp, target)


@contextlib.contextmanager
def output_dir(uri: str | os.PathLike[str]) -> Iterator[str]:
    """A local directory to write a model folder into; on success it becomes ``uri``.

    Local targets are written beside the target and renamed into place (a failed save
    leaves the old folder); remote ones are saved to a temporary directory and uploaded.
    """
    if is_local(uri):
        target = resolve(uri)[1]
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
        try:
            yield tmp
            _replace_local(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="icebreaker-out-") as tmp:
        yield tmp
        upload_dir(tmp, uri)


def local_dir(uri: str | os.PathLike[str], cache: str | None = None) -> str:
    """A local directory with the contents of the directory at ``uri``.

    A local path is returned itself (absolute). A remote folder is downloaded once into
    ``<cache dir>/storage/`` (``models.cache_dir``: ICEBREAKER_CACHE, else ``cache``, else
    ~/.cache/icebreaker-ray), keyed by the URI and a fingerprint of its listing (paths,
    sizes, modification times): later calls, from any process on the node, reuse the copy
    until the folder is rewritten; the copy of an older version is then removed.
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        if not os.path.isdir(path):
            raise DataError(f"{uri}: no such directory")
        return path
    files, uri = listing(uri), os.fspath(uri)
    if not files:
        raise DataError(f"{uri}: no such directory (or it is empty)")
    from icebreaker_ray.models import _file_lock, cache_dir

    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    version = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    root = cache_dir(cache) / "storage"
    target = root / f"{key}-{version}"
    if not target.is_dir():
        with _file_lock(root / f".{key}.lock"):
            if not target.is_dir():
                tmp = root / f".{key}-{version}.tmp-{uuid.uuid4().hex[:8]}"
                try:
                    tmp.mkdir(parents=True)  # copy_files makes only the subdirectories
                    pafs.copy_files(path, str(tmp), source_filesystem=fs,
                                    destination_filesystem=pafs.LocalFileSystem())
                    tmp.rename(target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                for old in root.glob(f"{key}-*"):
                    if old != target:
                        shutil.rmtree(old, ignore_errors=True)
    return str(target)


def train_storage(uri: str) -> dict[str, Any]:
    """``RunConfig`` keyword arguments that put Ray Train's checkpoints at ``uri``: the same
    filesystem this module resolves (endpoint and credentials included) for a remote URI."""
    if is_local(uri):
        return {"storage_path": resolve(uri)[1]}
    fs, path = resolve(uri)
    return {"storage_path": path, "storage_filesystem": fs}


# ----------------------------------------------------------------------------- validation


def validate_table(table: pa.Table, name: str, source: str = "<table>", *,
                   require_tz: bool = False) -> pa.Table:
    """Check ``table`` against the contract of ``name`` and return it in the exact schema.

    Safe casts (int64 -> int32, large_string -> string, timestamp units/zones) are applied;
    anything else raises :class:`DataError` naming ``source`` and the column. With
    ``require_tz`` (your own logs), a timestamp column without a time zone is an error
    too instead of being read as UTC: a naive time is ambiguous.
    """
    target = schema(name)
    optional = OPTIONAL.get(name, frozenset())
    columns = []
    for fld in target:
        if fld.name not in table.column_names:
            if fld.name in optional:
                columns.append(pa.nulls(table.num_rows, fld.type))
                continue
            raise DataError(
                f"{source}: missing column '{fld.name}' (table '{name}' expects {fld.type}; "
                f"found columns: {', '.join(table.column_names) or 'none'})"
            )
        col = table.column(fld.name)
        if (require_tz and pa.types.is_timestamp(fld.type) and pa.types.is_timestamp(col.type)
                and col.type.tz is None):
            raise DataError(
                f"{source}: column '{fld.name}' holds timestamps without a time zone ({col.type}); "
                f"table '{name}' needs them timezone-aware, e.g. pandas "
                f"`df['{fld.name}'].dt.tz_localize('America/Denver')` or pyarrow "
                f"`pa.timestamp('ms', tz='UTC')` when they are UTC")
        if col.type != fld.type:
            try:
                col = col.cast(fld.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(
                    f"{source}: column '{fld.name}' has type {col.type}, expected {fld.type} "
                    f"(table '{name}'): {exc}"
                ) from None
        if not fld.nullable and col.null_count:
            raise DataError(
                f"{source}: column '{fld.name}' has {col.null_count} null value(s); "
                f"table '{name}' requires it to be set"
            )
        allowed = ALLOWED_VALUES.get((name, fld.name))
        if allowed is not None:
            bad = set(col.unique().to_pylist()) - allowed
            if bad:
                raise DataError(
                    f"{source}: column '{fld.name}' has value(s) {sorted(map(str, bad))}; "
                    f"allowed: {sorted(allowed)}"
                )
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=target)


# ----------------------------------------------------------------------------- tables


def _parquet_files(fs: pafs.FileSystem, path: str, uri: str) -> list[str]:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: no such file or directory")
    if info.type == pafs.FileType.File:
        return [path]
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and f.path.endswith(".parquet")
        and ".tmp-" not in f.base_name
        and not f.base_name.startswith(("_", "."))
    )
    if not files:
        raise DataError(f"{uri}: directory holds no .parquet files")
    return files


def read_table(uri: str, name: str, *, allow_empty: bool = False,
               require_tz: bool = False) -> pa.Table:
    """Read a Parquet file, or every ``*.parquet`` under a directory, as table ``name``
    (``require_tz``: see :func:`validate_table`)."""
    fs, path = resolve(uri)
    parts = []
    for file in _parquet_files(fs, path, uri):
        if fs.get_file_info(file).size == 0:
            raise DataError(f"{file}: file is empty (0 bytes), expected Parquet table '{name}'")
        try:
            with fs.open_input_file(file) as f:
                table = pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
        parts.append(validate_table(table, name, file, require_tz=require_tz))
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    if table.num_rows == 0 and not allow_empty:
        raise DataError(f"{uri}: table '{name}' has no rows")
    return table


def write_table(table: pa.Table, uri: str, name: str) -> int:
    """Validate and write atomically (temp file + rename). Returns the number of bytes."""
    table = validate_table(table, name, f"writing {uri}")
    fs, path = resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        pq.write_table(table, f, compression="zstd")
    fs.move(tmp, path)
    return fs.get_file_info(path).size


# ----------------------------------------------------------------------------- stages


def stage_dir(root: str, stage: str) -> str:
    return join(root, stage)


def table_uri(root: str, stage: str, table: str) -> str:
    return join(root, stage, f"{table}.parquet")


@dataclass
class StageWriter:
    """Collects one stage's outputs and commits them with a manifest written last."""

    root: str
    stage: str
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # A rerun invalidates the previous completion marker before touching any file.
        delete(join(self.dir, MANIFEST))

    @property
    def dir(self) -> str:
        return stage_dir(self.root, self.stage)

    def path(self, relative: str) -> str:
        return join(self.dir, relative)

    def write_table(self, name: str, table: pa.Table, relative: str | None = None) -> str:
        relative = relative or f"{name}.parquet"
        uri = self.path(relative)
        size = write_table(table, uri, name)
        self.files[relative] = {"rows": table.num_rows, "bytes": size}
        return uri

    def write_bytes(self, relative: str, payload: bytes) -> str:
        """Write a file of the stage (a report, a plot) atomically and record it."""
        uri = self.path(relative)
        write_bytes(uri, payload)
        self.add_file(relative)
        return uri

    def write_json(self, relative: str, obj: Any) -> str:
        uri = self.path(relative)
        write_json(uri, obj)
        self.add_file(relative)
        return uri

    def add_file(self, relative: str) -> None:
        """Record a file the stage wrote by other means (a plot, a model directory)."""
        fs, path = resolve(self.path(relative))
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{self.path(relative)}: stage '{self.stage}' did not write it")
        self.files[relative] = {"bytes": info.size if info.type == pafs.FileType.File else -1}

    def commit(
        self,
        *,
        fingerprint: str = "",
        metrics: dict[str, Any] | None = None,
        node_ids: Iterable[str] = (),
        pinned: bool = False,
    ) -> dict[str, Any]:
        """Write the manifest. ``pinned``: outputs put in place by hand (a test's stand-in,
        your own interests table) that the pipeline takes as they are and never reruns."""
        manifest = {
            "stage": self.stage,
            "fingerprint": fingerprint,
            "pinned": pinned,
            "files": self.files,
            "metrics": metrics or {},
            "node_ids": sorted(set(node_ids)),
            "started": self.started,
            "finished": time.time(),
        }
        write_json(join(self.dir, MANIFEST), manifest)
        return manifest


def begin_attempt(root: str, stage: str, fingerprint: str, *, fresh: bool = False) -> bool:
    """Prepare ``stage``'s directory for a run with config ``fingerprint``; True if cleared.

    What an earlier attempt left (outputs, Ray Train checkpoints) is kept for resuming only
    when that attempt ran the same config. After a config change, or with ``fresh``, the
    directory is cleared first: a training stage would otherwise resume from a checkpoint
    of the old config (or finish at once from a completed run's last checkpoint).
    """
    directory = stage_dir(root, stage)
    previous = None
    for name in (ATTEMPT, MANIFEST):  # the latest attempt first, then the last completed run
        uri = join(directory, name)
        if exists(uri):
            previous = read_json(uri).get("fingerprint")
            break
    cleared = False
    if exists(directory) and (fresh or (previous is not None and previous != fingerprint)):
        delete(directory)
        cleared = True
    write_json(join(directory, ATTEMPT), {"fingerprint": fingerprint, "started": time.time()})
    return cleared


def read_manifest(root: str, stage: str) -> dict[str, Any] | None:
    uri = join(stage_dir(root, stage), MANIFEST)
    return read_json(uri) if exists(uri) else None


def is_complete(root: str, stage: str, fingerprint: str | None = None) -> bool:
    """True when the stage's manifest exists, matches ``fingerprint`` and every file is there."""
    manifest = read_manifest(root, stage)
    if manifest is None:
        return False
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        return False
    fs, base = resolve(stage_dir(root, stage))
    for relative, meta in manifest.get("files", {}).items():
        info = fs.get_file_info(join(base, relative))
        if info.type == pafs.FileType.NotFound:
            return False
        if meta.get("bytes", -1) >= 0 and info.size != meta["bytes"]:
            return False
    return True
