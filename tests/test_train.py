"""Trainer: schedules, plain baseline, NaN guard, exact resume after an interruption mid-epoch."""

import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.data import load_dataset
from passportnorm.data.triggers import generate_triggers
from passportnorm.errors import ConfigError, TrainingError
from passportnorm.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _protected(data, seed=0):
    torch.manual_seed(seed)
    model = zoo.build("small_cnn", width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pn.protect(model, data.train.tensors[0][:8], signature="t", passports="shuffle", seed=seed)


pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")


class _Counter:
    """Counts passport-aware vs passport-free optimiser steps through passport_mode's layer flags."""

    def __init__(self, trainer):
        self.free = self.aware = 0
        original = trainer.optimizer.step
        layer = next(iter(pn.protected_layers(trainer.model).values()), None)

        def step(*args, **kwargs):
            if layer is not None and layer.mlp[0].weight.grad is not None:  # only aware steps reach the MLP
                self.aware += 1
            else:
                self.free += 1
            return original(*args, **kwargs)

        trainer.optimizer.step = step


@pytest.mark.parametrize("ratio,aware_per_free", [(0.5, 1), (0.75, 3), (0.0, 0)])
def test_alternate_schedule_ratio_is_the_share_of_aware_steps(digits, ratio, aware_per_free):
    trainer = Trainer(_protected(digits), digits, TrainConfig(epochs=1, ratio=ratio))
    counter = _Counter(trainer)
    batches = trainer._batches(0)
    for _ in range(4):
        trainer.step(next(batches))
    assert (counter.free, counter.aware) == (4, 4 * aware_per_free)


def test_joint_schedule_is_one_step_with_both_losses(digits):
    trainer = Trainer(_protected(digits), digits, TrainConfig(epochs=1, schedule="joint"))
    counter = _Counter(trainer)
    losses = trainer.step(next(trainer._batches(0)))
    assert counter.free + counter.aware == 1 and set(losses) == {"free", "total"}
    layer = next(iter(pn.protected_layers(trainer.model).values()))
    assert layer.norm.weight.grad is not None and layer.mlp[0].weight.grad is not None


def test_separate_aware_optimizer_decays_shared_weights_once_per_batch(digits):
    """Free step: SGD with weight decay on the free path; aware step: no decay on weights the free step
    already decayed, decay on the branch MLPs; momentum 0 makes both steps checkable by hand."""
    config = TrainConfig(epochs=1, momentum=0.0, weight_decay=0.1, lr=0.05, aware_optimizer="separate", triggers_per_batch=0)
    trainer = Trainer(_protected(digits), digits, config)
    model = trainer.model.train()
    branch = {id(p) for layer in pn.protected_layers(model).values() for p in layer.mlp.parameters()}
    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    x, y = next(trainer._batches(0))

    def descend(passports: bool) -> set[str]:
        model.zero_grad(set_to_none=True)
        with pn.passport_mode(model, passports):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if passports:
                loss = loss + config.sign_weight * pn.sign_loss(model)
        loss.backward()
        with torch.no_grad():
            for p in params.values():
                if p.grad is not None:
                    decay = config.weight_decay if (not passports or id(p) in branch) else 0.0
                    p -= config.lr * (p.grad + decay * p)
        return {name for name, p in params.items() if p.grad is not None}

    free_names, aware_names = descend(False), descend(True)
    expected = {name: p.detach().clone() for name, p in params.items()}
    assert not any(id(params[n]) in branch for n in free_names) and any(id(params[n]) in branch for n in aware_names)
    assert free_names & aware_names  # the producers: both paths move them, only the free step decays them
    with torch.no_grad():  # undo, then let the trainer do the same unit
        for name, p in params.items():
            p.copy_(before[name])
    trainer.step((x, y))
    for name, p in params.items():
        assert torch.allclose(p, expected[name], atol=1e-6), name
    joint = Trainer(_protected(digits), digits, TrainConfig(epochs=1, aware_optimizer="separate", schedule="joint"))
    assert joint.aware_optimizer is None  # only the alternate schedule has two kinds of step


def test_plain_training_reaches_good_accuracy_and_triggers_are_learned(digits):
    torch.manual_seed(0)
    triggers = generate_triggers(10, digits.input_shape, 10, seed=5)
    trainer = Trainer(zoo.build("small_cnn", width=0.25), digits, TrainConfig(epochs=4, batch_size=32), trigger=triggers)
    history = trainer.fit()
    assert history[-1]["passport_free_accuracy"] > 0.85
    assert history[-1]["trigger_accuracy"] >= 0.5
    assert "passport_aware_accuracy" not in history[-1]
    x, y = next(trainer._batches(0))
    assert len(x) == 32 + 2 and any(torch.equal(x[-1], t) for t in triggers.inputs)


def test_protected_training_embeds_the_signature_and_keeps_accuracy(digits):
    trainer = Trainer(_protected(digits), digits, TrainConfig(epochs=4, batch_size=32))
    history = trainer.fit()
    layers = pn.signature_detection(trainer.model).layers
    # every bit of the layers with a real lever; the grayscale first conv (fan-in 1) embeds slowly (RESULTS.md)
    assert all(d.matched == d.total for path, d in layers.items() if path != "features.1"), layers
    assert history[-1]["signature_detection"] >= 0.9
    assert history[-1]["passport_free_accuracy"] > 0.85 and history[-1]["passport_aware_accuracy"] > 0.85


def test_nan_loss_is_a_clear_error(digits):
    trainer = Trainer(_protected(digits), digits, TrainConfig(epochs=1, lr=1e6))
    with pytest.raises(TrainingError, match=r"loss became (nan|inf).*lower --lr"):
        trainer.fit()


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match=r"ratio 1.0 must be in \[0, 1\)"):
        TrainConfig(ratio=1.0).validate()
    with pytest.raises(ConfigError, match="unknown schedule 'both'"):
        TrainConfig(schedule="both").validate()
    with pytest.raises(ConfigError, match="unknown aware_optimizer 'own'"):
        TrainConfig(aware_optimizer="own").validate()


