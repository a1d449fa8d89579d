"""torchvision's decode op without torchvision's import: the same pixels, and no process that
trains, samples or evaluates pays for torchvision's models and ops (or torch._dynamo) at import."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from train_helpers import ROOT, cpu_env


def test_the_loaded_op_decodes_png_and_jpeg_as_torchvision_does():
    from torchvision.io import ImageReadMode, decode_image

    from gan_hr.image_ops import READ_RGB, load_image_ops

    load_image_ops()
    assert READ_RGB == ImageReadMode.RGB.value
    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGBA")):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        ours = torch.ops.image.decode_image(data, READ_RGB, False)
        assert ours.shape == (3, 24, 20)
        assert torch.equal(ours, decode_image(data, ImageReadMode.RGB))


def test_importing_the_pipeline_modules_leaves_torchvision_and_dynamo_unloaded():
    code = ("import sys; import gan_hr.data, gan_hr.sampling, gan_hr.evaluation, gan_hr.inference, "
            "gan_hr.training.launch; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision' or m == 'torch._dynamo'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cpu_env(), capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"
