"""MR-MAE / MR-MCMAE ("Mimic before Reconstruct", paper 003): MAE plus a feature-mimic loss on visible tokens.

The encoder sees the visible 25% of the tokens. A linear mimic head maps its visible output tokens to a frozen
teacher's (CLIP, DINO, ...) features at the same positions, ``L_M`` (Eq. 2); the decoder reconstructs the
masked 75% of the pixels, ``L_R`` (Eq. 1, MAE's loss); ``loss = 0.5 L_M + 0.5 L_R`` (Sec. 4.1). The two
losses act on different tokens and layers, which the paper credits for avoiding their conflict.

Options of :class:`MimicOptions` (Sec. 3.3 "bag of tricks", Tables 3 and 4):

* ``focused_mimicking``: the visible tokens are chosen by the teacher's [CLS] attention of its last block
  (heads averaged; with two teachers the mean of their maps, each summing to 1) through
  :func:`mimkit.masking_focus.focused_scores` (``focus_rule``: ``sample`` or ``top``).
* ``fusion_layers``: multi-layer fusion, the element-wise sum of the chosen (0-based) transformer blocks'
  visible tokens, then the encoder's final norm, feeds both the mimic head and the decoder. Empty = off (the
  encoder's normed last-block output); otherwise the last block must be one of them.
* Masked convolution stages: :class:`MRMCMAE`, ConvMAE's ConvViT encoder with block-wise masking and its
  multi-scale decoder input (ConvMAE Eq. 1); fusion acts on its stage-3 blocks.
* ``variant``: ``mimic_reconstruct`` (the method), ``low_level`` (L_R only, MAE; no teacher is loaded),
  ``high_level`` (L_M only, no decoder), ``both_at_decoder`` (Table 3's "conflict" row: the decoder predicts
  pixels *and* teacher features of the masked tokens, no mimic head on the encoder).
* ``second_teacher``: Table 4's joint CLIP+DINO mimicking, one linear head per teacher; the high-level term is
  the mean of the per-teacher losses, so its weight stays ``mimic_weight``.

Choices where the paper is silent (see docs/design.md, "MR-MAE"): the mimic head reads the same fused,
normed tokens as the decoder (the paper: "the fused ones for both"); L_M averages the squared error over
channels and visible tokens of the batch (like MAE's L_R over pixels); teacher features are standardized per
token (``normalize_teacher_features``); the student's normalization (``input_mean``/``input_std``, the data
section's) is undone before the teacher's own is applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.backbones.build import encoder_from_config
from mimkit.backbones.convvit import TOKEN_SIZE, ConvViTEncoder
from mimkit.backbones.hooks import recorded_outputs
from mimkit.backbones.vit import VisionTransformerEncoder, init_mae_weights
from mimkit.config_schema import ConfigError
from mimkit.heads.mae_decoder import MAEDecoder
from mimkit.heads.multiscale_fusion import MultiScaleFusion
from mimkit.losses import masked_mse
from mimkit.masking import RandomMask, gather_tokens, random_masking
from mimkit.masking_focus import focused_scores
from mimkit.methods.base import PretrainingModel
from mimkit.model_configs.mrmae import MimicOptions, MRMAEConfig, MRMCMAEConfig
from mimkit.patches import grid_size
from mimkit.targets.pixels import pixel_target
from mimkit.targets.teacher_features import teacher_feature_target
from mimkit.teachers import FrozenTeacher, TeacherOutput, build_teacher


class MimicBeforeReconstruct(PretrainingModel):
    """The MR-MAE pipeline over an encoder given by a subclass (:meth:`encode`).

    ``forward`` returns ``loss``, ``pred`` (pixels of every patch; for ``variant='high_level'`` the first mimic
    head's ``(B, K, C)`` predictions), ``mask``, ``latent``, ``ids_restore``, and ``loss_rec`` / ``loss_mimic``
    where the variant has the term (``loss_mimic`` is the high-level term, at the decoder for
    ``both_at_decoder``). The teachers are held outside the module tree: they are not in ``state_dict``
    (checkpoints stay student-only), not trained, not switched to train mode, and follow the input's device.
    """

    num_prefix_tokens: int

    def __init__(self, config: MimicOptions, encoder_dim: int) -> None:
        super().__init__()
        self.config = config
        self._teachers: list[FrozenTeacher] = [build_teacher(t, f"model.{name}") for name, t in config.teacher_fields()]
        if config.focused_mimicking and not any(t.has_cls_attention for t in self._teachers):
            raise ConfigError(
                "config field 'model.focused_mimicking': needs a teacher with a [CLS] attention map "
                "(a timm ViT or a mimkit ViT checkpoint), not a CNN or ConvViT teacher"
            )
        dims = [t.feature_dim for t in self._teachers]
        mimic_at_encoder = config.variant in ("mimic_reconstruct", "high_level")
        self.mimic_heads = nn.ModuleList(nn.Linear(encoder_dim, d) for d in dims) if mimic_at_encoder else None
        if self.mimic_heads is not None:
            self.mimic_heads.apply(init_mae_weights)
        self.decoder_feature_dims = dims if config.variant == "both_at_decoder" else []
        self.register_buffer("input_mean", torch.tensor(config.input_mean), persistent=False)
        self.register_buffer("input_std", torch.tensor(config.input_std), persistent=False)

    @property
    def predicts_pixels(self) -> bool:
        """Whether ``pred`` holds pixels (every variant but ``high_level``)."""
        return self.config.variant != "high_level"

    @property
    def teachers(self) -> list[FrozenTeacher]:
        return list(self._teachers)

    def encode(self, images: torch.Tensor, mask: RandomMask) -> torch.Tensor:
        """``(B, P + K, D)`` normed (and fused) encoder tokens of the visible patches, ``P`` prefix tokens first."""
        raise NotImplementedError

    def noise_shape(self, batch_size: int, image_size: tuple[int, int]) -> tuple[int, ...]:
        gh, gw = grid_size(image_size[0], image_size[1], self.patch_size)
        return (batch_size, gh * gw)

    def encoder_module(self) -> nn.Module:
        return self.encoder

    def teach(self, images: torch.Tensor, grid: tuple[int, int]) -> list[TeacherOutput]:
        """Every teacher's features (and [CLS] attention) on the student's grid; no gradients."""
        outputs = []
        for teacher in self._teachers:
            if teacher.mean.device != images.device:
                teacher.to(images.device)
            outputs.append(teacher(images, self.input_mean, self.input_std, grid))
        return outputs

    @staticmethod
    def saliency(taught: list[TeacherOutput]) -> torch.Tensor:
        """Mean of the teachers' [CLS] attention maps, each scaled to sum to 1 per image."""
        maps = [
            t.cls_attention / t.cls_attention.sum(dim=1, keepdim=True) for t in taught if t.cls_attention is not None
        ]
        return torch.stack(maps).mean(dim=0)

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Teach, mask, encode the visible tokens, mimic on them, decode and reconstruct the masked ones.

        ``noise`` ``(B, L)`` fixes the mask (smallest noise = visible; with focused mimicking the noise drives
        the attention-weighted draw); otherwise it is drawn with ``generator``.
        """
        config = self.config
        grid = grid_size(images.shape[-2], images.shape[-1], self.patch_size)
        noise = self.masking_noise(images, noise, generator)
        taught = self.teach(images, grid)
        if config.focused_mimicking:
            noise = focused_scores(self.saliency(taught), noise, config.focus_rule)
        mask = random_masking(noise, config.mask_ratio)
        latent = self.encode(images, mask)
        targets = [teacher_feature_target(t.features, config.normalize_teacher_features) for t in taught]
        out = {"mask": mask.mask, "latent": latent, "ids_restore": mask.ids_restore}
        loss = latent.new_zeros(())
        if self.decoder is not None:
            decoded = self.decoder(latent, mask.ids_restore, grid)
            pixel_dim = decoded.shape[-1] - sum(self.decoder_feature_dims)
            pred, *feature_preds = decoded.split([pixel_dim, *self.decoder_feature_dims], dim=-1)
            target = pixel_target(images, self.patch_size, config.norm_pix_loss)
            out["loss_rec"], out["per_patch_loss"] = masked_mse(pred, target, mask.mask)
            out["pred"] = pred
            loss = loss + config.rec_weight * out["loss_rec"]
            if feature_preds:
                terms = [masked_mse(p, t, mask.mask)[0] for p, t in zip(feature_preds, targets, strict=True)]
                out["loss_mimic"] = torch.stack(terms).mean()
        if self.mimic_heads is not None:
            visible = latent[:, self.num_prefix_tokens :]
            preds = [head(visible) for head in self.mimic_heads]
            terms = [F.mse_loss(p, gather_tokens(t, mask.ids_keep)) for p, t in zip(preds, targets, strict=True)]
            out["loss_mimic"] = torch.stack(terms).mean()
            out.setdefault("pred", preds[0])
        if "loss_mimic" in out:
            loss = loss + config.mimic_weight * out["loss_mimic"]
        out["loss"] = loss
        return out


class MRMAE(MimicBeforeReconstruct):
    """MR-MAE on MAE's ViT (class token first, ``patch_size`` patches)."""

    num_prefix_tokens = 1

    def __init__(self, config: MRMAEConfig) -> None:
        super().__init__(config, config.embed_dim)
        self.patch_size = config.patch_size
        self.in_chans = config.in_chans
        self.encoder = encoder_from_config(VisionTransformerEncoder, config)
        self.decoder = None
        if self.predicts_pixels:
            extra = sum(self.decoder_feature_dims)
            self.decoder = MAEDecoder.for_pixels(
                config, config.embed_dim, config.patch_size, 1, config.norm_eps, None, extra
            )

    def encode(self, images: torch.Tensor, mask: RandomMask) -> torch.Tensor:
        layers = self.config.fusion_layers
        if not layers:
            return self.encoder(images, ids_keep=mask.ids_keep)
        _, taps = self.encoder(images, ids_keep=mask.ids_keep, return_layers=layers)
        return self.encoder.norm(torch.stack(taps).sum(dim=0))


class MRMCMAE(MimicBeforeReconstruct):
    """MR-MCMAE: the ConvViT encoder (masked convolution stages, block-wise masking on the 1/16 grid) and
    ConvMAE's multi-scale decoder input, no class token."""

    num_prefix_tokens = 0
    patch_size = TOKEN_SIZE

    def __init__(self, config: MRMCMAEConfig) -> None:
        super().__init__(config, config.embed_dims[2])
        self.in_chans = config.in_chans
        self.encoder = encoder_from_config(ConvViTEncoder, config)
        self.fusion = MultiScaleFusion(config.embed_dims) if config.multiscale_decoder else None
        self.decoder = None
        if self.predicts_pixels:
            mlp_ratio, extra = config.resolved_decoder_mlp_ratio, sum(self.decoder_feature_dims)
            self.decoder = MAEDecoder.for_pixels(
                config, config.embed_dims[2], TOKEN_SIZE, 0, config.norm_eps, mlp_ratio, extra
            )

    def encode(self, images: torch.Tensor, mask: RandomMask) -> torch.Tensor:
        layers = self.config.fusion_layers
        with recorded_outputs([self.encoder.blocks3[i] for i in layers]) as taps:
            features = self.encoder(images, ids_keep=mask.ids_keep)
        tokens = torch.stack(taps).sum(dim=0) if layers else features.stage3
        if self.fusion is not None:
            tokens = tokens + sum(self.fusion.terms(features))
        return self.encoder.norm(tokens)
