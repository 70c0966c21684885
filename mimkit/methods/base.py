"""The contract every pretraining model follows, so the engine can train any method."""

from __future__ import annotations

import torch
from torch import nn

from mimkit.hub import HubMixin


class PretrainingModel(nn.Module, HubMixin):
    """Base of mimkit's pretraining models.

    ``forward(images, noise=None, generator=None)`` returns a dict with at least ``loss`` (scalar),
    ``pred`` and ``mask``. ``sample_noise`` draws the masking noise for a batch, so the engine can draw
    it for the *global* batch and give each process its slice: 1 process and N processes then mask every
    image identically.

    ``save_pretrained(dir)`` / ``from_pretrained(dir or Hub repo id)`` / ``push_to_hub`` come from
    :class:`~mimkit.hub.HubMixin`.
    """

    patch_size: int
    in_chans: int

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        raise NotImplementedError

    def sample_noise(
        self, batch_size: int, image_size: tuple[int, int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform [0, 1) noise for ``batch_size`` images of ``image_size`` (on the generator's device)."""
        device = generator.device if generator is not None else self.device
        return torch.rand(self.noise_shape(batch_size, image_size), generator=generator, device=device)

    def masking_noise(
        self, images: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``noise`` checked against ``images``, or fresh noise drawn with ``generator`` when it is ``None``."""
        image_hw = (images.shape[-2], images.shape[-1])
        if noise is None:
            return self.sample_noise(images.shape[0], image_hw, generator).to(images.device)
        expected = self.noise_shape(images.shape[0], image_hw)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape {expected} for these images, got {tuple(noise.shape)}")
        return noise

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encoder_module(self) -> nn.Module:
        """The backbone alone (for fine-tuning, feature extraction and export)."""
        raise NotImplementedError
