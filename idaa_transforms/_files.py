"""Files of a run folder: atomic writes, guarded fresh starts, one writer at a time, tolerant reads, and one settings
check for resumes.

Every file a run writes goes through :func:`atomic_write_bytes` (or one of its wrappers): the bytes land in a
temporary file in the same folder, which is then renamed over the target, so a run killed mid-write leaves the
previous version intact, never a truncated one.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import json
import os
import pickle
import re
import socket
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_torch_save",
    "load_torch_state",
    "read_json",
    "read_jsonl",
    "prepare_run_dir",
    "refuse_a_file",
    "refuse_other_kind",
    "remove_previous_run",
    "claim_folder",
    "changed_settings",
    "describe_changes",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write_bytes(folder / "a.bin", b"abc")
        >>> (folder / "a.bin").read_bytes(), sorted(p.name for p in folder.iterdir())
        (b'abc', ['a.bin'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line, atomically (the whole file is rewritten: metrics files are small)."""
    atomic_write_text(path, "".join(json.dumps(dict(row)) + "\n" for row in rows))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (a kill mid-write leaves the previous file intact)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch_state(path: str | Path, map_location: Any = "cpu", *, required: Iterable[str] = (),
                     kind: str = "training state") -> Any:
    """Read a state file written by :func:`atomic_torch_save`, with ``weights_only=True`` (no code runs).

    Args:
        path: the file.
        map_location: as in ``torch.load``.
        required: keys the state must hold (a dict lacking any of them is another program's file).
        kind: what a file with all ``required`` keys is, for the message (``"checkpoint of these trainers"``...).

    Raises:
        ValueError: the file is truncated, not a torch file, holds objects other than tensors and plain data, or
            lacks a ``required`` key; the message names the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign file's pickle protocol: the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in first or "Unsupported global" in first or isinstance(err, pickle.UnpicklingError):
            first = "it holds Python objects other than tensors and plain data, which are never unpickled here"
        elif isinstance(err, KeyError):  # torch's legacy reader on arbitrary bytes: the key is a meaningless number
            first = "it is not a file written by torch.save"
        if len(first) > 160:  # torch's messages run long: cut at a word, visibly
            first = first[:160].rsplit(" ", 1)[0] + " ..."
        raise ValueError(f"{path} is not a readable training state ({first}); "
                         f"delete it and start again without --resume, or point to another folder.") from None
    lacking = [key for key in required if not isinstance(state, dict) or key not in state]
    if lacking:
        raise ValueError(f"{path} is not a {kind} (it lacks {', '.join(lacking)}); delete it and start again "
                         f"without --resume, or point --out to another folder.")
    return state


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a cut-off last line (a run killed mid-write) is skipped with a warning.

    Raises:
        ValueError: a line other than the last one is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: skipped its cut-off last line (a run stopped while writing it).",
                              stacklevel=2)
                break
            raise ValueError(f"{path}: line {number} is not valid JSON; the file is damaged.") from None
    return rows


def read_json(path: str | Path, *, advice: str) -> Any:
    """The JSON value in ``path``.

    Raises:
        ValueError: the file is not valid JSON (cut off, emptied); the message names it and ends with ``advice``.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
        raise ValueError(f"{path} is damaged ({reason}); {advice}.") from None


#: For each kind of run folder, files that only it holds at its top: a tool refuses a folder of another kind (a
#: trainer pointed at a comparison's ``--out``, say) instead of mixing its files into it.
SSL_RUN, VAE_RUN, COMPARISON = "an SSL training run", "a VAE", "a comparison"
FOLDER_KINDS: dict[str, tuple[str, ...]] = {
    SSL_RUN: ("checkpoint.pt", "results.json"),
    VAE_RUN: ("trainer_state.pt", "model.safetensors"),
    COMPARISON: ("calls.jsonl",),
}


