"""Deterministic writers: JSON, TSV, NIfTI headers and multi-threaded gzip.

Everything written here is byte-identical for identical inputs (no time stamps,
no file names in the gzip headers, output independent of the number of threads).
"""

from __future__ import annotations

import collections
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

#: Most bytes of uncompressed data per deflate chunk.
GZIP_CHUNK = 8 << 20
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # no name, mtime 0


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (deterministic).

    Parameters
    ----------
    path : pathlib.Path
        Output file (parent directories are created).
    obj : object
        JSON-serialisable object; keys keep their insertion order.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def format_value(value: float) -> str:
    """Format one confound value the way fMRIPrep does.

    Parameters
    ----------
    value : float
        Value.

    Returns
    -------
    str
        ``repr`` of the float, or ``n/a`` for NaN.
    """
    value = float(value)
    if np.isnan(value):
        return "n/a"
    return repr(value)


def write_tsv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write a tab-separated table with a header row.

    Parameters
    ----------
    path : pathlib.Path
        Output file (parent directories are created).
    columns : dict of str to numpy.ndarray
        Columns of equal length, in the order to write.
    """
    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], dtype=float) for n in names])
    lines = ["\t".join(names)]
    lines.extend("\t".join(format_value(v) for v in row) for row in data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def set_spatial_header(
    img: nib.Nifti1Image, affine: np.ndarray, space: str, tr: float | None = None
) -> None:
    """Set sform/qform codes, units and (for 4D) the TR.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Image whose header is changed in place.
    affine : numpy.ndarray
        Voxel-to-world affine.
    space : str
        Template space: code 4 (MNI) for ``MNI*`` spaces, 2 (aligned) otherwise.
    tr : float or None, default=None
        Repetition time (s), stored in ``pixdim[4]``.
    """
    code = 4 if space.upper().startswith("MNI") else 2
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    hdr = img.header
    if tr is not None:
        zooms = list(hdr.get_zooms()[:3]) + [float(tr)]
        hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec")


def spatial_image(
    data: np.ndarray, affine: np.ndarray, space: str, dtype: type | None = None
) -> nib.Nifti1Image:
    """A 3D image with the headers of :func:`set_spatial_header`.

    Parameters
    ----------
    data : numpy.ndarray
        Voxel data.
    affine : numpy.ndarray
        Voxel-to-world affine.
    space : str
        Template space.
    dtype : numpy dtype or None, default=None
        When given, ``data`` is cast to it and it is set as the on-disk type.

    Returns
    -------
    nibabel.Nifti1Image
        The image.
    """
    if dtype is None:
        img = nib.Nifti1Image(data, affine)
    else:
        img = nib.Nifti1Image(data.astype(dtype), affine)
        img.set_data_dtype(dtype)
    set_spatial_header(img, affine, space)
    return img


def n_threads() -> int:
    """Number of compression threads.

    Returns
    -------
    int
        The CPUs available to this process, at most 8.
    """
    if hasattr(os, "sched_getaffinity"):
        n_cpu = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        n_cpu = os.cpu_count() or 1
    return max(1, min(8, n_cpu))


def _deflate(chunk: memoryview, level: int) -> bytes:
    """Raw deflate of one chunk, ended by a full flush (``Z_RLE`` strategy)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_RLE)
    return comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)


