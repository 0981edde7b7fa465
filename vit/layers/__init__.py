"""The general ViT's parts, each kind in its own file (in the spirit of timm's `layers/`); each
variant is a class, chosen once, when the model is built, by its file's make_* function:

    config.py (one level up)   the fields every part reads
    common.py       the norm (LayerNorm or RMSNorm), layer scale, drop path, Borrowed
    embeddings.py   pixels -> tokens: the paper's patches, NaFlex, the hybrids' stems (stems.py)
    positions.py    learned tables, RoPE, relative position biases
    attention.py    the paper's multi-head self-attention and the kinds that change one step of it
    mlp.py          the paper's MLP and SwiGLU
    blocks.py       the paper's pre-norm block, post-norm, parallel, branched, windowed; CaiT's stage
    heads.py        the final norm or SAM's neck, the pooling, the classifier

Files depend one way, down this list's order of use: blocks read attention and mlp, attention reads
positions and common, every file reads vit/config.py. vit/model.py puts them together.
"""
