"""Mixed precision: the forwards under autocast, the passport responses and sign loss in fp32."""

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.cli import main
from passportnorm.data import load_dataset
from passportnorm.errors import ConfigError
from passportnorm.protect import protected_layers
from passportnorm.train import TrainConfig, Trainer


def _trainer(precision: str, device: str = "cpu") -> Trainer:
    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    protected = pn.protect(zoo.build("small_cnn", width=1.0), data.train.tensors[0][:8], signature="(c) amp", seed=0,
                           weak_layers="skip")
    return Trainer(protected, data, TrainConfig(epochs=1, batch_size=32, precision=precision), device=device)


def _steps(trainer: Trainer, count: int) -> list[dict[str, float]]:
    images, labels = trainer.data.train.tensors
    return [trainer.step((images[i * 32:(i + 1) * 32], labels[i * 32:(i + 1) * 32])) for i in range(count)]


def test_bf16_autocast_trains_with_fp32_passport_responses():
    trainer = _trainer("bf16")
    losses = _steps(trainer, 20)
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
    for layer in protected_layers(trainer.model).values():
        assert layer._last_g.dtype == torch.float32  # the sign loss never sees bf16-rounded responses
    x = trainer.data.test.tensors[0][:8]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pn.passport_mode(trainer.model):
            assert trainer.model(x).dtype == torch.bfloat16  # the task path really ran in bf16
    assert losses[-1]["aware"] < losses[0]["aware"]
    report = pn.signature_detection(trainer.model)  # detection is read outside autocast, as always
    assert report.total == 192


def test_fp32_default_is_untouched_by_the_precision_machinery():
    a, b = _trainer("fp32"), _trainer("fp32")
    b.scaler = torch.amp.GradScaler("cpu", enabled=False)
    _steps(a, 3)
    _steps(b, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert not a.scaler.is_enabled()


def test_fp16_on_a_cpu_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device .* use --precision bf16"):
        _trainer("fp16")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        _trainer("fp8")
    out = tmp_path / "never"
    code = main(["protect", "--dataset", "digits", "--arch", "small_cnn", "--precision", "fp16", "--device", "cpu",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs a CUDA device" in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda_scales_the_loss():
    trainer = _trainer("fp16", device="cuda")
    losses = _steps(trainer, 10)
    assert trainer.scaler.is_enabled() and all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in losses)
    for layer in protected_layers(trainer.model).values():
        assert layer._last_g.dtype == torch.float32
