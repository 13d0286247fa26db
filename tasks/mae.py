"""``mae``: masked autoencoders, reconstruct the pixels of randomly masked ViT patches."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from timm.optim import param_groups_weight_decay
from torch import nn

from ssl_bench.errors import IncompatibleError, OptionError
from ssl_bench.plots import image_rows
from ssl_bench.registry import TASKS
from tasks.base import (BackboneFactory, Logs, OptimConfig, PretextTask, check_range,
                        count_parameters, require_family)

NORM_PIX_EPS = 1e-6  # added to each patch's variance before dividing (MAE's official code)


def sincos_pos_embed(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding with a zero row for the class token.

    Half of the channels encode the patch row, half the column, each as sines
    and cosines of the index at ``dim / 4`` geometric frequencies 1 … 1/10000
    (He et al. 2022, §A.1, after Vaswani et al. 2017 and Chen et al. 2021).
    timm lays channels out as ``[sin(row), sin(col), cos(row), cos(col)]``;
    MAE's code uses another order of the same channels, which a ViT cannot tell
    apart (its first use is a sum with learned linear patch embeddings).

    Args:
        grid_size: the patch grid side h = w.
        dim: embedding width D; a multiple of 4.

    Returns:
        ``(1, 1 + h·w, D)`` float32; row 0 (class token) is zeros, then the
        patches in row-major order, as the patch embedding flattens them.
    """
    patches = build_sincos2d_pos_embed([grid_size, grid_size], dim=dim)
    return torch.cat([torch.zeros(1, dim), patches]).unsqueeze(0)


