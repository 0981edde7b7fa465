"""The general ViT: the paper's model (vit/paper.py; read that first) with a slot for each way
the families that timm names differ from it, so that one model loads all of them. Its parts are in
vit/layers/ (one file per kind), its fields in vit/config.py, and which family sets which field in
vit/families.py; this file puts the parts together, in the order the data flows.

Every numerical choice matches timm's `VisionTransformer` (pre-norm blocks, one fused qkv
projection, LayerNorm eps 1e-6, exact GELU, CLS token concatenated *before* the position
embedding is added), so timm's pretrained weights load and give the same outputs. No forward
method asks which family it runs: each slot holds a class chosen once, in `__init__`.

Reading map: the calls of ViT-B/16's forward pass, in order, beside vit/paper.py's lines.

    call (file)                                                     shape            paper.py
    VisionTransformer.forward                                       (B, 3, 224, 224) 159
      forward_features -> embed -> PatchEmbedding (embeddings.py)    (B, 196, 768)    160, 65-67
      embed_patches: prefix tokens, AddPositions (positions.py)     (B, 197, 768)    161-162
      encode: for each of the 12 blocks, run_block ->               (B, 197, 768)    163-164
        EncoderBlock.forward (blocks.py)                                             124-126
          attention_branch: attention_norm, then
            MultiHeadSelfAttention.forward (attention.py):
              qkv_projection, heads                                 (B, 12, 197, 64) 89-90
              weighted_values -> SoftmaxAttention                   (B, 12, 197, 64) 91-93
              out_proj of the heads side by side                    (B, 197, 768)    94
          mlp_branch: mlp_norm, then MLP.forward (mlp.py)           (B, 197, 768)    106
      final_tokens -> norm_tokens: the final LayerNorm              (B, 197, 768)    165
      forward_head: TokenPooling, then OneHead (heads.py)           (B, 1000)        166

The slots that are the identity in ViT-B/16 (norm_after_patches, norm_before_blocks, the rotations
RoPE hands each block, q_norm and k_norm, layer scale, drop path, class_attention, pooled_norm)
are named where they are read; each says which family fills it.
"""

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from vit import features, naflex
from vit.config import DEFAULT_MEAN, DEFAULT_STD, ViTConfig
from vit.layers.attention import DifferentialLambda
from vit.layers.blocks import ClassAttentionStage, NoClassAttention, make_block
from vit.layers.common import Borrowed, make_norm
from vit.layers.embeddings import make_patch_embedding
from vit.layers.heads import AttentionPooling, DistilledHeads, OneHead, make_final_norm, make_pool
from vit.layers.positions import (MixedRope, RelativePositionBias, RelativePositionMlp, Rotation, make_add_positions,
                                  make_rope)


