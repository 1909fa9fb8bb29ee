"""An output folder written atomically and replaced safely: what ``muses encode`` writes into.

Nothing is overwritten unless MuSES wrote it (a ``meta.json`` marker and only MuSES's files), the new folder is
complete and fsynced before the old one goes, and a kill between any two steps loses neither.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from types import TracebackType

from muses.errors import InputError

OUTPUT_MARKER = "muses encode"
"""``meta.json``'s ``written_by``: marks a folder that ``--overwrite`` may replace."""
OUTPUT_FILES = frozenset(
    {"document.npy", "sentence.npy", "token.npy", "embeddings.safetensors", "index.jsonl", "meta.json"}
)
"""Every file an output folder may hold; a folder holding anything else is never overwritten."""
_OLD = ".muses-old"
_NEW = ".muses-new-"


class OutputFolder:
    """An output folder written atomically, checked before any slow work.

    Entering checks the destination (its parent is a writable folder; an existing ``out`` is refused unless
    ``overwrite`` and it is a folder MuSES wrote, see :func:`not_muses_output`) and creates the staging folder
    ``.NAME.muses-new-PID-XXXX`` beside it (mode from the umask). Write into :attr:`staging`, then :meth:`commit`:
    every file is fsynced, the old folder is renamed aside to ``.NAME.muses-old``, the staging folder renamed in,
    and the old one deleted. A kill between two steps loses nothing: the next run with the same ``out`` puts a
    stranded old folder back (or deletes it once the new one is in place) and removes dead runs' staging folders.
    Leaving the ``with`` block without a commit deletes the staging folder and any parent folders it created.

    Example::

        with OutputFolder("out/", overwrite=True) as output:
            (output.staging / "meta.json").write_text("{}")
            output.commit()
    """

    def __init__(self, out: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.out = Path(os.path.abspath(out))
        self.overwrite = overwrite
        self._created: list[Path] = []
        self._staging: Path | None = None
        self._committed = False

    @property
    def staging(self) -> Path:
        """The folder to write into (exists inside the ``with`` block)."""
        if self._staging is None:
            raise RuntimeError("OutputFolder.staging is only available inside its with block.")
        return self._staging

    @property
    def old(self) -> Path:
        """Where the previous output waits while the new one is swapped in."""
        return self.out.parent / f".{self.out.name}{_OLD}"

    def __enter__(self) -> OutputFolder:
        if not self.out.name:
            raise InputError(f"output {self.out} has no folder name; choose an output folder such as ./out.")
        _check_parent(self.out)
        recover_output(self.out)
        self._check_destination()
        self._created = _make_parents(self.out.parent)
        try:
            self._staging = _make_staging(self.out)
        except BaseException:
            self._remove_created()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self._committed:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            self._remove_created()

    def _check_destination(self) -> None:
        out = self.out
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise InputError(
                f"output {out} is a file, not a folder; --overwrite replaces only a folder written by muses encode, "
                "so choose a folder path, or remove the file yourself."
            )
        if not out.exists():
            return
        if not self.overwrite:
            raise InputError(f"output {out} already exists; choose another path or pass --overwrite.")
        reason = not_muses_output(out)
        if reason:
            raise InputError(
                f"output {out} was not written by muses encode ({reason}), so --overwrite will not replace it; "
                "choose a new output path, or move that folder away yourself."
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"output {out} is read-only; make it writable (chmod u+w) or choose another path.")

    def commit(self) -> Path:
        """Make the staging folder the output: fsync it, swap it in, delete the old output. Returns ``out``."""
        staging, out, old = self.staging, self.out, self.old
        _fsync_tree(staging)
        if out.exists():
            reason = not_muses_output(out)
            if reason:  # changed while we were encoding
                raise InputError(f"output {out} changed during the run ({reason}); it was left as it is.")
            os.rename(out, old)
            _fsync_dir(out.parent)
        os.rename(staging, out)
        _fsync_dir(out.parent)
        self._committed = True
        shutil.rmtree(old, ignore_errors=True)
        return out

    def _remove_created(self) -> None:
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError:
                break


def not_muses_output(folder: Path) -> str:
    """Why ``folder`` is not an output of :func:`write_embeddings` ('' when it is one).

    It is one when its ``meta.json`` carries the :data:`OUTPUT_MARKER` (or, for outputs of older versions, MuSES's
    keys) and it holds only :data:`OUTPUT_FILES`.
    """
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return "it has no meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return "its meta.json is not MuSES's"
    legacy = isinstance(meta, dict) and {"scales", "format", "counts", "dim"} <= meta.keys()
    if not isinstance(meta, dict) or (meta.get("written_by") != OUTPUT_MARKER and not legacy):
        return "its meta.json has no MuSES marker"
    for entry in sorted(folder.iterdir()):
        if entry.name not in OUTPUT_FILES or entry.is_symlink() or not entry.is_file():
            return f"it holds {entry.name!r}, which muses encode does not write"
    return ""


def recover_output(out: str | os.PathLike[str]) -> None:
    """Finish or undo a swap that a kill interrupted, and delete dead runs' staging folders.

    A stranded ``.NAME.muses-old`` is put back when ``out`` is missing, and deleted when ``out`` is a complete output.
    """
    out = Path(os.path.abspath(out))
    old = out.parent / f".{out.name}{_OLD}"
    if old.is_dir() and not old.is_symlink():
        if not os.path.lexists(out):
            os.rename(old, out)
            _fsync_dir(out.parent)
        elif out.is_dir() and not not_muses_output(out):
            shutil.rmtree(old, ignore_errors=True)
    if out.parent.is_dir():
        for entry in out.parent.glob(f".{out.name}{_NEW}*"):
            if entry.is_dir() and not entry.is_symlink() and not _alive(entry.name):
                shutil.rmtree(entry, ignore_errors=True)


def _alive(staging_name: str) -> bool:
    """Whether the process that named a staging folder ``.NAME.muses-new-PID-XXXX`` still runs."""
    pid_text = staging_name.rsplit(_NEW, 1)[-1].split("-", 1)[0]
    if not pid_text.isdigit():
        return True  # not ours to judge: leave it
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _check_parent(out: Path) -> None:
    """The nearest existing ancestor of ``out`` must be a folder."""
    ancestor = out.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(
            f"output {out} cannot be created: {ancestor} is a file, not a folder; choose an output path inside a "
            "folder."
        )


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents (modes from the umask); return those created, outermost first."""
    missing: list[Path] = []
    d = folder
    while not d.exists():
        missing.append(d)
        d = d.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            for c in reversed(created):
                c.rmdir()
            raise InputError(f"cannot create the folder {d} ({e.strerror}); choose a writable output path.") from None
        created.append(d)
    return created


def _make_staging(out: Path) -> Path:
    """Create the staging folder beside ``out`` with the umask's mode (``mkdtemp`` would give 0700)."""
    staging = out.parent / f".{out.name}{_NEW}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir(mode=0o777)
    except OSError as e:
        raise InputError(
            f"cannot write in {out.parent} ({e.strerror}); choose a writable output folder or fix its permissions."
        ) from None
    return staging


def _fsync_tree(folder: Path) -> None:
    """fsync every file in ``folder`` (flat), then the folder itself."""
    for entry in folder.iterdir():
        if entry.is_file():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """fsync a folder, so that renames inside it are durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
