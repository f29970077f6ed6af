"""Shared: train only the signature (the sign loss of the passport-aware forward), no task loss."""

import torch

from passportnorm.protect import passport_mode, sign_loss


def train_signature(protected, x, steps, lr=0.05):
    """``steps`` SGD steps on the sign loss of ``protected`` run on ``x``; returns ``protected``."""
    optimizer = torch.optim.SGD(protected.parameters(), lr=lr)
    for _ in range(steps):
        with passport_mode(protected):
            protected(x)
            loss = sign_loss(protected)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return protected
