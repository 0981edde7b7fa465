"""An exponential moving average of the weights (Polyak averaging), as DeiT and many CLIP
fine-tunes keep one.

After every optimiser step: ema = decay * ema + (1 - decay) * weights. With decay 0.999 the
average spans about the last 1,000 steps, so it smooths out the noise of the last few batches;
it is often the better model at the end of a run. It is evaluated beside the raw weights every
epoch, saved in last.pt (so a resumed run continues the same average) and, at the end, as a
fine-tuned checkpoint of its own.
"""

import copy

import torch

from train.distributed import full_state_dict, load_model_state


class EMA:
    """The averaged copy of a model: `update(model)` after each step, `model` to evaluate it."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)  # starts as the weights themselves

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        averaged, current = self.model.state_dict(), model.state_dict()  # same keys, the same order (FSDP: shards)
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        # ema += (1 - decay) * (weights - ema), all tensors in one call (timm's ModelEmaV3 does the same)
        torch._foreach_lerp_([averaged[k] for k in floats], [current[k] for k in floats], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return full_state_dict(self.model)  # under FSDP (the average is sharded like the model): gathered

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        load_model_state(self.model, state_dict)
