"""Writing without ever leaving a half-written file or folder: stage beside, then rename.

A crash (or SIGKILL) at any moment leaves either the old content or the new, never a mix: the
new content is written under a temporary sibling name and renamed into place, which is atomic
on one filesystem. Every file or folder the project writes for later use goes through these.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomically(path: Path, data: str | bytes) -> Path:
    """Write `data` to `path` (its folder made) through a temporary sibling renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_folder(staged: Path, target: Path) -> None:
    """Put the complete folder `staged` at `target`; an existing `target` is swapped out first
    and deleted only once the new one is in place."""
    if not target.exists():
        os.replace(staged, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_modes(root: Path) -> None:
    """Give a staged folder and everything in it the modes a plain file or folder created
    there would have (the umask's), not a temporary folder's private 0700 or a library's 0600."""
    mask = current_umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            executable = path.is_dir() or path.stat().st_mode & 0o100
            path.chmod((0o777 if executable else 0o666) & ~mask)


@contextlib.contextmanager
def staged_folder(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """A fresh temporary sibling of `target` to fill; when the block succeeds it becomes
    `target` (with `replace=False` an existing `target` is kept: another process finished first,
    and its copy is as good); when it fails it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if target.exists() and not replace:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            give_default_modes(staging)
            replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_into(folder: Path) -> Iterator[Path]:
    """A fresh temporary folder inside `folder` to fill; when the block succeeds every item of
    it is moved into `folder` (replacing items of the same name, one rename each), so a crash
    never leaves a half-written file where a good one was; when it fails it is removed."""
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    give_default_modes(staging)
    for item in staging.iterdir():
        destination = folder / item.name
        if destination.is_dir() and item.is_dir():
            replace_folder(item, destination)
        else:
            os.replace(item, destination)
    staging.rmdir()
