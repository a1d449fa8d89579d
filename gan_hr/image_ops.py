"""torchvision's image decoding ops (``torch.ops.image``), loaded without importing torchvision.

``import torchvision.io`` first runs torchvision's package import, whose models and ops import
``torch._dynamo``: 1.7 of the 3.7 s it took to import gan_hr's pipeline modules here, for two
shared libraries that load in milliseconds. Sampling and evaluation save all of it; training
imports ``torch._dynamo`` anyway (torch.optim does) and saves only torchvision's own 0.2 s.
This loads the libraries the way torchvision's own ``extension._load_library`` does, and falls
back to importing torchvision.io where its package is laid out otherwise.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

import torch

# torchvision.io.ImageReadMode.RGB: decode to 3 channels whatever the file holds.
READ_RGB = 3


def _extension_path(package_dir: str, name: str) -> str | None:
    finder = importlib.machinery.FileFinder(
        package_dir, (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
    spec = finder.find_spec(name)
    return spec.origin if spec is not None else None


def load_image_ops() -> None:
    """Make ``torch.ops.image.decode_image`` (PNG/JPEG bytes to uint8 CHW) available."""
    if hasattr(torch.ops.image, "decode_image"):
        return
    spec = importlib.util.find_spec("torchvision")
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    paths = [_extension_path(dirs[0], name) for name in ("_C", "image")] if dirs else [None]
    if all(paths):
        for path in paths:
            torch.ops.load_library(path)
    else:
        import torchvision.io  # noqa: F401  (its import loads the same libraries)
