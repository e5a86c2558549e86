"""A one-line status channel from a notebook's kernel to the terminal that runs it.

``medgen reproduce`` runs each notebook through papermill: the kernel's progress bars land in the
executed notebook, and the terminal shows only papermill's cell counter -- a nine-minute training
cell looks stuck. This module carries one line of state out of the kernel:

* the kernel side, :func:`report`: ``training mri_to_ct/ddim_image-t2w at `cpu`: step 1200 / 3000
  (40 %), 2 min 10 s left``. Called by :func:`medgen.zoo.resolve` (which model is trained or
  loaded), the training loop (steps, ETA) and :func:`medgen.predict.predict` (sampling batches). It
  does nothing unless :data:`ENV` names a file, and writes at most every :data:`MIN_INTERVAL`
  seconds (a new phase -- another model, training -> sampling -- is written at once), replacing
  the file atomically so a reader never sees half a line.
* the terminal side, :func:`watch`: a context manager that sets :data:`ENV` (kernels inherit the
  environment), polls the file in a thread and prints each new line, indented, at most every
  :data:`PRINT_INTERVAL` seconds for the same phase (a new phase at once).

No tqdm bar is replaced: the notebook keeps its own output; this is only the terminal's view.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Iterator

from tqdm import tqdm

__all__ = ["ENV", "report", "watch", "format_eta", "MIN_INTERVAL", "PRINT_INTERVAL"]

ENV = "MEDGEN_PROGRESS_FILE"  # path of the status file; unset: report() does nothing
MIN_INTERVAL = 1.0            # seconds between two writes of the same phase (kernel side)
PRINT_INTERVAL = 15.0         # seconds between two printed lines of the same phase (terminal side)

_last: dict[str, object] = {"phase": None, "time": 0.0}


def format_eta(seconds: float) -> str:
    """``"45 s"``, ``"2 min 10 s"``, ``"1 h 05 min"``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def report(text: str, *, phase: str | None = None, force: bool = False) -> None:
    """Publish ``text`` (one line) when :data:`ENV` is set. ``phase`` (default: the text) groups lines
    of one activity: a new phase is written at once, the same phase at most every :data:`MIN_INTERVAL`
    seconds unless ``force``. Never raises (the status line must not break a run)."""
    path = os.environ.get(ENV)
    if not path:
        return
    phase = text if phase is None else phase
    now = time.monotonic()
    if not force and phase == _last["phase"] and now - float(_last["time"]) < MIN_INTERVAL:  # type: ignore[arg-type]
        return
    _last.update(phase=phase, time=now)
    line = " ".join(text.split())
    try:
        folder = Path(path).parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".progress.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{phase}\t{line}\n")
        os.replace(tmp, path)
    except OSError:
        pass


def _read(path: Path) -> tuple[str, str] | None:
    try:
        phase, _, line = path.read_text().rstrip("\n").partition("\t")
    except OSError:
        return None
    return (phase, line) if line else None


@contextlib.contextmanager
def watch(stream: IO[str] | None = None, *, interval: float = 0.5, prefix: str = "    ",
          print_interval: float = PRINT_INTERVAL) -> Iterator[Path]:
    """Set :data:`ENV` to a fresh file for the block and print what the kernels :func:`report`
    (``prefix`` + line, to ``stream``, default stderr): a new phase at once, the same phase at
    most every ``print_interval`` seconds; the last line is printed when the block ends if it was
    not yet. Yields the file's path."""
    out = stream if stream is not None else sys.stderr
    folder = Path(tempfile.mkdtemp(prefix="medgen-progress-"))
    path = folder / "status"
    old = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    stop = threading.Event()
    state: dict[str, object] = {"shown": None, "phase": None, "time": 0.0}

    def show(final: bool = False) -> None:
        got = _read(path)
        if got is None or got[1] == state["shown"]:
            return
        now = time.monotonic()
        if not final and got[0] == state["phase"] and now - float(state["time"]) < print_interval:  # type: ignore
            return
        tqdm.write(f"{prefix}{got[1]}", file=out)  # above papermill's cell bar, not glued to it
        state.update(shown=got[1], phase=got[0], time=now)

    def loop() -> None:
        while not stop.wait(interval):
            show()

    thread = threading.Thread(target=loop, name="medgen-progress", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        show(final=True)
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        folder.rmdir()