def random_masking(batch: int, num_patches: int, num_visible: int,
                   device: torch.device | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample uniform random masking by sorting noise (He et al. 2022, §3
    "Simple implementation").

    Each sample gets i.i.d. uniform noise per patch (torch's global RNG); the
    ``num_visible`` patches with the smallest noise are kept.

    Args:
        batch: N.
        num_patches: L.
        num_visible: patches kept per sample, ``1 <= num_visible < L``.
        device: where the tensors live.

    Returns:
        ``ids_shuffle`` ``(N, L)`` int64: patch indices, visible ones first;
        ``ids_restore`` ``(N, L)`` int64: its inverse permutation (argsort),
        which puts shuffled tokens back in patch order;
        ``mask`` ``(N, L)`` float32: 1 for masked patches, 0 for visible ones,
        in patch order.
    """
    noise = torch.rand(batch, num_patches, device=device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :num_visible] = 0
    return ids_shuffle, ids_restore, take_tokens(mask, ids_restore)


def take_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-sample token selection: ``out[n, i] = tokens[n, ids[n, i]]``.

    Args:
        tokens: ``(N, L, D)`` or ``(N, L)``.
        ids: ``(N, K)`` int64 indices into L.

    Returns:
        ``(N, K, D)`` or ``(N, K)``, same dtype as ``tokens``.
    """
    if tokens.dim() == 2:
        return tokens.gather(1, ids)
    return tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's loss: the per-patch mean squared error averaged over masked patches
    only (He et al. 2022, §3 "Reconstruction target").

    Args:
        pred, target: ``(N, L, P)`` float, P = p²·C values per patch.
        mask: ``(N, L)`` float, 1 for masked patches.

    Returns:
        A scalar float tensor; visible patches do not contribute.
    """
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


@TASKS.register("mae")
class MAE(PretextTask):
    """Masked autoencoder: a ViT encodes a random 25 % of the patches, a light
    Transformer decoder reconstructs the pixels of the other 75 %.

    Follows He, Chen, Xie, Li, Dollár & Girshick, "Masked Autoencoders Are
    Scalable Vision Learners", CVPR 2022: §3 (random masking by argsort of
    noise; the encoder sees visible patches and the class token only; the
    decoder gets the encoded tokens plus a shared learned mask token at each
    masked position, unshuffled to patch order, with its own fixed sin-cos
    position embeddings; target: per-patch normalised pixels; MSE on masked
    patches only), §A.1 / Table 8 (fixed 2-D sin-cos position embeddings,
    xavier-uniform init of the Transformer blocks, AdamW β = (0.9, 0.95),
    weight decay 0.05, base LR 1.5e-4 × batch/256, warm-up + cosine), and
    §A.2 (linear-probe feature: the class token after the encoder's final norm).

    The backbone's own ViT (``backbone.vit``: ``patch_embed``, ``cls_token``,
    ``pos_embed``, ``blocks``, ``norm``) is the encoder; its learned position
    embedding is replaced by the frozen sin-cos one, which evaluation then uses.
    Features: :meth:`features` is the backbone on the whole, unmasked,
    :meth:`normalize`-d image, ``(N, D)``.
    """

    name = "mae"
    paper = "He et al., CVPR 2022, §3, §A.1"

    @dataclass
    class Options:
        """MAE hyperparameters.

        Attributes:
            mask_ratio: fraction of patches masked, in (0, 1); 0.75 is the
                paper's optimum for both fine-tuning and linear probing (§4.1, Fig. 5).
            decoder_depth: decoder Transformer blocks. The paper uses 8 blocks for
                ViT-L and shows linear probing gains with depth (Table 1a: 1/2/4/8
                blocks give 65.5/70.0/71.9/73.5 %); 4 keeps most of that at a
                fraction of the CPU cost for ViT-Tiny.
            decoder_dim: decoder width. The paper's 512 is half of ViT-L's 1024
                (Table 1b: linear probing peaks there and drops for narrower
                decoders); a decoder wider than ViT-Tiny's 192 would no longer be
                "lightweight", so 128 (≈ 2/3 of the encoder width) keeps the
                decoder at ~15 % of the encoder's parameters. A multiple of 4
                (sin-cos) and of ``decoder_heads``.
            decoder_heads: attention heads; 4 keeps the paper's 32 channels per head
                (512 / 16).
            norm_pix_loss: reconstruct each patch normalised by its own pixel mean
                and std (§3 "Reconstruction target"; Table 1c: better
                representations than raw pixels).
        """

        mask_ratio: float = 0.75
        decoder_depth: int = 4
        decoder_dim: int = 128
        decoder_heads: int = 4
        norm_pix_loss: bool = True

        def __post_init__(self) -> None:
            if not 0 < self.mask_ratio < 1:
                raise OptionError(f"--set mask_ratio={self.mask_ratio} must be strictly "
                                  "between 0 and 1 (some patches visible, some masked)")
            check_range("decoder_depth", self.decoder_depth, 1, 64)
            check_range("decoder_heads", self.decoder_heads, 1, 64)
            check_range("decoder_dim", self.decoder_dim, 4, 4096)
            if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads:
                raise OptionError(f"--set decoder_dim={self.decoder_dim} must be a multiple of 4 "
                                  f"(sin-cos position embedding) and of decoder_heads="
                                  f"{self.decoder_heads}")

    def __init__(self, make_backbone: BackboneFactory, spec, options: Options) -> None:
        super().__init__(make_backbone, spec, options)
        self.backbone = make_backbone()
        require_family(self.name, self.backbone, "vit", hint="use --backbone vit_tiny")
        vit = self.backbone.vit
        if vit.num_prefix_tokens != 1 or vit.no_embed_class or vit.pos_embed is None:
            raise IncompatibleError("task 'mae' needs a ViT with one class token, no register "
                                    "tokens and a position embedding that covers the class token")
        width = vit.embed_dim
        if width % 4:
            raise IncompatibleError(f"task 'mae' needs a ViT width divisible by 4 for its sin-cos "
                                    f"position embedding, got {width}")
        self.patch_size = self.backbone.patch_size
        self.num_patches = self.backbone.grid_size ** 2
        # At least one visible and one masked patch, whatever the grid.
        self.num_visible = min(max(round(self.num_patches * (1 - options.mask_ratio)), 1),
                               self.num_patches - 1)
        patch_values = self.patch_size ** 2 * spec.channels

        vit.pos_embed.data.copy_(sincos_pos_embed(self.backbone.grid_size, width))
        vit.pos_embed.requires_grad_(False)

        dim = options.decoder_dim
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # as in timm's ViT and MAE's decoder
        self.decoder_embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(self.backbone.grid_size, dim))
        self.decoder_blocks = nn.Sequential(*[
            Block(dim, options.decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(options.decoder_depth)])
        self.decoder_norm = norm_layer(dim)
        self.decoder_pred = nn.Linear(dim, patch_values)
        self._init_weights()

    def _init_weights(self) -> None:
        """xavier-uniform linear layers (§A.1), the patch projection initialised as
        the linear map it is, N(0, 0.02) class and mask tokens (MAE's code)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = self.backbone.vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        nn.init.normal_(self.backbone.vit.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # ---------------------------------------------------------------- model

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` → ``(N, L, p²·C)`` non-overlapping patches in the patch
        embedding's row-major order (values ordered channel, row, column)."""
        p = self.patch_size
        return F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``(N, L, p²·C)`` → ``(N, C, H, W)``."""
        p, side = self.patch_size, self.backbone.img_size
        return F.fold(patches.transpose(1, 2), output_size=(side, side), kernel_size=p, stride=p)

    def forward_encoder(self, images: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches of a random mask (§3 "MAE encoder").

        Args:
            images: ``(N, C, H, W)`` standardized images (:meth:`normalize`).

        Returns:
            ``latent`` ``(N, 1 + V, D)``: class token then the V visible patch
            tokens in shuffled order, after the final norm; ``mask`` ``(N, L)``
            (1 = masked); ``ids_restore`` ``(N, L)``.
        """
        vit = self.backbone.vit
        tokens = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        ids_shuffle, ids_restore, mask = random_masking(
            tokens.shape[0], self.num_patches, self.num_visible, tokens.device)
        visible = take_tokens(tokens, ids_shuffle[:, :self.num_visible])
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        latent = vit.norm(vit.blocks(vit.norm_pre(torch.cat([cls, visible], dim=1))))
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the encoded visible ones (§3 "MAE decoder").

        Args:
            latent: ``(N, 1 + V, D)`` from :meth:`forward_encoder`.
            ids_restore: ``(N, L)``.

        Returns:
            ``(N, L, p²·C)`` predictions in patch order (in the target's space).
        """
        x = self.decoder_embed(latent)
        n, num_masked = x.shape[0], self.num_patches - self.num_visible
        shuffled = torch.cat([x[:, 1:], self.mask_token.expand(n, num_masked, -1)], dim=1)
        x = torch.cat([x[:, :1], take_tokens(shuffled, ids_restore)], dim=1)
        x = self.decoder_norm(self.decoder_blocks(x + self.decoder_pos_embed))
        return self.decoder_pred(x[:, 1:])

    def target(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reconstruction target of standardized images (§3 "Reconstruction target").

        Returns:
            ``target`` ``(N, L, p²·C)`` float32: the patches, each normalised by its
            own mean and std when ``norm_pix_loss``; and each patch's ``mean`` and
            ``std`` ``(N, L, 1)`` (0 and 1 without ``norm_pix_loss``) to undo it.
        """
        patches = self.patchify(images.float())
        if not self.options.norm_pix_loss:
            return patches, torch.zeros_like(patches[..., :1]), torch.ones_like(patches[..., :1])
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
        return (patches - mean) / std, mean, std

    def _reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One masked reconstruction of images ``(N, C, H, W)`` in [0, 1]: predictions,
        targets and mask (patch order), plus the predicted patches in [0, 1] pixels."""
        x = self.normalize(images)
        latent, mask, ids_restore = self.forward_encoder(x)
        pred = self.forward_decoder(latent, ids_restore).float()
        target, mean, std = self.target(x)
        # Undo the per-patch then the dataset normalisation (the paper's visualisation).
        standardized = self.unpatchify(pred * std + mean)
        pixels = (standardized * self.pixel_std + self.pixel_mean).clamp(0, 1)
        return {"pred": pred, "target": target, "mask": mask,
                "pixels": self.patchify(pixels)}

    # ---------------------------------------------------------------- training

    def default_optim(self, batch_size: int) -> list[OptimConfig]:
        """AdamW, β = (0.9, 0.95), weight decay 0.05, LR = 1.5e-4 × batch/256 (Table 8;
        e.g. 7.5e-5 at the CLI's default batch 128). The paper warms up 40 of 800 epochs
        (5 %); only the batch size is known here, so 1.5 warm-up epochs are 5 % of the
        CLI's default 30-epoch run (``--warmup-epochs`` overrides)."""
        return [OptimConfig(name="adamw", lr=1.5e-4 * batch_size / 256, weight_decay=0.05,
                            betas=(0.9, 0.95), warmup_epochs=1.5)]

    def configure_optimizers(self, optims: list[OptimConfig]) -> list[torch.optim.Optimizer]:
        """One AdamW over the trainable parameters; biases and norm gains are not
        decayed (MAE's code; the paper does not say). The frozen sin-cos position
        embeddings are not optimized."""
        (optim,) = optims
        return [optim.build(param_groups_weight_decay(self, optim.weight_decay))]

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        """Masked-patch MSE on the target of :meth:`target` (§3).

        Args:
            images: ``(N, C, H, W)`` float in [0, 1].

        Returns:
            The scalar float32 loss (a fresh random mask per call) and no extra logs.
        """
        x = self.normalize(images)
        latent, mask, ids_restore = self.forward_encoder(x)
        pred = self.forward_decoder(latent, ids_restore).float()
        return masked_mse(pred, self.target(x)[0], mask), {}

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def pretext_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Held-out reconstruction of a fresh random mask.

        Returns:
            ``masked_mse``: the loss on masked patches (target scale);
            ``masked_psnr_db``: PSNR in dB of the [0, 1] pixels of masked patches,
            averaged over images. With ``norm_pix_loss`` the prediction is
            un-normalised with each patch's true mean and std, so this PSNR
            measures structure within patches, not their brightness.
        """
        out = self._reconstruct(images)
        mask = out["mask"]
        pixel_err = (out["pixels"] - self.patchify(images.float())).pow(2).mean(dim=-1)
        mse_per_image = (pixel_err * mask).sum(dim=1) / mask.sum(dim=1)
        psnr = -10 * torch.log10(mse_per_image.clamp_min(1e-10))
        return {"masked_mse": masked_mse(out["pred"], out["target"], mask).item(),
                "masked_psnr_db": psnr.mean().item()}

    @torch.no_grad()
    def render(self, images: torch.Tensor):
        """Rows: the masked input (masked patches grey), the reconstruction with the
        visible patches pasted back (as in the paper's Figs. 2–3), the original."""
        out = self._reconstruct(images)
        original = self.patchify(images.float())
        masked = out["mask"].bool().unsqueeze(-1)
        grey = torch.full_like(original, 0.5)
        return image_rows([
            ("masked", self.unpatchify(torch.where(masked, grey, original))),
            ("reconstruction", self.unpatchify(torch.where(masked, out["pixels"], original))),
            ("original", images),
        ], title=f"MAE, {self.options.mask_ratio:.0%} of patches masked")

    def summary(self) -> dict[str, Any]:
        """Parameter counts (trainable; the sin-cos embeddings are fixed), patch counts."""
        encoder = count_parameters(self.backbone)
        return {"encoder_parameters": encoder,
                "decoder_parameters": count_parameters(self) - encoder,
                "patch_size": self.patch_size,
                "num_patches": self.num_patches,
                "num_visible": self.num_visible}
