"""Optimisers for pretraining: SGD (v1/v2), LARS and AdamW (v3), in the registry ``OPTIMIZERS``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from moco.schedules import base_lr
from moco.schema import Config, OptimConfig


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in the MoCo v3 code: SGD with momentum whose update of each weight
    matrix is rescaled by ``trust_coefficient * |w| / |g + wd * w|``. Weight decay and the rescaling
    apply only to parameters with more than one dimension: biases and norm parameters get neither."""

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict], lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, g["trust_coefficient"] * param_norm / update_norm,
                                                one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything back-propagation trains: the query encoder (and v3's predictor); never the key encoder,
    a frozen patch projection or a fixed position embedding."""
    return [p for p in model.parameters() if p.requires_grad]


OptimizerBuilder = Callable[[Iterable[nn.Parameter], float, OptimConfig], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "sgd": lambda params, lr, o: torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                                 nesterov=o.nesterov and o.momentum > 0),
    "lars": lambda params, lr, o: LARS(params, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum),
    "adamw": lambda params, lr, o: torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay),
}
"""``optim.optimizer`` -> a function (trainable parameters, base lr, optim settings) -> optimiser."""


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``optim.optimizer`` names, over the model's trainable parameters, at the base lr."""
    return OPTIMIZERS[cfg.optim.optimizer](trainable_parameters(model), base_lr(cfg), cfg.optim)