def refuse_other_kind(folder: str | Path, kind: str, *, flag: str = "--out") -> None:
    """Refuse ``folder`` when it holds a run of another kind than ``kind`` (a key of :data:`FOLDER_KINDS`).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write_text(folder / "calls.jsonl", "")
        >>> refuse_other_kind(folder, COMPARISON)
        >>> refuse_other_kind(folder, SSL_RUN)
        Traceback (most recent call last):
        ...
        ValueError: --out: ... holds a comparison (calls.jsonl), not an SSL training run; choose another --out.
    """
    folder = Path(folder)
    for other, names in FOLDER_KINDS.items():
        if other == kind:
            continue
        found = [name for name in names if (folder / name).exists()]
        if found:
            raise ValueError(f"{flag}: {folder} holds {other} ({', '.join(found)}), not {kind}; choose another {flag}.")


def prepare_run_dir(out: str | Path, *, kind: str, resume: bool, overwrite: bool, markers: Iterable[str],
                    checkpoint: str | None = None) -> Path:
    """Create the run folder ``out``, refusing to start afresh over a previous run's files.

    Args:
        out: the run folder.
        kind: what the run is, a key of :data:`FOLDER_KINDS`: a folder holding another kind is refused.
        resume: the run continues what is there, so existing files are expected.
        overwrite: the user asked to replace a previous run. Its files stay until :func:`remove_previous_run`,
            which the run calls once it has read its data and built its models, so that a run refused at start-up
            (a mistyped flag, missing data) replaces nothing.
        markers: the file names a run writes; any of them present means a previous run lives in ``out``.
        checkpoint: the marker ``resume`` continues from: a run without it stopped before its first checkpoint,
            and the message says that ``--resume`` starts it again.

    Raises:
        ValueError: ``out`` is a file, holds another kind of run, or holds a previous run and neither ``resume``
            nor ``overwrite`` is set.
    """
    out = Path(out)
    refuse_a_file(out, "--out")
    refuse_other_kind(out, kind)
    found = [name for name in markers if (out / name).exists()]
    if found and not resume and not overwrite:
        if checkpoint is not None and checkpoint not in found:
            raise ValueError(f"--out: {out} holds a run that stopped before its first checkpoint ({', '.join(found)}); "
                             f"pass --resume to start it again, --overwrite to replace it, or choose another --out.")
        raise ValueError(f"--out: {out} already holds a run ({', '.join(found)}); pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out: cannot write to {out} ({err.strerror}); choose a writable folder.") from None
    return out


def refuse_a_file(folder: str | Path, flag: str) -> None:
    """Refuse a run folder ``folder`` (given by ``flag``) that is a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag}: {folder} is a file, not a folder; give a folder for the run's outputs.")


def remove_previous_run(out: str | Path, markers: Iterable[str]) -> None:
    """Delete the files ``markers`` of a previous run in ``out`` (``--overwrite``), just before the new run writes
    its first file."""
    for name in markers:
        (Path(out) / name).unlink(missing_ok=True)


#: The file whose lock marks a folder as claimed (:func:`claim_folder`); it names the process that holds it.
LOCK_FILE = ".lock"
#: The names :func:`atomic_write_bytes` gives its temporary files.
_TMP_NAME = re.compile(r"\..+\.\d+\.tmp")


@contextlib.contextmanager
def claim_folder(folder: str | Path, *, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for this process while the block runs, so that a second run started on
    the same folder stops with a one-line error instead of writing the same checkpoints.

    The claim is an OS lock (``fcntl.flock``) on ``folder/.lock``: it ends with the block, and with the process when
    that is killed, so no stale claim is ever left behind. Without ``fcntl`` (Windows) the folder is not locked.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with claim_folder(root / "run"):
        ...     try:
        ...         with claim_folder(root / "run"):
        ...             pass
        ...     except ValueError as err:
        ...         print(str(err).split(" (")[0])
        --out: ... is in use by another run
        >>> sorted(p.name for p in (root / "run").iterdir())  # the lock file goes with the claim
        []

    Once held, the folder's leftover temporary files of a killed writer (:func:`atomic_write_bytes`) are removed.

    Raises:
        ValueError: another process holds ``folder``, or it is a file or cannot be written.
    """
    folder = Path(folder)
    refuse_a_file(folder, flag)
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _locked(path)
    except OSError as err:
        raise ValueError(f"{flag}: cannot write to {folder} ({err.strerror}); choose a writable folder.") from None
    if fd is _HELD:
        holder = path.read_text(errors="replace").strip() if path.is_file() else ""
        raise ValueError(f"{flag}: {folder} is in use by another run ({holder or 'a process'}); wait for it to end, "
                         f"or choose another {flag}.")
    if fd is _UNLOCKED:
        yield folder
        return
    try:
        for leftover in folder.glob(".*.tmp"):  # a killed writer's (see atomic_write_bytes): nobody else writes here
            if _TMP_NAME.fullmatch(leftover.name):
                leftover.unlink(missing_ok=True)
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, since {since}\n".encode())
        yield folder
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a process that opens it later makes a new one
        os.close(fd)