class _Killed(Exception):
    pass


@pytest.mark.parametrize("aware_optimizer", ["shared", "separate"])
def test_resume_after_a_kill_mid_epoch_gives_the_same_weights(digits, tmp_path, aware_optimizer):
    config = TrainConfig(epochs=3, batch_size=32, seed=4, aware_optimizer=aware_optimizer)
    triggers = generate_triggers(10, digits.input_shape, 10, seed=5)
    whole = Trainer(_protected(digits), digits, config, trigger=triggers, out_dir=tmp_path / "whole")
    whole.fit()

    def kill(epoch, step):
        if epoch == 1 and step == 17:
            raise _Killed

    first = Trainer(_protected(digits), digits, config, trigger=triggers, out_dir=tmp_path / "cut")
    with pytest.raises(_Killed):
        first.fit(on_step=kill)
    torch.manual_seed(999)  # the resumed process starts with other global RNG state
    resumed = Trainer(_protected(digits, seed=0), digits, config, trigger=triggers, out_dir=tmp_path / "cut")
    resumed.fit(resume=True)
    drop_time = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert drop_time(resumed.history) == drop_time(whole.history)
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings_and_missing_checkpoints(digits, tmp_path):
    trainer = Trainer(_protected(digits), digits, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path)
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        trainer.fit(resume=True)
    trainer.fit()
    other = Trainer(_protected(digits), digits, TrainConfig(epochs=2, batch_size=16), out_dir=tmp_path)
    with pytest.raises(TrainingError, match="other settings \\(epochs, batch_size\\)"):
        other.fit(resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="not a usable checkpoint"):
        trainer.fit(resume=True)
