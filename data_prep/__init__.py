"""data_prep: images (a folder, a .zip or the built-in synthetic set) -> per-resolution shards.

Resizing: each image is center-cropped to a square and resized once to the top resolution with
Pillow's Lanczos filter (sharp, and antialiased when shrinking; JPEGs much larger than that are
first decoded at 1/2 to 1/8 scale by libjpeg, keeping at least twice the target). Every lower
resolution is the 2x2 box mean of the one above, as in ProGAN's dataset tool: halving by
averaging is exact, and it is the same average pooling the networks use to fade a resolution in,
so the real images at each resolution agree with the pooled ones above them.

    python -m data_prep --src SRC --out DIR --max-res R     # see python -m data_prep --help
    data_prep.prepare("synthetic:2048", "data/synthetic", max_res=32)
"""

from data_prep.errors import NoUsableImages, PrepError
from data_prep.pipeline import prepare
from data_prep.synthetic import render_synthetic
from data_prep.verify import VerifyReport, verify

__all__ = ["NoUsableImages", "PrepError", "VerifyReport", "prepare", "render_synthetic", "verify"]
