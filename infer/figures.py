"""The ViT paper's Figure 7, for any model and weights, as three PNG files; and the MAE paper's
Figure 2 for a masked autoencoder (vit/mae.py), as a fourth.

    python -m infer.figures --model vit_base_patch16_224 --pretrained default --images FOLDER OUT_DIR
    python -m infer.figures --checkpoint runs/quick/vit_cifar10_finetuned.pth --images ../shared/data/cifar10-jpg/test OUT_DIR
    python -m infer.figures --mae facebook-vit-mae-base/ --images FOLDER --mask-ratio 0.75 OUT_DIR

- patch_embedding_filters.png (Fig. 7 left): the first principal components of the patch
  projection's filters (each row of the flattened D x (3 P P) weight is one filter), as RGB tiles;
- position_similarity.png (Fig. 7 centre): for each patch position, the cosine similarity of its
  position embedding with every other position's, drawn on the patch grid;
- attention_distance.png (Fig. 7 right): for each block and head, the mean distance in pixels
  between a patch and the patches it attends to (weighted by attention), over real images;
- mae_reconstruction.png (MAE's Fig. 2, with --mae): per image, the original, the visible patches,
  the reconstruction and the reconstruction with the visible patches pasted back.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vit.cli import ArgumentParser  # noqa: E402
from vit.explain import attention_maps  # noqa: E402
from vit.model import VisionTransformer  # noqa: E402


def filter_components(model: VisionTransformer, count: int = 28) -> torch.Tensor:
    """(count, 3, P, P): the top principal components of the patch-embedding filters, each
    scaled to [0, 1] for display."""
    weight = model.patch_embedding.projection.weight.detach().float()  # (D, 3, P, P)
    flat = weight.flatten(1)  # (D, 3*P*P): one filter per row
    _, _, components = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)  # rows: principal axes
    components = components[:count].view(-1, *weight.shape[1:])
    low = components.amin(dim=(1, 2, 3), keepdim=True)
    high = components.amax(dim=(1, 2, 3), keepdim=True)
    return (components - low) / (high - low).clamp_min(1e-12)


def position_similarity(model: VisionTransformer) -> torch.Tensor:
    """(grid, grid, grid, grid): [i, j] is the cosine similarity of position (i, j)'s embedding
    with every position's, as a grid. The prefix tokens' entries (CLS, ...) are left out."""
    grid, cfg = model.cfg.grid_size, model.cfg
    patches = model.position_embedding.detach().float()[0, cfg.num_positions - cfg.num_patches:]  # (N, D)
    patches = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (patches @ patches.T).view(grid, grid, grid, grid)


@torch.no_grad()
def mean_attention_distance(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(depth, heads): per block and head, the attention-weighted distance in pixels between a
    patch (query) and the patches it attends to (keys), averaged over patches and images; the
    prefix tokens (CLS, ...) are left out on both sides."""
    grid, patch, prefix = model.cfg.grid_size, model.cfg.token_stride, model.cfg.num_prefix_tokens
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch  # (N, 2) in pixels
    distance = torch.cdist(centres, centres)  # (N, N)
    result = []
    for attention in attention_maps(model, images):  # (B, H, T, T)
        patch_to_patch = attention[:, :, prefix:, prefix:]
        weights = patch_to_patch / patch_to_patch.sum(-1, keepdim=True)  # renormalised without the prefix keys
        result.append((weights * distance).sum(-1).mean(dim=(0, 2)))  # (H,)
    return torch.stack(result)


