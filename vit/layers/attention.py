"""Attention, one class per kind, chosen once by `make_attention`. MultiHeadSelfAttention is the
paper's (its Appendix A, Eq. 5-8); every other kind changes one of its steps:

    qkv_projection   QVBiasAttention (no key bias: BEiT, EVA, DINOv3)
    heads            GroupedQueryAttention (Sapiens2), DifferentialSelfAttention
    weighted_values  DifferentialSelfAttention, RelativePositionsAttention (SAM)
    the core         TalkingHeadsAttention (CaiT: TalkingHeadsSoftmax mixes the heads)

ClassAttention (CaiT) is the CLS token's alone. The core, softmax(q k^T / sqrt(hd) + bias) v, is
SoftmaxAttention: PyTorch's fused kernel."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vit.config import ViTConfig
from vit.layers.common import make_norm
from vit.layers.positions import IDENTITY, DecomposedRelativePositions, Rotation, make_relative_bias


def attention_logits(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """q k^T / sqrt(head_dim) + bias, written out: (B, H, T, T). The fused kernel below computes
    it inside; what writes the weights out (explain, talking heads) starts here."""
    logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return logits if bias is None else logits + bias


class SoftmaxAttention(nn.Module):
    """The heads' core, softmax(q k^T * scale + bias) v with scale = 1 / sqrt(head_dim), by
    PyTorch's fused kernel (flash attention on a GPU), which never materialises the (T, T)
    weights. Its own module so that vit.explain can hook it and write the weights out from the
    same q, k and bias (`weights`). bias: None, or a (1, H, T, T) tensor added to the logits."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=q.shape[-1] ** -0.5)  # (B, H, T, hd)

    def weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The attention weights the forward applies, written out in float32: (B, H, T, T), rows summing to 1."""
        return attention_logits(q.float(), k.float(), None if bias is None else bias.float()).softmax(dim=-1)


class MultiHeadSelfAttention(nn.Module):
    """Every token attends to every token, in `num_heads` independent subspaces:

        q, k, v = x W_qkv (+ b), split into heads                         (B, H, T, head_dim) each
        out     = softmax(rotation(q) rotation(k)^T / sqrt(head_dim) + relative_bias) v
        result  = heads side by side (B, T, D), times W_out

    In the original ViT the rotation is the identity and there is no bias: positions were added
    to the tokens before the blocks. The position schemes that enter attention instead plug in
    here, one slot each: RoPE hands every block a `rotation` (RotaryPositions, below), BEiT's
    RelativePositionBias sits in `relative_bias` (elsewhere NoRelativeBias, which adds nothing). Other attentions are
    subclasses that change one step: QVBiasAttention (`qkv_projection`), GroupedQueryAttention
    (`heads`), DifferentialSelfAttention (`heads` and `weighted_values`)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.kv_heads = cfg.kv_heads_in(index)  # num_heads, but in grouped-query blocks (Sapiens2)
        kv_dim = self.kv_heads * cfg.head_dim
        self.split = [cfg.embed_dim, kv_dim, kv_dim]  # q, k, v: rows of the qkv projection
        # One matmul makes q, k and v for every head at once; its output is laid out
        # (qkv, head, head_dim) along the last axis, as in timm's weights.
        self.qkv = nn.Linear(cfg.embed_dim, sum(self.split), bias=cfg.qkv_bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()  # ViT-22B, Sapiens2
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.relative_bias = make_relative_bias(cfg)  # BEiT's table, relpos' MLP; NoRelativeBias in the original
        self.softmax_attention = SoftmaxAttention()
        self.inner_norm = make_norm(cfg, cfg.embed_dim) if cfg.attention_inner_norm else nn.Identity()  # EVA-02 CLIP
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.proj_bias)

    def forward(self, x: torch.Tensor, rotation: Rotation = IDENTITY) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        q, k, v = self.heads(self.qkv_projection(x))  # (B, H, T, hd) each
        q, k = rotation(self.q_norm(q)), rotation(self.k_norm(k))  # RoPE turns them; elsewhere the identity
        out = self.weighted_values(q, k, v)  # (B, H, T, hd)
        return self.out_proj(self.inner_norm(rearrange(out, "b h t hd -> b t (h hd)")))  # heads side by side

    def qkv_projection(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)  # (B, T, D + 2 kv_dim)

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, 3D) -> q, k, v, each (B, H, T, head_dim)."""
        return rearrange(qkv, "b t (qkv h hd) -> qkv b h t hd", qkv=3, h=self.num_heads)

    def weighted_values(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(hd) + bias) v: (B, H, T, hd)."""
        return self.softmax_attention(q, k, v, self.relative_bias(q.dtype))  # bias: (1, H, T, T), or None

    def attention_map(self, recorded: list[torch.Tensor]) -> torch.Tensor:
        """The attention weights of one forward, from what `softmax_attention` recorded (vit.explain)."""
        return recorded[0]


