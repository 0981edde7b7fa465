"""vit/mae.py against transformers' ViTMAEForPreTraining: random weights, perturbed, saved in its
format, loaded, and the same noise giving the same mask, loss and predictions; Meta's and timm's
layouts; the paper's figure; a file that reads like paper.py."""

import ast
import inspect

import pytest
import torch

from tests.conftest import REPO, perturb_, real_images, run_cli
from vit import mae

TOLERANCE = 1e-5


def transformers_mae(tmp_path, norm_pix_loss: bool = False, **sizes):
    """transformers' model with perturbed random weights, saved as its hub folder is."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    config = ViTMAEConfig(norm_pix_loss=norm_pix_loss, **sizes)
    model = perturb_(ViTMAEForPreTraining(config)).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, config


@pytest.mark.parametrize("sizes", [
    dict(),  # facebook/vit-mae-base: ViT-B/16 at 224 px, a decoder of 8 blocks of 512
    dict(hidden_size=192, num_hidden_layers=3, num_attention_heads=3, intermediate_size=768, image_size=64,
         decoder_hidden_size=128, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
         decoder_intermediate_size=512),  # another size, another image size
])
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@torch.no_grad()
def test_the_same_noise_gives_transformers_mask_loss_and_predictions(sizes, norm_pix_loss, tmp_path, cifar_dir):
    reference, config = transformers_mae(tmp_path, norm_pix_loss, **sizes)
    ours = mae.load(tmp_path / "hf")
    assert ours.decoder_cfg.norm_pix_loss is norm_pix_loss  # (read from its config.json)
    images = real_images(cifar_dir, 2, config.image_size)
    noise = torch.rand(2, (config.image_size // config.patch_size) ** 2)
    theirs = reference(pixel_values=images, noise=noise)
    loss, predictions, mask = ours(images, noise=noise, mask_ratio=config.mask_ratio)
    assert torch.equal(mask, theirs.mask) and mask.sum(dim=1).tolist() == [0.75 * mask.shape[1]] * 2
    assert (predictions - theirs.logits).abs().max() <= TOLERANCE
    assert abs(loss - theirs.loss) <= TOLERANCE and loss > 0.1


@torch.no_grad()
def test_meta_and_timm_layouts_load_the_encoder_and_decoder_they_hold(tmp_path, cifar_dir):
    """Meta's release is timm's blocks by name (models_mae.py builds timm's Block): the encoder a
    timm ViT's keys, the decoder `decoder_blocks.*` beside `decoder_embed`, `mask_token`, ...
    Each part is compared with the timm module whose weights it took."""
    import timm

    torch.manual_seed(0)
    encoder = perturb_(timm.create_model("vit_base_patch16_224", num_classes=0, img_size=64, depth=2)).eval()
    decoder = perturb_(timm.create_model("vit_base_patch16_224", num_classes=0, img_size=64, depth=2, embed_dim=128,
                                         num_heads=16)).eval()  # MAE's decoders: 16 heads (a file does not say)
    parts = {"mask_token": torch.randn(1, 1, 128), "decoder_pos_embed": torch.randn(1, 17, 128),
             "decoder_embed.weight": torch.randn(128, 768), "decoder_embed.bias": torch.randn(128),
             "decoder_norm.weight": torch.randn(128), "decoder_norm.bias": torch.randn(128),
             "decoder_pred.weight": torch.randn(768, 128), "decoder_pred.bias": torch.randn(768)}
    state = {**encoder.state_dict(), **{f"decoder_{k}": v for k, v in decoder.state_dict().items()
                                         if k.startswith("blocks.")}, **parts}
    torch.save({"model": state}, tmp_path / "mae_visualize_vit_base.pth")  # as Meta's files hold it
    ours = mae.load(tmp_path / "mae_visualize_vit_base.pth")
    images = real_images(cifar_dir, 2, 64)
    assert (ours.encoder.forward_features(images) - encoder.forward_features(images)).abs().max() <= TOLERANCE
    tokens = torch.randn(2, 17, 128)
    assert (ours.decoder.blocks[1](tokens) - decoder.blocks[1](tokens)).abs().max() <= TOLERANCE
    assert torch.equal(ours.decoder.position_embedding, parts["decoder_pos_embed"])

    torch.save({"model": encoder.state_dict()}, tmp_path / "mae_pretrain_vit_base.pth")  # an encoder alone
    alone = mae.load(tmp_path / "mae_pretrain_vit_base.pth")
    assert (alone.encoder.forward_features(images) - encoder.forward_features(images)).abs().max() <= TOLERANCE
    assert alone.decoder_cfg == mae.DecoderConfig()  # the paper's fresh decoder
    said = run_cli("weights", "inspect", str(tmp_path / "mae_visualize_vit_base.pth"))
    assert said.returncode == 0 and "meta_mae" in said.stdout, said.stderr


@torch.no_grad()
def test_the_papers_figure_pastes_the_visible_patches_back(tmp_path, cifar_dir):
    reference, config = transformers_mae(tmp_path, True, hidden_size=192, num_hidden_layers=2, num_attention_heads=3,
                                         intermediate_size=768, image_size=64, decoder_hidden_size=128,
                                         decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
                                         decoder_intermediate_size=512)
    ours = mae.load(tmp_path / "hf")
    images = real_images(cifar_dir, 2, 64)
    pictures = ours.reconstruct(images, mask_ratio=0.75)
    hidden = pictures["mask"].view(2, 1, 4, 1, 4, 1).expand(-1, 3, -1, 16, -1, 16).reshape(2, 3, 64, 64).bool()
    for name in ("original", "masked", "reconstruction", "pasted"):
        assert pictures[name].shape == images.shape
    assert torch.equal(pictures["pasted"][~hidden], images[~hidden])  # the visible patches as they were
    assert torch.equal(pictures["pasted"][hidden], pictures["reconstruction"][hidden])
    assert (pictures["masked"][hidden] == 0).all()
    said = run_cli("weights", "inspect", str(tmp_path / "hf"))
    assert said.returncode == 0 and "hf_mae" in said.stdout, said.stderr


def test_mae_reads_like_paper_py():
    source = (REPO / "vit" / "mae.py").read_text()
    assert len(source.splitlines()) <= 220
    for cls in (mae.Decoder, mae.MaskedAutoencoder):
        method = ast.parse(inspect.getsource(cls.forward).strip().replace("\n    ", "\n"))
        assert not any(isinstance(node, (ast.If, ast.IfExp)) for node in ast.walk(method)), cls.__name__


def test_the_papers_figure_from_the_command_line(tmp_path, cifar_dir):
    from PIL import Image

    transformers_mae(tmp_path, False, hidden_size=192, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=768, image_size=64, decoder_hidden_size=128, decoder_num_hidden_layers=1,
                     decoder_num_attention_heads=4, decoder_intermediate_size=512)
    result = run_cli("infer.figures", str(tmp_path / "figures"), "--mae", str(tmp_path / "hf"),
                     "--images", str(cifar_dir / "test"), "--num-images", "3", "--mask-ratio", "0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'figures' / 'mae_reconstruction.png'}"
    with Image.open(tmp_path / "figures" / "mae_reconstruction.png") as picture:
        assert picture.size == (800, 600)  # 4 columns, 3 rows
    assert mae.load(tmp_path / "hf").encoder.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)  # MAE's own inputs
