"""How a ViT learns before it is fine-tuned: masked autoencoders (He et al. 2021, "Masked
Autoencoders Are Scalable Vision Learners"). Read vit/paper.py first; the encoder here is the
general model (vit/model.py), its blocks reused for the decoder. For MAE's ViT-B/16 at 224 px:

    image (B, 3, 224, 224) -> N = 196 patches, each P*P*3 = 768 pixels          (B, 196, 768)
    encoder: embed every patch, add positions, keep a random 25% (N_keep = 49),
             put the CLS token in front, the blocks, the final norm             (B, 1+49, D)
    decoder: Linear D -> Dd; a shared mask token for each of the 147 hidden
             patches, every token back in its place, fixed 2-D sin-cos
             positions, 8 narrow blocks, a norm, Linear Dd -> P*P*3             (B, 196, 768)
    loss:    mean squared error over the hidden patches only                    ()

Symbols: B images, N patches, D the encoder's width (768), Dd the decoder's (512), P the patch
side (16). The encoder never sees a mask token: it works on the visible quarter alone, which is
why MAE pretrains a ViT-B 3x faster than it would run on all patches. The decoder is thrown away
after pretraining; `MaskedAutoencoder.encoder` is the ViT that fine-tunes.

`load(path)` reads transformers' ViTMAEForPreTraining files (facebook/vit-mae-*), Meta's release
(mae_visualize_vit_* with its decoder; mae_pretrain_vit_* and timm's *.mae are encoders, which
get a fresh decoder). tests/test_mae.py holds it to transformers' model: the same noise gives the
same mask, loss and predictions.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange

from vit import paper
from vit.config import ViTConfig
from vit.describe import describe
from vit.families import IMAGENET  # MAE's inputs, where a file does not say
from vit.layers.blocks import EncoderBlock
from vit.model import VisionTransformer
from vit.naflex import patchify


@dataclass(frozen=True)
class DecoderConfig:
    """MAE's decoder: narrow and shallow (the paper's defaults for every encoder size)."""

    dim: int = 512  # Dd
    depth: int = 8
    heads: int = 16
    norm_pix_loss: bool = False  # the target: each patch's pixels normalised by their own mean and std


# Decoder sizes by name (train --decoder). The paper's serves every encoder from ViT-B up; the
# smaller keep the decoder below the encoder's width, as the paper's ablation (Table 1a-b) finds
# a narrow, shallow decoder enough, for ViT-S/Ti at 224 px and for 32 px images at patch 4.
DECODERS = {"paper": DecoderConfig(dim=512, depth=8, heads=16),
            "small": DecoderConfig(dim=256, depth=4, heads=8),
            "tiny": DecoderConfig(dim=128, depth=2, heads=4),
            "cifar": DecoderConfig(dim=192, depth=4, heads=3)}  # IcarusWizard/MAE's ViT-Ti on CIFAR-10


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """MAE's fixed 2-D positions, (1, 1 + grid^2, dim), the CLS token's row zero: half the channels
    encode the row, half the column, each as sin(pos w_k), cos(pos w_k) with w_k = 10000^(-k / (dim/4))."""
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (dim/4,)
    rows, columns = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                   indexing="ij")
    def axis(position: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, dim/2): [sin | cos]
        angles = position.flatten()[:, None] * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)
    table = torch.cat([axis(columns), axis(rows)], dim=1)  # (N, dim): the column first, as MAE's (w, h) grid
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])[None].float()


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's masking, per image: sort its noise (B, N), keep the patches of the lowest
    (1 - mask_ratio) N values. Returns ids_keep (B, N_keep), mask (B, N: 1 = hidden, 0 = kept,
    in the patches' own order) and ids_restore (B, N: each patch's place in the shuffle)."""
    keep = int(noise.shape[1] * (1 - mask_ratio))
    ids_shuffle = noise.argsort(dim=1)  # (B, N): the patches, lowest noise first
    ids_restore = ids_shuffle.argsort(dim=1)  # its inverse permutation
    mask = torch.ones_like(noise)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], mask.gather(1, ids_restore), ids_restore


class Decoder(nn.Module):
    """Visible tokens (B, 1+N_keep, D) -> every patch's pixels (B, N, P*P*3)."""

    def __init__(self, encoder: ViTConfig, cfg: DecoderConfig):
        super().__init__()
        blocks = ViTConfig(embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads, img_size=encoder.img_size,
                           patch_size=encoder.patch_size, layer_norm_eps=encoder.layer_norm_eps)
        self.embed = nn.Linear(encoder.embed_dim, cfg.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))  # one learned token for every hidden patch
        self.register_buffer("position_embedding", sincos_positions(encoder.grid_size, cfg.dim))  # fixed (1, 1+N, Dd)
        self.blocks = nn.ModuleList(EncoderBlock(blocks, i) for i in range(cfg.depth))  # the encoder's kind of block
        self.norm = nn.LayerNorm(cfg.dim, eps=encoder.layer_norm_eps)
        self.predict = nn.Linear(cfg.dim, encoder.patch_size**2 * encoder.in_channels)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)  # (B, 1+N_keep, Dd)
        hidden = self.mask_token.expand(x.shape[0], ids_restore.shape[1] - x.shape[1] + 1, -1)  # (B, N-N_keep, Dd)
        shuffled = torch.cat([x[:, 1:], hidden], dim=1)  # (B, N, Dd): kept patches, then mask tokens
        patches = shuffled.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # each in its place
        x = torch.cat([x[:, :1], patches], dim=1) + self.position_embedding  # (B, 1+N, Dd)
        for block in self.blocks:
            x = block(x)
        return self.predict(self.norm(x))[:, 1:]  # (B, N, P*P*3): the CLS token's row dropped