class VisionTransformer(nn.Module):
    """ViT classifier. `forward_features` gives the final tokens, `forward` the logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embedding = make_patch_embedding(cfg)
        self.norm_after_patches = make_norm(cfg, dim) if cfg.norm_after_patches else nn.Identity()  # AIMv2
        # The CLS token carries no image content; through attention it gathers a summary of
        # the patches, and the classifier reads only it.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.distillation_token else None
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.register_tokens, dim)) if cfg.register_tokens else None
        # The tokens before the patches in the blocks, in order (CaiT's CLS token joins after them).
        in_blocks = ("distillation_token", "register_tokens") if cfg.class_attention_blocks else (
            "cls_token", "distillation_token", "register_tokens")
        self.prefix_names = [name for name in in_blocks if getattr(self, name) is not None]
        # Attention is blind to order, so each position (CLS + every patch) gets a learned vector,
        # added to the tokens (`add_positions`); or positions enter attention instead (`rope`).
        self.position_embedding = nn.Parameter(torch.zeros(1, cfg.num_positions, dim)) if cfg.absolute_positions else None
        self.add_positions = make_add_positions(cfg)
        self.rope = make_rope(cfg)
        self.norm_before_blocks = make_norm(cfg, dim) if cfg.norm_before_blocks else nn.Identity()  # CLIP
        self.blocks = nn.ModuleList(make_block(cfg, index) for index in range(cfg.depth))
        # timm's srelpos: one relative position MLP, held here, whose bias every block's attention reads
        self.shared_relative_bias = RelativePositionMlp(cfg) if cfg.relative_position_shared else None
        if self.shared_relative_bias is not None:
            for attention in (attention for block in self.blocks for attention in block.attentions):
                attention.relative_bias = Borrowed(self.shared_relative_bias)
        self.class_attention = ClassAttentionStage(cfg) if cfg.class_attention_blocks else NoClassAttention()  # CaiT
        # The final norm (SAM: its neck) is stored once, as `final_norm`, and read in one of two places: on
        # every token (the paper's), or on the pooled vector (norm_after_pool: GAP ViTs with registers, BEiT).
        self.final_norm = make_final_norm(cfg)
        self.token_norm = nn.Identity() if cfg.norm_after_pool else Borrowed(self.final_norm)
        self.pooled_norm = Borrowed(self.final_norm) if cfg.norm_after_pool else nn.Identity()
        self.attention_pool = AttentionPooling(cfg) if cfg.pool == "map" else None  # SigLIP, PE: a learned query
        self.pool = make_pool(cfg, self.attention_pool)  # (B, T, D) -> (B, D): the CLS token in the paper
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        # DeiT distilled: the distillation token's own classifier, which votes with the head
        self.head_distillation = None
        if cfg.distillation_token:
            self.head_distillation = nn.Linear(dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.classify = DistilledHeads(self.head, self.head_distillation) if cfg.distillation_token else OneHead(self.head)
        # On the meta device (counting parameters, planning memory) there are no values to draw;
        # skipping them also spares the first meta normal_ importing torch._dynamo (1.4 s).
        if not next(self.parameters()).is_meta:
            self.reset_parameters()
        # Activation checkpointing (train --grad-checkpointing): in training, each block keeps only
        # its input for backward and recomputes the rest there. Memory per block falls from all
        # its intermediate tensors to one (B, T, D) tensor, for about a third more compute.
        self.grad_checkpointing = False
        # Where the weights came from, and the normalisation their inputs need (timm's name for
        # this record); vit.create_model fills it in when it loads pretrained weights.
        self.pretrained_cfg = {"source": None, "mean": DEFAULT_MEAN, "std": DEFAULT_STD}

    def reset_parameters(self) -> None:
        """timm's initialisation: truncated normal (std 0.02) linears and position embedding."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RelativePositionBias):
                nn.init.trunc_normal_(module.table, std=0.02)
            elif isinstance(module, MixedRope):
                module.reset_parameters()
            elif isinstance(module, DifferentialLambda):  # timm's: lambdas ~ N(0, 0.1)
                for lam in (module.lambda_q1, module.lambda_k1, module.lambda_q2, module.lambda_k2):
                    nn.init.normal_(lam, std=0.1)
        if self.position_embedding is not None:
            nn.init.trunc_normal_(self.position_embedding, std=0.02)
        for token in (self.cls_token, self.register_tokens):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        if self.distillation_token is not None:
            nn.init.trunc_normal_(self.distillation_token, std=0.02)
        if self.attention_pool is not None:
            nn.init.trunc_normal_(self.attention_pool.query, std=self.cfg.embed_dim**-0.5)
        self.reset_head()

    def reset_head(self) -> None:
        """Zero the classifier: a fresh head then predicts uniformly and, at the first steps of a
        fine-tune, sends no random gradients back into the pretrained features."""
        for head in (self.head, self.head_distillation):
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                if head.bias is not None:
                    nn.init.zeros_(head.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> input tokens (B, prefix+N, D): CLS first, plus positions."""
        return self.embed_patches(self.patch_embedding(images))

    def embed_patches(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) -> input tokens (B, prefix+N, D): the prefix tokens put in front,
        positions added."""
        patch_tokens = self.norm_after_patches(patch_tokens)  # identity but in AIMv2
        prefix = [getattr(self, name).expand(patch_tokens.shape[0], -1, -1) for name in self.prefix_names]  # (B, 1, D) each
        return self.add_positions(prefix, patch_tokens, self.position_embedding)  # (B, prefix+N, D)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final token sequence (B, prefix+N, D), as timm's."""
        return self.encode(self.embed(images), self.cfg.grid_for(*images.shape[-2:]))

    def encode(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Input tokens (B, T, D) of a (rows, columns) patch grid -> the final tokens (B, T, D)."""
        x = self.norm_before_blocks(x)  # identity but in CLIP and PE
        for block, rotation in zip(self.blocks, self.rope.rotations(grid)):  # RoPE's, computed once; else identities
            x = self.run_block(block, x, rotation)
        return self.final_tokens(x)

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's tokens -> the final tokens: CaiT's CLS token joins here, then the norm."""
        return self.norm_tokens(self.class_attention(x, self.cls_token))

    def norm_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm on every token (B, T, D), where the model normalises tokens; with
        norm_after_pool (GAP ViTs with registers, BEiT, EVA) the head normalises the pooled vector
        instead, and the tokens stay as the last block left them (timm's `norm` is Identity there)."""
        return self.token_norm(x)

    def run_block(self, block: nn.Module, x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
        """One block, (B, T, D) -> (B, T, D); with activation checkpointing in training, its
        backward re-runs it (the random state replayed: drop path drops the same samples)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, rotation, use_reentrant=False)
        return block(x, rotation)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Token sequence (B, T, D) -> logits (B, num_classes): pool one vector (B, D), norm it where
        the family norms after pooling, classify it (vit/layers/heads.py)."""
        return self.classify(self.pooled_norm(self.pool(features)), features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.forward_head(self.forward_features(images))

    # --- Off the classification path: other ways in and out, each written in its own file.

    def forward_intermediates(self, images: torch.Tensor, indices=None, **options):
        """Every chosen block's tokens, for detection and segmentation heads: timm's API (vit/features.py)."""
        return features.forward_intermediates(self, images, indices, **options)

    def get_intermediate_layers(self, images: torch.Tensor, n: int | list[int] = 1, **options) -> tuple:
        """The last n blocks' patch tokens: DINOv2's API (vit/features.py)."""
        return features.get_intermediate_layers(self, images, n, **options)

    def forward_naflex(self, patches, patch_coord=None, patch_valid=None):
        """NaFlex's own input: images of different sizes packed as patches, coordinates and a mask
        (vit/naflex.py)."""
        return naflex.forward_naflex(self, patches, patch_coord, patch_valid)
