"""`--sync-bn`: BatchNorm becomes SyncBatchNorm while training, the passport-aware statistics sync too,
and the release is the user's architecture again.

torch's SyncBatchNorm syncs CUDA tensors only: on CPU two processes get a one-line refusal, one
process runs the same code path (no peer to sync with). Two CUDA processes must train what one
process trains on the same global batch, the comparison BatchNorm without sync cannot pass.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from test_distributed_cli import _torchrun

import passportnorm as pn
from passportnorm.attach import branch_of
from passportnorm.cli import main
from passportnorm.distributed import BACKEND_VARIABLE, restore_batchnorm, to_sync_batchnorm
from passportnorm.protect import passport_mode
from passportnorm.release import load_released
from passportnorm.zoo.small_cnn import SmallCNN

RUN = ["protect", "--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--norm", "bn", "--epochs", "1",
       "--batch-size", "32", "--trigger-count", "20", "--secret-seed", "3", "--signature", "(c) sync", "--sync-bn"]


def test_sync_bn_converts_in_place_and_the_release_is_the_original_class():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=10)
    x = torch.randn(8, 1, 28, 28)
    names = [n for n, _ in model.named_parameters()]
    classes = to_sync_batchnorm(model)
    assert classes and all(isinstance(model.get_submodule(n), torch.nn.SyncBatchNorm) for n in classes)
    assert [n for n, _ in model.named_parameters()] == names
    protected = pn.protect(model, x, seed=1)
    aware = [branch_of(protected.get_submodule(n)) for n in classes]
    assert any(a is not None for a in aware)
    assert all(isinstance(protected.get_submodule(n), torch.nn.SyncBatchNorm) for n in classes)
    protected.train()
    with passport_mode(protected):  # the aware forward runs SyncBatchNorm's own forward (no peer here)
        protected(x).sum().backward()
    restore_batchnorm(protected, classes)
    assert all(pn.original_class(protected.get_submodule(n)) is classes[n] for n in classes)
    released = pn.strip(protected)
    assert {n: type(released.get_submodule(n)) for n in classes} == classes
    assert not any(hasattr(released.get_submodule(n), "process_group") for n in classes)


def test_sync_bn_in_one_cpu_process_trains_and_releases_plain_batchnorm(tmp_path):
    assert main([*RUN, "--out", str(tmp_path / "one")]) == 0
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["settings"]["sync_bn"] and metrics["verified"]
    model, _ = load_released(tmp_path / "one" / "released")
    assert all(type(m) is not torch.nn.SyncBatchNorm for m in model.modules())


def test_sync_bn_with_two_cpu_processes_is_one_line_and_writes_nothing(tmp_path):
    assert _torchrun([*RUN, "--out", str(tmp_path / "cpu")]) == [2, 2]
    assert not (tmp_path / "cpu").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_cuda_processes_with_sync_bn_train_what_one_process_trains(tmp_path):
    if torch.cuda.device_count() < 2:  # two processes share the one GPU through gloo
        os.environ[BACKEND_VARIABLE] = "gloo"
    try:
        args = [*RUN, "--device", "cuda"]
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
        assert _torchrun([*args, "--out", str(tmp_path / "two")]) == [0, 0]
    finally:
        os.environ.pop(BACKEND_VARIABLE, None)
    one = load_file(str(tmp_path / "one" / "released" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "released" / "model.safetensors"))
    worst = max(float((one[k].float() - two[k].float()).abs().max()) for k in one)
    assert worst < 1e-3, worst  # GPU reductions in another order; without sync the running means differ by ~1e-1