def gzip_write(path: Path, parts: Iterable[Any], level: int = 1) -> None:
    """Write the concatenation of ``parts`` as a single-member gzip file.

    ``parts`` (bytes-like objects, consumed lazily) are cut into chunks of at
    most ``GZIP_CHUNK`` bytes that are deflated independently in threads
    (zlib releases the GIL) and joined with full flushes, as
    ``pigz --independent`` does; an empty final block ends the stream.  The
    result is an ordinary gzip file whose bytes do not depend on the number
    of threads, and the header has no file name and a zero time stamp.  The
    run-length strategy (``Z_RLE``) compresses these images (noisy floats and
    long runs of zeros) as well as the default strategy, twice as fast.

    Parameters
    ----------
    path : pathlib.Path
        Output file (parent directories are created).
    parts : iterable of bytes-like
        Uncompressed data.
    level : int, default=1
        zlib compression level.
    """
    n_workers = n_threads()
    crc, size = 0, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fobj, ThreadPoolExecutor(n_workers) as pool:
        fobj.write(_GZIP_HEADER)
        pending: collections.deque = collections.deque()
        for part in parts:
            view = memoryview(part).cast("B")
            for i in range(0, len(view), GZIP_CHUNK):
                chunk = view[i : i + GZIP_CHUNK]
                pending.append(pool.submit(_deflate, chunk, level))
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                while len(pending) > 2 * n_workers:
                    fobj.write(pending.popleft().result())
        while pending:
            fobj.write(pending.popleft().result())
        fobj.write(zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS).flush())
        fobj.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def bold_header(
    shape: tuple[int, int, int],
    n_t: int,
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    affine: np.ndarray,
    space: str,
    tr: float,
    dtype: str,
) -> tuple[nib.Nifti1Header, np.float32 | None]:
    """NIfTI-1 header of a 4D BOLD series written by :func:`write_bold`.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the grid.
    n_t : int
        Number of volumes.
    parts, affine, space, tr, dtype
        As for :func:`write_bold`.

    Returns
    -------
    header : nibabel.Nifti1Header
        Header (single file, data at offset 352).
    slope : numpy.float32 or None
        ``scl_slope`` of int16 data, ``None`` for float32.
    """
    img = nib.Nifti1Image(np.zeros((1, 1, 1, 1), dtype=np.float32), affine)
    hdr = img.header
    hdr.set_data_shape((*shape, n_t))
    set_spatial_header(img, affine, space, tr=tr)
    hdr["vox_offset"] = 352
    if dtype == "int16":
        peak = max(float(np.abs(values).max()) for _, values in parts)
        slope = np.float32(peak / 32000.0 if peak > 0 else 1.0)
        hdr.set_data_dtype(np.int16)
        hdr["scl_slope"] = slope
    else:
        slope = None
        hdr.set_data_dtype(np.float32)
        hdr["scl_slope"] = 1.0  # what nibabel writes for unscaled float data
    hdr["scl_inter"] = 0.0
    if hdr.endianness != "<":  # pragma: no cover - big-endian machines
        raise RuntimeError("only little-endian machines are supported")
    return hdr, slope


def _nifti_bytes(
    hdr: nib.Nifti1Header,
    slope: np.float32 | None,
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    n_vox: int,
    n_t: int,
) -> Iterator[Any]:
    """Header, empty extension and the volumes of a single-file NIfTI-1, in order."""
    yield hdr.binaryblock
    yield b"\x00\x00\x00\x00"  # no extensions
    for t in range(n_t):
        vol = np.zeros(n_vox, dtype=np.float32)
        for flat_index, values in parts:
            vol[flat_index] = values[t]
        if slope is None:
            yield vol
        else:
            yield np.rint(vol / slope).astype("<i2")


def write_bold(
    path: Path,
    shape: tuple[int, int, int],
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    affine: np.ndarray,
    space: str,
    tr: float,
    dtype: str,
) -> None:
    """Write a 4D NIfTI-1 ``.nii.gz`` from in-mask style data, volume by volume.

    Parameters
    ----------
    path : pathlib.Path
        Output file.
    shape : tuple of int
        Spatial shape of the grid.
    parts : sequence of (flat_index, values)
        Each ``values`` array (``(T, n)``) is written at the Fortran-order
        flat indices ``flat_index`` (``n``) of every volume; voxels not
        covered are 0.
    affine : numpy.ndarray
        Voxel-to-world affine.
    space : str
        Template space (for the sform/qform codes).
    tr : float
        Repetition time (s), stored in ``pixdim[4]``.
    dtype : {"float32", "int16"}
        On-disk type; int16 uses ``scl_slope``.

    Notes
    -----
    The header is built by nibabel and the uncompressed bytes are those that
    nibabel writes for the same image; only the compression is done here (see
    :func:`gzip_write`), without ever holding the whole 4D array in memory.
    """
    n_t = parts[0][1].shape[0]
    hdr, slope = bold_header(shape, n_t, parts, affine, space, tr, dtype)
    n_vox = int(np.prod(shape))
    gzip_write(Path(path), _nifti_bytes(hdr, slope, parts, n_vox, n_t))