def save_figures(model: VisionTransformer, images: torch.Tensor, out_dir: str | Path) -> list[Path]:
    """Write the three PNGs into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("patch_embedding_filters.png", "position_similarity.png",
                                         "attention_distance.png")]

    components = filter_components(model)
    figure, axes = plt.subplots(4, 7, figsize=(7, 4.4))
    for axis, component in zip(axes.flat, components):
        axis.imshow(component.permute(1, 2, 0).numpy())
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle("RGB embedding filters (first 28 principal components)", fontsize=10)
    figure.savefig(paths[0], dpi=100)
    plt.close(figure)

    similarity = position_similarity(model)
    grid = similarity.shape[0]
    figure, axes = plt.subplots(grid, grid, figsize=(6, 6), squeeze=False)
    for i in range(grid):
        for j in range(grid):
            axes[i][j].imshow(similarity[i, j].numpy(), vmin=-1, vmax=1, cmap="viridis")
            axes[i][j].axis("off")
    figure.suptitle("Position embedding similarity (cosine), per patch position", fontsize=10)
    figure.savefig(paths[1], dpi=100)
    plt.close(figure)

    distances = mean_attention_distance(model, images)
    figure, axis = plt.subplots(figsize=(6, 4.4))
    for head in range(distances.shape[1]):
        axis.scatter(torch.arange(1, len(distances) + 1), distances[:, head], s=12, label=f"head {head + 1}")
    axis.set(xlabel="network depth (block)", ylabel="mean attention distance (pixels)",
             ylim=(0, model.cfg.img_size), title=f"Mean attention distance over {len(images)} images")
    if distances.shape[1] <= 16:
        axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(paths[2], dpi=100)
    plt.close(figure)
    return paths



def save_mae_figure(pictures: dict, mean, std, path: str | Path, mask_ratio: float = 0.75) -> Path:
    """MAE's Figure 2 from `MaskedAutoencoder.reconstruct`'s pictures (B images, normalised as the
    encoder reads them): one row per image, in the images' own colours, written to `path` (PNG)."""
    columns = ("original", "masked", "reconstruction", "pasted")
    pictures = {k: pictures[k].float().cpu() for k in columns}  # (B, 3, S, S) each
    images = pictures["original"]
    colours = lambda x: (x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1)  # noqa: E731
    figure, axes = plt.subplots(len(images), 4, figsize=(8, 2 * len(images)), squeeze=False)
    for row in range(len(images)):
        for column, name in enumerate(columns):
            axes[row][column].imshow(colours(pictures[name][row]).permute(1, 2, 0).numpy())
            axes[row][column].axis("off")
            axes[0][column].set_title(name if name != "masked" else f"masked {mask_ratio:.0%}", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

def main(argv=None) -> int:
    from vit.checkpoint import CheckpointError, load_model
    from vit.factory import create_model
    from infer.images import ImageError, evenly_spaced, expand_paths, load_image
    from infer.preprocess import to_model_input
    from weights.load import HubUnavailable, WeightsError

    parser = ArgumentParser(prog="python -m infer.figures", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder for the PNG files")
    parser.add_argument("--model", default="vit_base_patch16_224", help="a model name (default: vit_base_patch16_224)")
    parser.add_argument("--pretrained", default="default",
                        help="'default' (timm's weights for --model), a hub id, a local file, or 'none' (default: default)")
    parser.add_argument("--checkpoint", help="a vit_<name>_finetuned.pth instead of --model/--pretrained (default: none)")
    parser.add_argument("--mae", help="a masked autoencoder's file (vit/mae.py's layouts): draw MAE's Figure 2 instead")
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="with --mae: the share of patches hidden "
                        "(default: 0.75, the paper's)")
    parser.add_argument("--images", required=True, help="a folder of real images, for the attention distances")
    parser.add_argument("--num-images", type=int, default=32, help="images for the attention distances, or with "
                        "--mae the figure's rows, at most 8 (default: 32)")
    args = parser.parse_args(argv)
    images_dir = Path(args.images)
    try:
        if args.mae:
            from vit import mae

            model = mae.load(args.mae)
            cfg = model.encoder.pretrained_cfg
            mean, std, size, source_size = cfg["mean"], cfg["std"], model.encoder.cfg.img_size, None
        elif args.checkpoint:
            model, card = load_model(args.checkpoint)
            mean, std, size, source_size = card.mean, card.std, card.img_size, card.source_size
        else:
            model = create_model(args.model, pretrained=args.pretrained).eval()
            mean, std, size, source_size = model.pretrained_cfg["mean"], model.pretrained_cfg["std"], model.cfg.img_size, None
        found = expand_paths([images_dir])
        if not images_dir.is_dir() or found == [images_dir]:
            raise ImageError(f"--images {images_dir}: no folder of images")
        batch = torch.cat([to_model_input(load_image(p, source_size or size)[None], size, mean, std, source_size)
                           for p in evenly_spaced(found, min(args.num_images, 8) if args.mae else args.num_images)])
    except (CheckpointError, WeightsError, ImageError, ValueError) as error:
        print(f"error: {error.advice('--pretrained') if isinstance(error, HubUnavailable) else error}", file=sys.stderr)
        return 1
    try:
        paths = [save_mae_figure(model.reconstruct(batch, mask_ratio=args.mask_ratio), mean, std,
                                        Path(args.out_dir) / "mae_reconstruction.png", args.mask_ratio)] if args.mae else \
            save_figures(model, batch, args.out_dir)
    except OSError as error:
        print(f"error: cannot write {error.filename or args.out_dir} ({error.strerror})", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
