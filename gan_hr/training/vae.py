"""The trainer for a VAE (model.name=vae): the same loop, run directory, checkpoints, resume,
signals and tracking as the GANs, with a VAE's step and reconstructions beside the samples.

The networks keep the GAN slots, so checkpoints, resume and `gan_hr.inference` need nothing new:
G is the decoder (G_ema its EMA; the VAE configs turn the EMA off, so G_ema is G), D the
encoder. One step encodes the reals, samples z by the reparameterisation trick, decodes and
minimises recon + model.vae_beta * KL (`gan_hr.losses.vae_loss`) with one backward through both
networks; their two Adam optimizers (opt_D for the encoder, opt_G for the decoder) step together,
which is one Adam over both. The decoder's scaler (scaler_G) serves both under fp16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gan_hr.data import to_float
from gan_hr.losses import vae_loss
from gan_hr.sampling import save_grid
from gan_hr.schedule import Phase
from gan_hr.training.guard import apply_gradients
from gan_hr.training.trainer import Trainer


class VAETrainer(Trainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A view of both networks, for the one backward and gradient all-reduce of a step.
        self._both = nn.ModuleList([self.D, self.G])
        self._recon_reals: dict[int, torch.Tensor] = {}

    def _update(self, real: torch.Tensor, res: int, alpha: float, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One step of encoder and decoder on the negative beta-ELBO of the reals (a VAE is never
        conditional: config validation refuses it, so `labels` is always None)."""
        with self.acc.autocast():
            loss, stats = vae_loss(self.cfg.model.vae_beta, lambda x: self.D(x, res, alpha),
                                   lambda z: self.G(z, res, alpha), real)
        ok, healthy, stop_avg = apply_gradients(loss, self._both, (self.opt_D, self.opt_G), self.scaler_G,
                                                flags=self.guard.stop_flag())
        return ok, healthy, stop_avg, stats

    def _write_samples(self, phase: Phase) -> None:
        """Samples from the prior (the GANs' grid, step-XXXXXXXX-res<R>.png), and beside it
        step-XXXXXXXX-res<R>-recon.png: rows of the first train.sample_grid reals (reals-<R>.png)
        alternating with their reconstructions, decoded from the posterior mean."""
        super()._write_samples(phase)
        if not self.acc.is_main_process:
            return
        res = phase.resolution
        if res not in self._recon_reals:
            self._recon_reals[res] = self._first_reals(res)
        real = to_float(self._recon_reals[res].to(self.device))
        # Eval mode: batch norm must neither use nor update this batch's statistics (that would
        # change the run, and resume would no longer be exact).
        self.D.eval()
        try:
            with torch.no_grad():
                mu, _ = self.D(real, res, 1.0)
                recon = self.G_ema(mu, res, 1.0).float()
        finally:
            self.D.train()
        path = self.run_dir.samples / f"step-{self.state.step:08d}-res{res}-recon.png"
        cols = max(1, math.ceil(math.sqrt(real.shape[0])))
        grid = save_grid(_interleave_rows(real.cpu(), recon.cpu(), cols), path, nrow=cols)
        if self.cfg.tracking.backend == "wandb":
            self.acc.get_tracker("wandb").log_images({"samples/recon": [grid]}, step=self.state.step)


def _interleave_rows(top: torch.Tensor, bottom: torch.Tensor, cols: int) -> torch.Tensor:
    """Rows of `cols` images of `top`, each followed by the same row of `bottom` (a short last
    row padded with black), for a grid of `cols` columns."""
    pad = (-top.shape[0]) % cols
    blank = torch.full((pad, *top.shape[1:]), -1.0)
    top, bottom = torch.cat([top, blank]), torch.cat([bottom, blank])
    rows = [t for i in range(0, top.shape[0], cols) for t in (top[i:i + cols], bottom[i:i + cols])]
    return torch.cat(rows)