class MaskedAutoencoder(nn.Module):
    """`model(images, noise=None, mask_ratio=0.75)` -> (loss, predictions (B, N, P*P*3), mask (B, N),
    1 = hidden), as transformers' ViTMAEForPreTraining returns (loss, logits, mask)."""

    def __init__(self, encoder: VisionTransformer, decoder: DecoderConfig = DecoderConfig()):
        super().__init__()
        self.encoder, self.decoder_cfg = encoder, decoder
        self.decoder = Decoder(encoder.cfg, decoder)
        self.target = normalised_patches if decoder.norm_pix_loss else patchify  # chosen once: (B, N, P*P*3)

    @property
    def blocks(self) -> list[nn.Module]:
        """Every block, the encoder's then the decoder's (training's compiled regions and FSDP's units)."""
        return [*self.encoder.blocks, *self.decoder.blocks]

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float = 0.75):
        latent, mask, ids_restore = self.encode(images, draw_noise(images, self.encoder.cfg.num_patches, noise), mask_ratio)
        predictions = self.decoder(latent, ids_restore)  # (B, N, P*P*3)
        per_patch = ((predictions - self.target(images, self.encoder.cfg.patch_size)) ** 2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum(), predictions, mask  # the hidden patches' mean alone

    def encode(self, images: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
        """(B, 3, H, W) -> the visible tokens, encoded (B, 1+N_keep, D), the mask, ids_restore."""
        tokens = self.encoder.embed(images)  # (B, 1+N, D): the CLS token first, positions added
        ids_keep, mask, ids_restore = random_masking(noise, mask_ratio)
        visible = tokens[:, 1:].gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[2]))  # (B, N_keep, D)
        x = torch.cat([tokens[:, :1], visible], dim=1)
        for block in self.encoder.blocks:
            x = block(x)
        return self.encoder.norm_tokens(x), mask, ids_restore

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float = 0.75) -> dict:
        """The paper's Figure 2: {"original", "masked" (hidden patches zero), "reconstruction", "pasted"
        (the visible patches pasted back), "loss", "mask"}, images (B, 3, H, W) in the input's scale.
        With norm_pix_loss the predictions are each patch's normalised pixels, drawn at the true
        patch's mean and std (as the paper's pictures are)."""
        loss, predictions, mask = self(images, noise, mask_ratio)
        p = self.encoder.cfg.patch_size
        pixels = patchify(images, p)  # (B, N, P*P*3), MAE's order
        predictions = unnormalise(predictions, pixels) if self.decoder_cfg.norm_pix_loss else predictions
        hidden = mask[..., None]  # (B, N, 1)
        grid = images.shape[-2] // p
        as_image = lambda x: rearrange(x, "b (r w) (p q c) -> b c (r p) (w q)", r=grid, p=p, q=p)  # noqa: E731
        return {"original": images, "masked": as_image(pixels * (1 - hidden)), "reconstruction": as_image(predictions),
                "pasted": as_image(pixels * (1 - hidden) + predictions * hidden), "loss": loss, "mask": mask}


def draw_noise(images: torch.Tensor, num_patches: int, noise: torch.Tensor | None) -> torch.Tensor:
    """The masking's noise (B, N): the caller's, or uniform."""
    if noise is not None:
        return noise
    return torch.rand(images.shape[0], num_patches, device=images.device)


def normalised_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """norm_pix_loss' target: each patch's pixels minus their mean, over sqrt(variance + 1e-6)."""
    pixels = patchify(images, patch_size)
    return (pixels - pixels.mean(dim=-1, keepdim=True)) / (pixels.var(dim=-1, keepdim=True) + 1e-6) ** 0.5


def unnormalise(predictions: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised predictions back to pixels, at each true patch's mean and std (for pictures)."""
    return predictions * (pixels.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + pixels.mean(dim=-1, keepdim=True)


def load(path, norm_pix_loss: bool | None = None) -> MaskedAutoencoder:
    """An MAE in any layout that has one (the module docstring), its decoder too where the file has
    it (else a fresh one, the paper's). norm_pix_loss: None is the file's (transformers' config.json;
    Meta's visualisation models predict raw pixels), else as given."""
    from weights.load import load_mae

    weights, decoder, config = load_mae(path)
    shapes = describe(weights)  # the encoder's depth, width, patch, MLP and size, as `weights inspect` reads them
    heads = {width: heads for width, _, heads in paper.SIZES.values()}  # where a file does not say
    encoder = VisionTransformer(ViTConfig(
        img_size=shapes.img_size, patch_size=shapes.patch[0], num_classes=0, embed_dim=shapes.width,
        depth=shapes.depth, num_heads=config.get("num_attention_heads") or heads[shapes.width],
        mlp_ratio=shapes.mlp_hidden / shapes.width,
        layer_norm_eps=weights.layer_norm_eps or 1e-6, activation=weights.activation or "gelu"))
    encoder.load_state_dict({k: v for k, v in weights.state_dict.items() if not k.startswith("head")})
    dim = decoder["embed.weight"].shape[0] if decoder else DecoderConfig.dim
    cfg = DecoderConfig(dim=dim, depth=len({k.split(".")[1] for k in decoder if k.startswith("blocks.")}) or DecoderConfig.depth,
                        heads=config.get("decoder_num_attention_heads") or DecoderConfig.heads,
                        norm_pix_loss=config.get("norm_pix_loss", False) if norm_pix_loss is None else norm_pix_loss)
    model = MaskedAutoencoder(encoder, cfg)
    encoder.pretrained_cfg.update(source=weights.source, mean=weights.mean or IMAGENET[0], std=weights.std or IMAGENET[1])
    if decoder:
        model.decoder.load_state_dict(decoder)
    return model.eval()
