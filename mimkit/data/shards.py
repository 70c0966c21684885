"""The sharded, streamable data format: ``mimkit shards`` writes it from an image folder, ``data.source: shards``
reads it (:mod:`mimkit.data.shard_stream`).

The format is mosaicml-streaming's MDS (an optional extra, ``pip install 'mimkit[shards]'``): shards of up to
``--shard-size`` bytes and an ``index.json``, in a local folder or object storage. Each sample holds the image file's
bytes as they are (decoded at training time by :mod:`mimkit.data.decode`, exactly as ``data.source: folder`` would),
its class label (-1 for a flat folder) and its path inside the source folder. Why streaming: ``docs/design.md``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import track

from mimkit.config_paths import is_url
from mimkit.data.sources import ImageFolder
from mimkit.errors import DataError, MimkitError

if TYPE_CHECKING:
    from mimkit.data.shard_stream import ShardImages

SHARD_COLUMNS = {"image": "bytes", "label": "int", "name": "str"}
DEFAULT_SHARD_SIZE = "64mb"


def require_streaming() -> None:
    """Fail with one clear line when the optional mosaicml-streaming package is not installed."""
    try:
        import streaming  # noqa: F401
    except ImportError as err:
        raise MimkitError(
            "the shards format needs mosaicml-streaming; install it with pip install 'mimkit[shards]'"
        ) from err


def _shard_bytes(shard_size: str) -> int:
    from streaming.base.util import bytes_to_int

    try:
        size = bytes_to_int(shard_size)
    except ValueError as err:
        raise MimkitError(f"--shard-size {shard_size!r} is not a size; give bytes or e.g. 64mb, 1gb") from err
    if size < 1:
        raise MimkitError(f"--shard-size {shard_size!r} must be positive; give e.g. 64mb")
    return size


def _check_empty_output(out: str) -> None:
    if is_url(out):
        return  # streaming's uploader checks the remote side
    folder = Path(out)
    if folder.is_file():
        raise DataError(f"{out} is a file; name a new folder for the shards")
    if folder.is_dir() and any(folder.iterdir()):
        raise DataError(f"{out} exists and is not empty; name a new folder for the shards or remove this one")


def write_shards(
    source_folder: str | Path, out: str, shard_size: str | None = None, progress: bool = True
) -> int:
    """Write every image under ``source_folder`` (as ``data.source: folder`` reads it) into shards at ``out`` (a new
    or empty local folder, or a remote URL streaming can upload to); returns the number of samples written.

    Samples keep the folder's order (sorted paths). If writing fails, a local ``out`` is removed again, so a partial
    folder never passes for a finished one (streaming writes its index even when interrupted)."""
    require_streaming()
    from streaming import MDSWriter

    size_limit = _shard_bytes(shard_size or DEFAULT_SHARD_SIZE)
    _check_empty_output(out)
    images = ImageFolder(source_folder)
    created = not is_url(out) and not Path(out).exists()
    try:
        with MDSWriter(out=out, columns=SHARD_COLUMNS, size_limit=size_limit) as writer:
            for index in track(range(len(images)), description="writing shards", disable=not progress):
                path = images.paths[index]
                label = images.labels[index] if images.labels is not None else -1
                name = path.relative_to(images.root).as_posix()
                writer.write({"image": _file_bytes(path), "label": label, "name": name})
    except BaseException as err:
        if not is_url(out):
            _remove_written(Path(out), created)
        elif _storage_failure(err):
            raise _storage_error("write the shards to", out, err) from err
        raise
    return len(images)


def _storage_failure(err: BaseException) -> bool:
    """Whether ``err``, raised while reading or writing a URL, comes from the storage (client package, credentials,
    bucket) rather than from mimkit or the user (an interrupt)."""
    return isinstance(err, Exception) and not isinstance(err, MimkitError)


def _storage_error(action: str, url: str, err: BaseException) -> MimkitError:
    return MimkitError(
        f"could not {action} {url} ({type(err).__name__}: {err}); check the URL, that the storage's client package "
        "is installed (boto3 for s3://) and its credentials in the environment"
    )


def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or err
        raise DataError(f"cannot read {path} ({reason}); make it readable or move it out of the folder") from err


def _remove_written(folder: Path, created: bool) -> None:
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for item in folder.iterdir():  # the folder was empty before: everything in it is ours
        shutil.rmtree(item) if item.is_dir() else item.unlink()


def open_shards(
    path: str, cache: str | None, seed: int, samples_per_epoch: int | None, canonical_nodes: int
) -> ShardImages:
    """The images of the shards at ``path`` (:class:`~mimkit.data.shard_stream.ShardImages`; its ``stream`` reads
    them in training order). ``cache``: where a remote ``path`` is downloaded to."""
    require_streaming()
    from mimkit.data.shard_stream import ShardStream

    try:
        return ShardStream(path, cache, seed, samples_per_epoch, canonical_nodes).images
    except Exception as err:
        if is_url(path) and _storage_failure(err):
            raise _storage_error("read the shards at", path, err) from err
        raise