_HELD, _UNLOCKED = -1, -2  # what :func:`_locked` returns instead of a descriptor


def _locked(path: Path) -> int:
    """A descriptor of ``path`` (created if needed) under this process's exclusive lock; ``_HELD`` when another
    process holds it, ``_UNLOCKED`` where the system or file system cannot lock (with a warning)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return _UNLOCKED
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if isinstance(err, BlockingIOError):
                return _HELD
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                warnings.warn(f"{path.parent}: this file system cannot lock files ({err.strerror}); nothing stops a "
                              f"second run from writing to the same folder.", stacklevel=3)
                return _UNLOCKED
            raise
        try:  # the holder before us may have removed the file we opened: only the one at the path counts
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def removed_if_left_empty(folder: str | Path) -> Iterator[None]:
    """On an error inside the block, remove ``folder`` and the parents of it that the block created, if they are
    still empty: a run that fails to start (bad data, bad settings) leaves no empty ``--out`` behind.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> try:
        ...     with removed_if_left_empty(root / "runs" / "a"):
        ...         (root / "runs" / "a").mkdir(parents=True)
        ...         raise ValueError("no data")
        ... except ValueError:
        ...     pass
        >>> (root / "runs").exists()
        False
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for path in created:
            try:
                path.rmdir()  # only an empty folder goes
            except OSError:
                break
        raise


def changed_settings(saved: Mapping[str, Any], now: Mapping[str, Any], *, ignore: Iterable[str] = (),
                     defaults: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between a saved run and the current one, as ``{name: (saved, now)}``.

    ``ignore`` names settings that may change between runs (progress bars, the output folder...). ``defaults`` fills
    in settings a saved run predates.

    Example:
        >>> changed_settings({"lr": 0.1, "seed": 0}, {"lr": 0.2, "seed": 0, "new": 1}, defaults={"new": 1})
        {'lr': (0.1, 0.2)}
    """
    ignored, defaults = set(ignore), defaults or {}
    missing = object()
    changed = {}
    for name, value in now.items():
        if name in ignored:
            continue
        old = saved.get(name, defaults.get(name, missing))
        if old is missing or _normalise(old) != _normalise(value):
            changed[name] = (None if old is missing else old, value)
    return changed


def describe_changes(changed: Mapping[str, tuple[Any, Any]], *, saved: str) -> str:
    """:func:`changed_settings`'s answer for a one-line error, by the settings' flags; ``saved`` says where the old
    values are.

    Example:
        >>> describe_changes({"lr": (0.1, 0.2), "batch_size": (128, 256)}, saved="in the checkpoint")
        '--lr 0.1 in the checkpoint, 0.2 now; --batch-size 128 in the checkpoint, 256 now'
    """
    return "; ".join(f"--{name.replace('_', '-')} {old!r} {saved}, {new!r} now"
                     for name, (old, new) in changed.items())


def _normalise(value: Any) -> Any:
    """JSON round trip, so that tuples and lists (or Paths and strings) saved and loaded compare equal."""
    return json.loads(json.dumps(value, default=str))
