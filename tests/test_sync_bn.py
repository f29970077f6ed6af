"""`--sync-bn`: BatchNorm becomes SyncBatchNorm while training, the passport-aware statistics sync too,
and the release is the user's architecture again.

torch's SyncBatchNorm syncs CUDA tensors only: on CPU two processes get a one-line refusal, one
process runs the same code path (no peer to sync with). Two CUDA processes must keep the
statistics one process computes on the whole batch, which BatchNorm without sync does not. (Whole
training runs are no test of this on a GPU: one epoch at lr 0.05 already moves weights by 0.1-0.2
between one and two processes, with or without sync: measured on an H100.)
"""

import json
import os

import pytest
import torch
from test_distributed_cli import _torchrun

import passportnorm as pn
from passportnorm.attach import branch_of
from passportnorm.cli import main
from passportnorm.distributed import restore_batchnorm, to_sync_batchnorm
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


def _statistics_after_one_step(rank: int, size: int, port: int, sync: bool, result) -> None:
    """Both forwards (passport-free, passport-aware) in train mode on this rank's half of one batch."""
    import torch.distributed as dist

    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        backend = "nccl" if torch.cuda.device_count() >= size else "gloo"  # gloo lets both share one GPU
        dist.init_process_group(backend, rank=rank, world_size=size)
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=10).to(device)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    if sync:
        to_sync_batchnorm(model)
    protected = pn.protect(model, x, seed=1).train()
    with torch.no_grad():
        protected(x[rank::size])
        with passport_mode(protected):
            protected(x[rank::size])
    result[rank] = {k: v.cpu().numpy() for k, v in protected.state_dict().items() if "running" in k}
    if size > 1:
        dist.destroy_process_group()


def _statistics(size: int, sync: bool) -> dict:
    import torch.multiprocessing as mp
    from test_distributed_cli import _free_port

    result = mp.Manager().dict()
    mp.spawn(_statistics_after_one_step, args=(size, _free_port(), sync, result), nprocs=size, join=True)
    return result[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_cuda_processes_with_sync_bn_keep_the_statistics_of_the_global_batch():
    """Free and passport-aware statistics (the branch's own and the unprotected norms' second set)
    after one step: two synced processes = one process on the whole batch; unsynced, they differ."""
    one, synced, unsynced = _statistics(1, True), _statistics(2, True), _statistics(2, False)
    assert any(".passport_aware." in k for k in one)
    worst = max(float(abs(one[k] - synced[k]).max()) for k in one)
    apart = max(float(abs(one[k] - unsynced[k]).max()) for k in one)
    assert worst < 1e-5 and apart > 1e-3, (worst, apart)
