"""ERB ambiguity attack (Chen et al., CVPR 2023): replace each passport-aware branch by learnable
affine parameters followed by an expanded residual block, trained with a little data.

Threat model: the attacker has the released weights, the architecture and a share (default 10%)
of the task data; no key, no passports. For every norm the owner protected (the architecture
tells which norms are protectable), the branch becomes ``norm1(x) * ERB(gamma) + ERB(beta)``
with ``norm1`` the released norm's statistics without affine. CERB: one C -> C/8 -> C block with
LeakyReLU and a skip; IERB: a per-channel block with hidden width 10. The model stays frozen; the
block and the affine parameters learn the task with cross-entropy plus a sign loss towards a
signature of the attacker's choosing. Reported: accuracy of the forged branch and its bit
dissimilarity to the owner's signature (the signs of the forged gamma against the owner's bits).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..binding import SECURITY_BITS, hash_bound_bits, required_matches
from ..choices import words
from ..errors import ConfigError
from ..evaluation import accuracy
from ..key import OwnerKey
from ..norm import affine_free_copy, along, norm_channel_dim, norm_channels
from ..signature import read_bits
from .evidence import require_data
from .registry import AttackContext, AttackResult, Option, register_attack

THREAT_MODEL = (
    "attacker: released weights, architecture and {share:.0%} of the task data; no key. Action: each "
    "protected "
    "norm's branch replaced by learnable gamma/beta through a {mode} block, trained with cross-entropy + "
    "sign loss "
    "to the attacker's signature, model frozen."
)
ErbMode = Literal["cerb", "ierb"]
ERB_MODES = words(ErbMode)


class ERBBranch(nn.Module):
    """``norm1(x) * ERB(gamma) + ERB(beta)``, ``norm1`` carrying the released statistics."""

    def __init__(self, norm: nn.Module, mode: str, generator: torch.Generator):
        super().__init__()
        channels = norm_channels(norm)
        self.norm1 = affine_free_copy(norm)
        if getattr(norm, "running_mean", None) is not None:
            self.norm1.load_state_dict(
                {k: v for k, v in norm.state_dict().items() if k not in ("weight", "bias")}
            )
        self.gamma = nn.Parameter(torch.randn(channels, generator=generator))
        self.beta = nn.Parameter(torch.randn(channels, generator=generator) * 0.1)
        self.mode = mode
        if mode == "cerb":
            hidden = max(1, channels // 8)
            self.down = nn.Parameter(torch.randn(hidden, channels, generator=generator) / channels**0.5)
            self.up = nn.Parameter(torch.zeros(channels, hidden))
        else:
            self.down = nn.Parameter(torch.randn(channels, 10, generator=generator))
            self.up = nn.Parameter(torch.zeros(channels, 10))

    def block(self, v: Tensor) -> Tensor:
        if self.mode == "cerb":
            return v + self.up @ F.leaky_relu(self.down @ v)
        return v + (self.up * F.leaky_relu(self.down * v.unsqueeze(1))).sum(dim=1)

    def affine(self) -> tuple[Tensor, Tensor]:
        return self.block(self.gamma), self.block(self.beta)

    def forward(self, x: Tensor) -> Tensor:
        gamma, beta = self.affine()
        dim = norm_channel_dim(self.norm1, x.dim())
        return self.norm1(x) * along(gamma, x.dim(), dim) + along(beta, x.dim(), dim)


def erb_attack(
    released: nn.Module,
    key: OwnerKey,
    attacker_data: Dataset,
    owner_test: Dataset,
    mode: ErbMode = "cerb",
    share: float = 0.1,
    epochs: int = 5,
    lr: float = 0.01,
    alpha: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    if mode not in ERB_MODES:
        raise ConfigError(f"unknown ERB mode {mode!r}; choose cerb or ierb")
    require_data(attacker_data)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(released).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    branches: dict[str, ERBBranch] = {}
    for layer in key.layers:
        branch = ERBBranch(model.get_submodule(layer.norm), mode, gen)
        model.set_submodule(layer.norm, branch)
        branches[layer.norm] = branch
    targets = {
        path: torch.where(torch.rand(b.gamma.numel(), generator=gen) < 0.5, -1.0, 1.0)
        for path, b in branches.items()
    }
    trainable = [p for b in branches.values() for p in b.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    loader = DataLoader(attacker_data, batch_size=64, shuffle=True, generator=gen)
    for _ in range(epochs):
        for x, y in loader:
            sign = sum(F.relu(0.1 - targets[p] * b.affine()[0]).sum() for p, b in branches.items())
            loss = F.cross_entropy(model(x), y) + alpha * sign
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        forged = torch.cat([read_bits(b.affine()[0]) for b in branches.values()])
    owner = torch.cat([key.layer_tensors(layer.norm)["signature"].float() for layer in key.layers])
    target = torch.cat(list(targets.values()))
    # Against hash-bound signatures the claim's bits must be the hash of the forger's identity and
    # of what stands in for passports (the trained gamma/beta vectors): compare the signs reached
    # with that hash. Training moved those vectors, so the hash is a fresh random target.
    with torch.no_grad():
        stand_ins = [
            (p, b.gamma.detach().view(1, -1), b.beta.detach().view(1, -1)) for p, b in branches.items()
        ]
        bound = hash_bound_bits("(c) ERB attacker", stand_ins, len(forged)).float()
    hash_agreement = float((forged == bound).float().mean())
    return {
        "attack": f"erb-{mode}",
        "threat_model": THREAT_MODEL.format(share=share, mode=mode.upper()),
        "forged_accuracy": accuracy(model, owner_test),
        "released_accuracy": accuracy(released, owner_test),
        "bit_dissimilarity_to_owner": float((forged != owner).float().mean()),
        "target_detection": float((forged == target).float().mean()),
        "hash_bound_agreement": hash_agreement,
        "hash_bound_claim_passes": (forged == bound).sum().item()
        >= required_matches(len(forged), 2.0**-SECURITY_BITS),
        "model_with_forged_branch": model,
    }


@register_attack(
    "erb",
    "forge a passport branch from the released norms (Chen et al.'s ERB)",
    options=(
        Option(
            "erb_mode",
            "cerb (the released norms' statistics) or ierb (fresh ones)",
            default="cerb",
            choices=ERB_MODES,
        ),
    ),
    share=0.1,
)
def run_erb(context: AttackContext) -> AttackResult:
    report = erb_attack(
        context.released,
        context.key,
        context.attacker,
        context.data.test,
        mode=context.settings["erb_mode"],
        share=context.share,
        epochs=context.epochs,
        seed=context.seed,
    )
    report.pop("model_with_forged_branch")
    return AttackResult.of(report, [{k: v for k, v in report.items() if k not in ("attack", "threat_model")}])