# --- Other attentions: each changes one step of MultiHeadSelfAttention.


class QVBiasAttention(MultiHeadSelfAttention):
    """BEiT, EVA, DINOv3: biases for q and v only; k's is a constant zero (q . b_k would shift a
    query's logits equally, so softmax ignores it; with RoPE it would not, so it is left out)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.qkv = nn.Linear(cfg.embed_dim, sum(self.split), bias=False)
        self.q_bias = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(cfg.embed_dim))

    def qkv_projection(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x) + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])  # (B, T, 3D)


class GroupedQueryAttention(MultiHeadSelfAttention):
    """Grouped-query attention (Sapiens2's middle blocks): kv_heads key/value heads, each shared by
    num_heads / kv_heads query heads, so k and v are that many times narrower."""

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = qkv.split(self.split, dim=-1)  # (B, T, D), (B, T, kv_dim) twice
        q = rearrange(q, "b t (h hd) -> b h t hd", h=self.num_heads)  # (B, H, T, hd)
        k, v = (rearrange(t, "b t (h hd) -> b h t hd", h=self.kv_heads) for t in (k, v))  # (B, kv_heads, T, hd)
        group = self.num_heads // self.kv_heads  # query head h reads key/value head h // group
        return q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, T, hd) each


class DifferentialLambda(nn.Module):
    """Differential attention's learned weight and output norm (see DifferentialSelfAttention):

        lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init"""

    def __init__(self, cfg: ViTConfig, index: int):
        super().__init__()
        half = cfg.head_dim // 2  # the width of q1, k1, q2, k2 in each head
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.zeros(half)) for _ in range(4))
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * index)
        self.norm = nn.RMSNorm(cfg.head_dim, eps=1e-5)  # on each head's output (B, H, T, head_dim)

    def weight(self) -> torch.Tensor:
        """lambda, a scalar."""
        first = torch.exp((self.lambda_q1 * self.lambda_k1).sum().float())
        second = torch.exp((self.lambda_q2 * self.lambda_k2).sum().float())
        return first - second + self.lambda_init

    def forward(self, difference: torch.Tensor) -> torch.Tensor:
        """A @ v, the heads' outputs (B, H, T, head_dim) -> normed and scaled by 1 - lambda_init."""
        return self.norm(difference) * (1 - self.lambda_init)


class DifferentialSelfAttention(MultiHeadSelfAttention):
    """Differential attention (Ye et al. 2024, "Differential Transformer"; timm's dwee, dlittle,
    dpwee). Each head's q and k are split in two halves, which give two softmax maps; the
    attention is their difference, the second weighted by a learned lambda (DifferentialLambda):

        A = softmax(q1 k1^T / sqrt(d)) - lambda * softmax(q2 k2^T / sqrt(d))     (B, heads, T, T)

    Attention that both maps give (to patches that do not matter) cancels. The heads' outputs
    A @ v are RMS-normed and scaled by 1 - lambda_init, where lambda_init = 0.8 - 0.6 exp(-0.3 i)
    grows with the block's index i."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.q_norm = make_norm(cfg, cfg.head_dim // 2) if cfg.qk_norm else nn.Identity()  # on the half-width q, k
        self.k_norm = make_norm(cfg, cfg.head_dim // 2) if cfg.qk_norm else nn.Identity()
        self.differential = DifferentialLambda(cfg, index)

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k: (B, 2H, T, hd/2), two half-width heads per head; v: (B, H, T, hd)."""
        q, k, v = rearrange(qkv, "b t (qkv d) -> qkv b t d", qkv=3)
        q, k = (rearrange(t, "b t (h hd) -> b h t hd", h=2 * self.num_heads) for t in (q, k))
        return q, k, rearrange(v, "b t (h hd) -> b h t hd", h=self.num_heads)

    def weighted_values(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # heads 0, 2, 4, ... of q and k make each head's first map, 1, 3, 5, ... its second
        first = self.softmax_attention(q[:, 0::2], k[:, 0::2], v, None)  # (B, H, T, hd)
        second = self.softmax_attention(q[:, 1::2], k[:, 1::2], v, None)
        lam = self.differential.weight()  # A = first map - lambda * second map, so A @ v likewise
        return self.differential(first - lam.to(first.dtype) * second)

    def attention_map(self, recorded: list[torch.Tensor]) -> torch.Tensor:
        first, second = recorded
        return first - self.differential.weight() * second


class TalkingHeadsSoftmax(SoftmaxAttention):
    """Talking heads (Shazeer et al. 2020; CaiT): the heads exchange information around the
    softmax. Each (i, j) logit vector across the H heads is mixed by a learned H x H matrix before
    the softmax, and each weight vector by another after it:

        logits = mix_logits(q k^T / sqrt(hd))        over the heads axis     (B, H, T, T)
        A      = mix_weights(softmax(logits))                                 (B, H, T, T)
        out    = A v                                                          (B, H, T, hd)

    The weights are written out (no fused kernel: the mixing sits between its steps)."""

    def __init__(self, heads: int):
        super().__init__()
        self.mix_logits = nn.Linear(heads, heads)
        self.mix_weights = nn.Linear(heads, heads)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.mixed(q, k, bias) @ v  # (B, H, T, hd)

    def mixed(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        logits = attention_logits(q, k, bias)  # (B, H, T, T)
        logits = rearrange(self.mix_logits(rearrange(logits, "b h i j -> b i j h")), "b i j h -> b h i j")
        weights = rearrange(logits.softmax(dim=-1), "b h i j -> b i j h")
        return rearrange(self.mix_weights(weights), "b i j h -> b h i j")  # rows no longer sum to 1

    def weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.mixed(q, k, bias).float()


class TalkingHeadsAttention(MultiHeadSelfAttention):
    """CaiT's attention: the original's, with TalkingHeadsSoftmax as its core."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.softmax_attention = TalkingHeadsSoftmax(cfg.num_heads)


class RelativePositionsAttention(MultiHeadSelfAttention):
    """SAM's attention: the original's, with the query-dependent bias of DecomposedRelativePositions
    on the logits, for the grid the block attends over (a window, or the whole patch grid)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.relative_positions = DecomposedRelativePositions(cfg.attention_grid(index), cfg.head_dim)

    def weighted_values(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.softmax_attention(q, k, v, self.relative_positions(q))  # (B, H, T, hd)


class ClassAttention(nn.Module):
    """CaiT's class attention: only the CLS token asks; it reads itself and every patch:

        q    = cls W_q                                       (B, H, 1, hd)
        k, v = [cls; patches] W_k, [cls; patches] W_v        (B, H, 1+N, hd)
        cls' = softmax(q k^T / sqrt(hd)) v, heads side by side, times W_out    (B, 1, D)

    The patch tokens are read, never updated: the blocks before settled them."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.qkv_bias)
        self.softmax_attention = SoftmaxAttention()
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 1+N, D), the CLS token first -> (B, 1, D)
        q = rearrange(self.q(tokens[:, :1]), "b 1 (h hd) -> b h 1 hd", h=self.num_heads)
        k, v = (rearrange(projection(tokens), "b t (h hd) -> b h t hd", h=self.num_heads) for projection in (self.k, self.v))
        cls = self.softmax_attention(q, k, v, None)  # (B, H, 1, hd)
        return self.out_proj(rearrange(cls, "b h 1 hd -> b 1 (h hd)"))


def make_attention(cfg: ViTConfig, index: int) -> MultiHeadSelfAttention:
    if cfg.decomposed_relative_positions:
        return RelativePositionsAttention(cfg, index)
    if cfg.talking_heads:
        return TalkingHeadsAttention(cfg, index)
    if cfg.differential:
        return DifferentialSelfAttention(cfg, index)
    if cfg.kv_heads_in(index) < cfg.num_heads:
        return GroupedQueryAttention(cfg, index)
    if cfg.qkv_bias and not cfg.key_bias:
        return QVBiasAttention(cfg, index)
    return MultiHeadSelfAttention(cfg, index)
