"""Where int8 loses answers: the compiled int8 path simulated in fp32, one change at a time.

    python -m benchmarks.int8_error                                   # the ViT-B/16 stand-in, 320 images
    python -m benchmarks.int8_error --checkpoint CK --images 1000     # a real fine-tune

Every Linear layer's weights are rounded to int8 per output channel (symmetric, as PT2E's x86
quantiser does) and its input to uint8 with one scale and zero point ("dynamic", from the
values themselves) over:
  the batch      as the packages do (infer/compiled.py: one scale per batch of 16)
  each image     one scale per image
  each token     one scale per token's row (not what PT2E's x86 lowering runs)
and then, with the batch's scale, each kind of layer kept in fp32 in turn. Printed: top-1
agreement with fp32 and the mean |logit error| over the logits' standard deviation. A
simulation, not the packages (their bf16 between the layers is left out): it tells where the
error comes from, not the packages' own agreement, which `infer --prepare` measures.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.cpu_runtimes import real_inputs, stand_in
from infer.cpu import cpu_kind
from vit.checkpoint import load_model

BATCH = 16  # the packages' batch (infer/compiled.BATCH_SIZE): the batch's scale spans this many images
KINDS = ("qkv", "out_proj", "fc1", "fc2", "head")  # the Linear layers of a plain ViT, by name


def int8_weights(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) weights rounded to int8 per output row, symmetric: scale = max |w| / 127."""
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return (weight / scale).round().clamp(-128, 127) * scale


def uint8_inputs(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """x rounded to uint8 with a scale and zero point per slice over `dims` (the range always holds 0)."""
    low, high = x.amin(dims, keepdim=True).clamp(max=0), x.amax(dims, keepdim=True).clamp(min=0)
    scale = ((high - low) / 255).clamp(min=1e-12)
    zero = (-low / scale).round()
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale


SCALES = {  # input (B, T, D) or (B, D) -> the dims one scale spans
    "the batch": lambda x: tuple(range(x.dim())),
    "each image": lambda x: tuple(range(1, x.dim())),
    "each token": lambda x: (x.dim() - 1,),
}


def simulated(model: torch.nn.Module, inputs: torch.Tensor, scale: str, fp32_kinds: tuple[str, ...] = ()) -> torch.Tensor:
    """(N, classes) logits with every Linear layer simulated in int8, except those named in fp32_kinds."""
    swapped = []
    for name, layer in model.named_modules():
        if isinstance(layer, torch.nn.Linear) and not any(name.endswith(kind) for kind in fp32_kinds):
            swapped.append(layer)
            weight = int8_weights(layer.weight)
            layer.forward = lambda x, layer=layer, weight=weight: F.linear(uint8_inputs(x, SCALES[scale](x)), weight,
                                                                          layer.bias)
    try:
        return torch.cat([model(batch) for batch in inputs.split(BATCH)])
    finally:
        for layer in swapped:
            del layer.forward  # back to the class's own


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_error", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="the stand-in (cpu_runtimes' random weights)")
    parser.add_argument("--checkpoint", help="a real fine-tune instead of the stand-in")
    parser.add_argument("--images", type=int, default=320, help="CIFAR-10 test images (the same number per class)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as work:
        checkpoint = Path(args.checkpoint) if args.checkpoint else stand_in(args.model, Path(work))
        model, card = load_model(checkpoint)
        inputs = real_inputs(checkpoint, args.images, skip=0)
    model.eval()
    reference = torch.cat([model(batch) for batch in inputs.split(BATCH)])  # (N, classes) fp32
    top = reference.topk(2, dim=1).values
    print(f"{card.model_name}, {len(inputs)} images, on {cpu_kind()}; fp32's top-two logit gap: median "
          f"{(top[:, 0] - top[:, 1]).median():.3f}, logits' std {reference.std():.3f}")
    runs = [(scale, ()) for scale in SCALES] + [("the batch", (kind,)) for kind in KINDS]
    for scale, kept in runs:
        start = time.perf_counter()
        logits = simulated(model, inputs, scale, kept)
        agree = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
        error = ((logits - reference).abs().mean() / reference.std()).item()
        label = f"scale over {scale}" + (f", {kept[0]} in fp32" if kept else "")
        print(f"  {label:<34} agreement {agree:7.2%}   |logit error| / std {error:.4f}   "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
