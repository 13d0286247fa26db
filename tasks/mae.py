"""``mae``: masked autoencoders, reconstruct the pixels of randomly masked ViT patches."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from timm.optim import param_groups_weight_decay
from torch import nn

from ssl_bench.core.errors import IncompatibleError, OptionError
from ssl_bench.core.figures import image_rows
from ssl_bench.core.precision import attention_kernels
from ssl_bench.core.registry import TASKS
from tasks.base import BackboneFactory, Logs, OptimConfig, PretextTask
from tasks.options import option, refuse_at_image_size
from tasks.blocks import psnr_db

NORM_PIX_EPS = 1e-6  # added to each patch's variance before dividing (MAE's official code)


def sincos_pos_embed(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``(1, 1 + h·w, D)`` float32, D a multiple of 4
    (§A.1): zeros for the class token, then the patches in row-major order. Sines and
    cosines of row and column at D/4 frequencies 1 … 1/10000 (Vaswani et al. 2017) in
    timm's channel order; MAE's code permutes the channels, which a ViT cannot tell apart."""
    patches = build_sincos2d_pos_embed([grid_size, grid_size], dim=dim)
    return torch.cat([torch.zeros(1, dim), patches]).unsqueeze(0)


def random_masking(batch: int, num_patches: int, num_visible: int,
                   device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """Per-sample masking by sorting uniform noise from torch's global RNG (§3 "Simple
    implementation"): the V = ``num_visible`` (1 ≤ V < L) least noisy patches are kept.
    Returns ``ids_shuffle`` (patch indices, visible first), its inverse ``ids_restore``,
    both ``(N, L)`` int64, and ``mask`` ``(N, L)`` float32 in patch order (1 = masked)."""
    noise = torch.rand(batch, num_patches, device=device)  # (N, L)
    ids_shuffle = noise.argsort(dim=1)  # (N, L)
    ids_restore = ids_shuffle.argsort(dim=1)  # (N, L)
    mask = torch.ones(batch, num_patches, device=device)  # (N, L), shuffled order
    mask[:, :num_visible] = 0  # (N, L), visible first
    return ids_shuffle, ids_restore, mask.gather(1, ids_restore)  # mask (N, L) in patch order


def take_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``out[n, i] = tokens[n, ids[n, i]]``: ``(N, L, D)``, ``(N, K)`` int64 → ``(N, K, D)``."""
    return tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's loss (§3): the per-patch MSE of ``(N, L, P)`` predictions and targets,
    averaged over the patches where the ``(N, L)`` mask is 1 (masked patches only)."""
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (N, L)
    return (per_patch * mask).sum() / mask.sum()


@TASKS.register("mae")
class MAE(PretextTask):
    """Masked autoencoder: a ViT encodes a random 25 % of the patches, a light
    Transformer decoder reconstructs the pixels of the other 75 %.

    He, Chen, Xie, Li, Dollár & Girshick, "Masked Autoencoders Are Scalable Vision
    Learners", CVPR 2022: §3 (masking by argsort of noise; the encoder sees the visible
    patches and the class token only; the decoder gets them plus a shared learned mask
    token at each masked position, unshuffled to patch order, with its own fixed sin-cos
    position embedding; target: per-patch normalised pixels; MSE on masked patches only),
    §A.1 / Table 8 (fixed 2-D sin-cos position embeddings, xavier-uniform init, AdamW
    β = (0.9, 0.95), weight decay 0.05, LR 1.5e-4 × batch/256, warm-up + cosine), §A.2
    (linear-probe feature: the class token after the final norm). The backbone's ViT is
    the encoder; its position embedding becomes the frozen sin-cos one, which evaluation
    then uses. Features: the backbone on the whole, unmasked, :meth:`normalize`-d image,
    ``(N, D)``. Raises IncompatibleError: not one class token, or width not a multiple of 4."""

    paper = "He et al., CVPR 2022, §3, §A.1"
    tune_knob = ({}, {"mask_ratio": 0.5})  # mask ratio (§4.1, Fig. 5)
    backbone_family = "vit"

    @dataclass
    class Options:
        """MAE hyperparameters.

        Attributes:
            mask_ratio: fraction of patches masked; 0.75 is the paper's optimum for
                fine-tuning and linear probing (§4.1, Fig. 5).
            decoder_depth: linear probing gains with depth (Table 1a: 1/2/4/8 blocks give
                65.5/70.0/71.9/73.5 %; 8 for ViT-L); 4 keeps most at a fraction of the cost.
            decoder_dim: a multiple of 4 (sin-cos) and of ``decoder_heads``. The paper's
                512 is half of ViT-L's 1024 (Table 1b); 128 (≈ 2/3 of ViT-Tiny's 192)
                keeps the decoder "lightweight", ~15 % of the encoder's parameters.
            decoder_heads: 4 keeps the paper's 32 channels per head.
            norm_pix_loss: target each patch normalised by its own pixel mean and std
                (§3 "Reconstruction target"; Table 1c: better than raw pixels)."""

        mask_ratio: float = option(0.75, low=0, high=1, strict=True)
        decoder_depth: int = option(4, low=1, high=64)
        decoder_dim: int = option(128, low=4, high=4096)
        decoder_heads: int = option(4, low=1, high=64)
        norm_pix_loss: bool = True

        def __post_init__(self) -> None:
            if self.decoder_dim % 4 or self.decoder_dim % max(self.decoder_heads, 1):
                raise OptionError(f"--set decoder_dim={self.decoder_dim} must be a multiple of 4 "
                                  f"(sin-cos) and of decoder_heads={self.decoder_heads}")

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = self.build_backbone(make_backbone)
        vit, grid, width = self.backbone.vit, self.backbone.grid_size, self.backbone.vit.embed_dim
        if vit.num_prefix_tokens != 1 or vit.no_embed_class or vit.pos_embed is None or width % 4:
            raise IncompatibleError(
                "task 'mae' needs a ViT with one class token, no register tokens, a position "
                f"embedding covering the class token and a width divisible by 4; got width {width}")
        self.patch_size, self.num_patches = self.backbone.patch_size, grid ** 2
        self.num_visible = round(self.num_patches * (1 - options.mask_ratio))
        if not 1 <= self.num_visible < self.num_patches:  # the encoder and the loss need both
            refuse_at_image_size("mask_ratio", options.mask_ratio, f"{self.num_visible} visible "
                                 "patches", spec.image_size, 1 / grid**2, 1 - 1 / grid**2)
        vit.pos_embed.data.copy_(sincos_pos_embed(grid, width))
        vit.pos_embed.requires_grad_(False)
        dim = options.decoder_dim
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # as in timm's ViT and MAE's decoder
        self.decoder_embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(grid, dim))
        self.decoder_blocks = nn.Sequential(*[
            Block(dim, options.decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(options.decoder_depth)])
        self.decoder_norm = norm_layer(dim)
        self.decoder_pred = nn.Linear(dim, self.patch_size ** 2 * spec.channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform linear layers and patch projection (as the linear map it is;
        §A.1), N(0, 0.02) class and mask tokens (MAE's code)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = self.backbone.vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        nn.init.normal_(self.backbone.vit.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` → ``(N, L, p²·C)`` in the patch embedding's order."""
        return F.unfold(images, self.patch_size, stride=self.patch_size).transpose(1, 2)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``(N, L, p²·C)`` → ``(N, C, H, W)``."""
        p, side = self.patch_size, self.backbone.img_size
        return F.fold(patches.transpose(1, 2), output_size=(side, side), kernel_size=p, stride=p)

    def forward_encoder(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """§3 "MAE encoder": ``latent`` ``(N, 1 + V, D)`` (class token, then the visible
        tokens in shuffled order, after the final norm) of a fresh random mask of
        :meth:`normalize`-d images, ``mask`` and ``ids_restore`` (:func:`random_masking`)."""
        vit = self.backbone.vit
        x = vit.patch_embed(images)  # (N, L, D)
        x = x + vit.pos_embed[:, 1:]  # (N, L, D)
        ids_shuffle, ids_restore, mask = random_masking(
            x.shape[0], self.num_patches, self.num_visible, x.device)  # (N, L) each
        x = take_tokens(x, ids_shuffle[:, :self.num_visible])  # (N, V, D)
        cls = vit.cls_token + vit.pos_embed[:, :1]  # (1, 1, D)
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # (N, 1 + V, D)
        x = vit.norm_pre(x)  # (N, 1 + V, D)
        x = vit.blocks(x)  # (N, 1 + V, D)
        x = vit.norm(x)  # (N, 1 + V, D)
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """§3 "MAE decoder": every patch ``(N, L, p²·C)``, in the target's space."""
        x = self.decoder_embed(latent)  # (N, 1 + V, D')
        num_masked = self.num_patches - self.num_visible
        masked = self.mask_token.expand(x.shape[0], num_masked, -1)  # (N, L - V, D')
        shuffled = torch.cat([x[:, 1:], masked], dim=1)  # (N, L, D'), visible first
        unshuffled = take_tokens(shuffled, ids_restore)  # (N, L, D'), patch order
        x = torch.cat([x[:, :1], unshuffled], dim=1)  # (N, 1 + L, D')
        x = x + self.decoder_pos_embed  # (N, 1 + L, D')
        x = self.decoder_blocks(x)  # (N, 1 + L, D')
        x = self.decoder_norm(x)  # (N, 1 + L, D')
        x = x[:, 1:]  # (N, L, D'), class token dropped
        return self.decoder_pred(x)  # (N, L, p²·C)

    def target(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """§3 "Reconstruction target" of :meth:`normalize`-d images: patches ``(N, L, p²·C)``
        float32, with ``norm_pix_loss`` each normalised by its own ``mean`` and ``std``
        ``(N, L, 1)`` (returned too; 0 and 1 without)."""
        patches = self.patchify(images.float())  # (N, L, p²·C)
        if not self.options.norm_pix_loss:
            return patches, torch.zeros_like(patches[..., :1]), torch.ones_like(patches[..., :1])
        mean = patches.mean(dim=-1, keepdim=True)  # (N, L, 1)
        std = (patches.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()  # (N, L, 1)
        return (patches - mean) / std, mean, std

    def _reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``pred``/``target`` (N, L, p²·C), ``mask`` (N, L), detached ``pixels`` in [0, 1]."""
        x = self.normalize(images)  # (N, C, H, W)
        with attention_kernels(x.device):
            latent, mask, ids_restore = self.forward_encoder(x)  # (N, 1 + V, D), (N, L), (N, L)
            pred = self.forward_decoder(latent, ids_restore).float()  # (N, L, p²·C)
        target, mean, std = self.target(x)  # (N, L, p²·C), (N, L, 1), (N, L, 1)
        with torch.no_grad():
            standardized = self.unpatchify(pred * std + mean)  # (N, C, H, W)
            pixels = (standardized * self.pixel_std + self.pixel_mean).clamp(0, 1)  # (N, C, H, W)
        return pred, target, mask, self.patchify(pixels)  # pixels (N, L, p²·C)

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """AdamW, β = (0.9, 0.95), weight decay 0.05, LR = 1.5e-4 × batch/256 (Table 8).
        The paper warms up 40 of 800 epochs (5 %). The task does not know the run's length,
        so the warm-up is a fixed 1.5 epochs: 5 % of a 30-epoch run, a larger share of a
        shorter one (``--warmup-epochs`` overrides)."""
        return [OptimConfig(name="adamw", lr=1.5e-4 * batch_size / 256, weight_decay=0.05,
                            betas=(0.9, 0.95), warmup_epochs=1.5)]

    def configure_optimizers(self, optims: list[OptimConfig]) -> list[torch.optim.Optimizer]:
        """One AdamW over the trainable parameters (not the frozen sin-cos embeddings);
        biases and norm gains are not decayed (MAE's code; the paper does not say)."""
        (optim,) = optims
        return [optim.build(param_groups_weight_decay(self, optim.weight_decay))]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """:func:`masked_mse` (float32) of a fresh random mask of images in [0, 1] (§3); logs
        ``psnr_db`` of masked patches' [0, 1] pixels (true patch mean and std)."""
        pred, target, mask, pixels = self._reconstruct(images)
        with torch.no_grad():
            psnr = psnr_db(pixels, self.patchify(images.float()), mask[..., None])  # (N,)
        return masked_mse(pred, target, mask), {"psnr_db": psnr.mean()}  # (), ()

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: the masked input (masked patches grey), the reconstruction with the
        visible patches pasted back (the paper's Figs. 2–3), the original."""
        _, _, mask, pixels = self._reconstruct(images)
        original = self.patchify(images.float())  # (n, L, p²·C)
        masked = mask.bool().unsqueeze(-1)  # (n, L, 1)
        return image_rows([
            ("masked", self.unpatchify(torch.where(masked, 0.5, original))),
            ("reconstruction", self.unpatchify(torch.where(masked, pixels, original))),
            ("original", images)], title=f"MAE, {self.options.mask_ratio:.0%} of patches masked")

    def summary(self) -> dict:
        """The base's parameter counts (sin-cos embeddings are frozen) and the patch grid."""
        return {**super().summary(), "patch_size": self.patch_size,
                "num_patches": self.num_patches, "num_visible": self.num_visible}
