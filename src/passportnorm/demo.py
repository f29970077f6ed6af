"""``passportnorm demo``: the core mechanism in one short run (protect, train, read, strip).

A small CNN is protected and trained on the shipped MNIST-5k with the paper's alternating
schedule written out by hand (one passport-free step, then one passport-aware step with the
sign loss, per batch), to show the library API without the Trainer. Passports default to
``shuffle``: zero-mean random passports barely constrain a first conv that sees one input
channel (docs/RESULTS.md measures this). It prints per-epoch accuracies of both branches and
the signature detection rate, then strips the branch and checks, bit for bit, that the
released model is the original architecture and computes exactly what the protected model's
passport-free branch computes. ``benchmarks/passport_kinds.py`` builds on it.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import zoo
from .choices import PassportKind
from .data import load_dataset
from .detection import signature_detection
from .device import resolve_device
from .errors import PassportWarning
from .evaluation import accuracy
from .fileio import write_json_atomic
from .protect import passport_mode, protect, sign_loss, strip

__all__ = ["run_demo"]


@torch.no_grad()
def outputs_identical(a: nn.Module, b: nn.Module, loader: DataLoader, device: torch.device) -> bool:
    a.eval(), b.eval()
    return all(torch.equal(a(x.to(device)), b(x.to(device))) for x, _ in loader)


def run_demo(
    out: str | Path = "runs/core-demo",
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    device: str = "auto",
    signature: str = "(c) passportnorm demo",
    width: float = 1.0,
    passports: PassportKind = "shuffle",
    alpha: float = 0.1,
) -> dict[str, Any]:
    """Run the demonstration and return (and write to ``out/metrics.json``) its metrics."""
    out = Path(out)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    data = load_dataset("mnist5k", seed=seed)
    plain = zoo.build("small_cnn", in_channels=1, num_classes=data.num_classes, width=width).to(dev)
    example = torch.stack([data.train[i][0] for i in range(8)]).to(dev)
    print(
        f"protecting small_cnn on mnist5k ({len(data.train)} train / {len(data.test)} test) on {dev}, "
        f"{passports} passports, signature {signature!r}"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PassportWarning)
        protected = protect(
            plain,
            example,
            signature=signature,
            passports=passports,
            seed=seed,
            alpha=alpha,
            signature_mode="text",
        )  # the demo reads the text back out of the weights
    for warning in caught:
        print(f"note: {warning.message}")

    loader_rng = torch.Generator().manual_seed(seed)
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=loader_rng)
    test = DataLoader(data.test, batch_size=256)
    optimizer = torch.optim.SGD(protected.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train))

    history = []
    for epoch in range(1, epochs + 1):
        protected.train()
        start = time.perf_counter()
        bar = tqdm(train, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True, disable=None)
        for x, y in bar:
            x, y = x.to(dev), y.to(dev)
            for aware in (False, True):  # alternate, ratio 0.5: free step then passport-aware step
                with passport_mode(protected, enabled=aware):
                    loss = F.cross_entropy(protected(x), y)
                    if aware:
                        loss = loss + sign_loss(protected)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        seconds = time.perf_counter() - start
        free_acc = accuracy(protected, test, dev)
        with passport_mode(protected):
            aware_acc = accuracy(protected, test, dev)
        detection = signature_detection(protected)
        row = {
            "epoch": epoch,
            "passport_free_accuracy": free_acc,
            "passport_aware_accuracy": aware_acc,
            "signature_detection": detection.rate,
            "seconds": seconds,
        }
        history.append(row)
        print(
            f"epoch {epoch}: passport-free acc {free_acc:.4f}  passport-aware acc {aware_acc:.4f}  "
            f"signature detection {detection.rate:.2%} ({detection.matched}/{detection.total} bits)  "
            f"{seconds:.1f}s"
        )

    released = strip(protected)
    same_classes = {n: type(m) for n, m in released.named_modules()} == {
        n: type(m) for n, m in plain.named_modules()
    }
    same_keys = {k: v.shape for k, v in released.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    identical = outputs_identical(released, protected, test, dev)
    released_acc = accuracy(released, test, dev)
    detection = signature_detection(protected)
    metrics = {
        "dataset": "mnist5k",
        "model": "small_cnn",
        "width": width,
        "schedule": "alternate",
        "ratio": 0.5,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": str(dev),
        "signature": signature,
        "passports": passports,
        "alpha": alpha,
        "history": history,
        "signature_detection": detection.to_dict(),
        "released_accuracy": released_acc,
        "strip": {
            "same_module_classes": same_classes,
            "same_state_dict_keys_and_shapes": same_keys,
            "outputs_bit_identical_to_passport_free": identical,
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", metrics)
    print(
        f"decoded signature: {detection.message!r} ({detection.message_bit_errors} bit errors in the message)"
    )
    print(f"signature detection rate: {detection.rate:.2%} ({detection.matched}/{detection.total} bits)")
    for path, layer in detection.layers.items():
        print(f"  {path}: {layer.rate:.2%} ({layer.matched}/{layer.total})")
    print(
        f"strip check: module classes identical: {same_classes}; state_dict keys/shapes identical: "
        f"{same_keys}; "
        f"outputs bit-identical to the passport-free branch on all {len(data.test)} test images: {identical}"
    )
    print(f"released model accuracy: {released_acc:.4f}; metrics written to {out / 'metrics.json'}")
    return metrics
