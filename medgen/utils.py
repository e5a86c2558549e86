"""Small run-infrastructure helpers: seeding, devices, provenance and crash-safe file writes.

* :func:`seed_everything` seeds Python, NumPy and torch (all devices) in one call.
* :func:`derive_seed` turns a tuple such as ``(seed, "epoch", 3)`` into a 63-bit seed. The
  training loop derives every random stream from ``(seed, step, ...)`` with it, so a run is a
  pure function of its seed and a resumed run replays exactly what an uninterrupted one does.
  It hashes with SHA-256 rather than Python's ``hash()``, which is salted per process.
* :func:`git_sha` and :func:`package_versions` record provenance in checkpoint manifests.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` write a file so that a reader (or a
  crash at any moment) sees either the old or the new complete content, never a torn file:
  write a temporary file in the same folder, flush, ``fsync``, ``os.replace`` it over the
  target and ``fsync`` the folder. The standard library has no such function, hence the
  few lines here.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``.

    ``deterministic=True`` also asks torch for deterministic kernels (``warn_only``: ops
    without a deterministic implementation warn instead of failing) and disables cuDNN
    autotuning; CPU training in medgen is deterministic without it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from ``parts`` (ints / strings), identical in every process."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=16)
def git_sha(path: str | os.PathLike | None = None) -> str:
    """The commit SHA of the git checkout containing ``path`` (default: medgen's source).

    Returns ``"unknown"`` when ``path`` is not inside a git repository or git is missing.
    Cached per process: the code a process runs is the code it imported at start.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def package_versions(names: tuple[str, ...] = ("torch", "numpy", "safetensors")) -> dict[str, str]:
    """Versions of python, medgen and ``names`` (``"missing"`` for packages not installed)."""
    import platform

    import medgen

    versions = {"python": platform.python_version(), "medgen": medgen.__version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a folder so a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's content to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def set_env(name: str, value: str) -> Iterator[None]:
    """Set the environment variable ``name`` for the block (child processes -- notebook kernels -- inherit
    it), then restore what was there (or remove it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
