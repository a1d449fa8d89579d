"""gan_hr: progressive and style-based GANs trained on Accelerate, from one CPU to many nodes."""

__version__ = "0.1.0"
