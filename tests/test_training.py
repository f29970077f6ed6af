"""Training the passport-aware branch embeds the signature on every model family."""

import time

import pytest
import torch
import torch.nn.functional as F

from passportnorm import passport_mode, protect, sign_loss, signature_detection
from models import CASES


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_passport_branch_training_reaches_full_detection(case):
    model, x = case.build(), case.example()
    protected = protect(model, x, signature=b"\x5a", seed=0, signature_mode="text").train()
    before = signature_detection(protected).rate
    assert before < 0.8, "random passports should start near chance"

    optimizer = torch.optim.SGD(protected.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    with passport_mode(protected):
        for _ in range(300):
            inputs = torch.randn((8, *case.input_shape), generator=gen)
            targets = torch.randint(0, case.classes, (8,), generator=gen)
            loss = F.cross_entropy(protected(inputs), targets) + sign_loss(protected)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    report = signature_detection(protected)
    assert report.rate == 1.0, f"{case.name}: detection {report.rate:.3f} after 300 steps (from {before:.3f})"
    assert report.message == "Z" and report.message_bit_errors == 0
    assert time.perf_counter() - start < 60
