"""Paths the command-line tools read and write: checked up front, reported in one line.

Two kinds of path reach the sampling and evaluation tools, and they are trusted differently:

* Paths the user typed (``--data``, ``--checkpoint``, ``--out``) are the user's own: a ``pipe:``
  command or a URL as ``--data`` is run or fetched as asked (`gan_hr.data.data_url`).
* Paths read from saved files (the config in a checkpoint's meta.json, which a run's
  config.yaml repeats) came from whoever trained the run, and checkpoints are passed between
  people. A ``pipe:`` root there would be a shell command run by anyone who evaluates the
  checkpoint, and a URL a fetch they did not ask for, so a saved data root is used only when it
  is a local data_prep directory (`saved_data_root`); anything else stops the tool, which asks
  for ``--data``.

Every check raises `PathArgError` whose text is the whole message (``<arg>: <what is wrong>``),
before anything is loaded or written, so a wrong kind of path costs one line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from gan_hr.manifest import MANIFEST
from gan_hr.training.run_dir import RunDir

if TYPE_CHECKING:
    from gan_hr.config import Config



class PathArgError(ValueError):
    """A path that points at the wrong kind of thing; the text is the one line to print."""


def is_local(root: str) -> bool:
    """Whether gan_hr.data reads `root` from the file system (not a pipe: command, not a URL)."""
    return not root.startswith("pipe:") and not urlparse(root).scheme


def data_arg(value: str, arg: str = "--data") -> str:
    """A data root the user gave: a local path must be a data_prep directory; a URL or a pipe:
    command is the user's own and is passed on unchecked."""
    if not is_local(value):
        return value
    path = Path(value)
    if not path.exists():
        raise PathArgError(f"{arg}: no such directory: {value}")
    if not path.is_dir():
        raise PathArgError(f"{arg}: {value} is a file, not a data_prep directory")
    if not (path / MANIFEST).is_file():
        raise PathArgError(f"{arg}: no {MANIFEST} in {value} (run python -m data_prep)")
    return value


def saved_data_root(cfg: Config) -> str:
    """The data a checkpoint's config trained on (data.path, or the built-in set under
    data.synthetic_dir), only if it is a local data_prep directory here: see the module
    docstring for why. Returned absolute, so that nothing downstream can read it as a URL."""
    key, value = ("data.path", cfg.data.path) if cfg.data.path is not None else ("data.synthetic_dir",
                                                                                  cfg.data.synthetic_dir)
    # The root is checked, not the saved value: the root is what gets read.
    root = cfg.data_root()
    if not is_local(root):
        raise PathArgError(f"the checkpoint's {key} {value!r} is not a local directory; pass --data DIR")
    if not (Path(root) / MANIFEST).is_file():
        raise PathArgError(f"the checkpoint's data {root!r} (from {key}) is not a data_prep directory here; "
                           "pass --data DIR")
    return str(Path(root).resolve())


def checkpoint_arg(value: str, arg: str = "--checkpoint") -> Path:
    """The checkpoint directory a checkpoint, checkpoints/ folder or run directory names."""
    # Here, not at the top: plot.py needs the other checks and not torch.
    from gan_hr.checkpoint import CheckpointError, resolve_checkpoint

    path = Path(value)
    if not path.exists():
        raise PathArgError(f"{arg}: no such directory: {value}")
    if not path.is_dir():
        raise PathArgError(f"{arg}: {value} is a file; give a checkpoint directory, a checkpoints/ folder "
                           "or a run directory")
    try:
        return resolve_checkpoint(path)
    except CheckpointError:
        what = "is empty" if not any(path.iterdir()) else "holds no complete checkpoint"
        raise PathArgError(f"{arg}: {value} {what}") from None


def run_dir_arg(value: str, arg: str = "RUN_DIR") -> Path:
    """A run directory to read: one that holds metrics.jsonl."""
    path = Path(value)
    if not path.exists():
        raise PathArgError(f"{arg}: no such directory: {value}")
    if not path.is_dir():
        raise PathArgError(f"{arg}: {value} is a file, not a run directory")
    if not RunDir(path).metrics.is_file():
        raise PathArgError(f"{arg}: no metrics.jsonl in {value}")
    return path


def out_dir_arg(value: str, arg: str = "--out") -> Path:
    """A directory to write into (created later): itself, if it exists, and its nearest
    existing ancestor must be directories."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise PathArgError(f"{arg}: {value} is a file, not a directory")
    _check_parent(path, value, arg)
    return path


def image_file_arg(value: str, arg: str = "--out") -> Path:
    """An image file to write: a name Pillow can save by its extension, in a directory."""
    path = Path(value)
    if value.endswith("/") or path.is_dir():
        raise PathArgError(f"{arg}: {value} is a directory; give an image file name such as {path / 'out.png'}")
    if path.suffix.lower() not in _image_extensions():
        raise PathArgError(f"{arg}: {value} has no image file extension (such as .png or .jpg)")
    _check_parent(path, value, arg)
    return path


def _check_parent(path: Path, value: str, arg: str) -> None:
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise PathArgError(f"{arg}: {value} is inside {existing}, which is a file, not a directory")


def _image_extensions() -> set[str]:
    from PIL import Image  # the registry of every format Pillow can write

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
