"""Model registry: config name -> (generator class, discriminator class).

Every generator is called as G(z, resolution, alpha) and every discriminator as
D(images, resolution, alpha) -> scores [N], so one trainer serves all of them.
"""

from __future__ import annotations

from torch import nn

from gan_hr.config import ModelConfig
from gan_hr.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_hr.models.progan import ProGANDiscriminator, ProGANGenerator
from gan_hr.models.stylegan import StyleGANDiscriminator, StyleGANGenerator
from gan_hr.models.vae import VAEEncoder

MODELS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "progan": (ProGANGenerator, ProGANDiscriminator),
    # StyleGAN v1 keeps the ProGAN discriminator (Karras et al. 2019, section 2), blurred as its
    # official code does.
    "stylegan": (StyleGANGenerator, StyleGANDiscriminator),
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    # A VAE: the decoder in the generator's slot, the encoder (-> mu, logvar) in the discriminator's.
    "vae": (DCGANGenerator, VAEEncoder),
}

# ModelConfig fields that only some models read, and which of them each model reads; a model
# ignores the rest (a resumed run neither refuses nor warns a change to one,
# gan_hr/training/resume.py). A new group of keys is added once, to the models that read it.
_STYLEGAN_ONLY = ("w_dim", "mapping_layers", "mapping_lr_mul", "style_mixing_prob", "w_avg_beta", "truncation_psi",
                  "truncation_cutoff", "blur", "noise", "demodulate")
_PROGRESSIVE_ONLY = ("channel_base", "channel_max", "mbstd_group_size")
_DCGAN_ONLY = ("base_width",)
_VAE_ONLY = ("vae_beta",)
_MODEL_SPECIFIC = _STYLEGAN_ONLY + _PROGRESSIVE_ONLY + _DCGAN_ONLY + _VAE_ONLY
_READS: dict[str, tuple[str, ...]] = {
    "progan": _PROGRESSIVE_ONLY,
    "stylegan": _STYLEGAN_ONLY + _PROGRESSIVE_ONLY,
    "dcgan": _DCGAN_ONLY,
    "vae": _DCGAN_ONLY + _VAE_ONLY,  # the decoder is DCGAN's generator
}
UNREAD_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(field for field in _MODEL_SPECIFIC if field not in reads) for name, reads in _READS.items()}


def build_generator(cfg: ModelConfig, max_res: int) -> nn.Module:
    return MODELS[cfg.name][0](cfg, max_res)


def build_discriminator(cfg: ModelConfig, max_res: int) -> nn.Module:
    return MODELS[cfg.name][1](cfg, max_res)
