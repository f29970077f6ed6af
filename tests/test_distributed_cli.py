"""`torchrun` for the CLI: two gloo processes train what one process trains (augmentation draws
included), and resume after a kill.

The processes are started the way torchrun starts them (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), each running ``passportnorm protect``. GroupNorm keeps the comparison exact up to
floating-point reduction order: BatchNorm's batch statistics are per process under DDP (one
process sees the whole global batch), which is what --sync-bn would change.
"""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from passportnorm.cli import main

RUN = ["protect", "--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--norm", "gn", "--epochs", "1",
       "--batch-size", "32", "--trigger-count", "20", "--secret-seed", "3", "--signature", "(c) ddp"]
# The comparison runs at lr 0.01, where one epoch is not chaotic: float sums in another order (a
# gradient all-reduced over two half batches) then differ by 6e-8 after it, measured on an AMD EPYC.
# At lr 0.05 the same training amplifies that rounding noise to 1e-2 on this CPU (it was 3e-6 on the
# machine these tests were first written on), so at 0.05 only the verdict is compared.
EXACT = [*RUN, "--lr", "0.01"]
TOLERANCE = 2e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, size: int, port: int, args: list[str], codes, interrupt_at: int | None) -> None:
    import os

    os.environ.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    if interrupt_at is not None:  # Ctrl-C reaching every rank at the same unit, as torchrun forwards it
        from passportnorm.train import Trainer

        step, units = Trainer.step, []

        def interrupted(self, batch):
            units.append(1)
            if len(units) > interrupt_at:
                raise KeyboardInterrupt
            return step(self, batch)

        Trainer.step = interrupted
    codes[rank] = main(args)


def _torchrun(args: list[str], size: int = 2, interrupt_at: int | None = None) -> list[int]:
    codes = mp.Manager().dict()
    mp.spawn(_rank, args=(size, _free_port(), args, codes, interrupt_at), nprocs=size, join=True)
    return [codes[r] for r in range(size)]


def _weights(folder):
    return load_file(str(folder / "released" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs: kernels with other thread counts sum in another order
    try:
        assert main([*EXACT, "--out", str(root / "one")]) in (0, 1)  # one epoch at lr 0.01: may not verify
    finally:
        torch.set_num_threads(threads)
    assert len(set(_torchrun([*EXACT, "--out", str(root / "two")]))) == 1
    assert _torchrun([*RUN, "--out", str(root / "verified")]) == [0, 0]
    return root


def test_two_processes_train_what_one_process_trains(runs):
    one, two = _weights(runs / "one"), _weights(runs / "two")
    assert one.keys() == two.keys()
    worst = max(float((one[k].float() - two[k].float()).abs().max()) for k in one)
    assert worst < TOLERANCE, worst
    metrics = json.loads((runs / "verified" / "metrics.json").read_text())
    assert metrics["environment"]["processes"] == 2 and metrics["verified"]


def test_a_batch_that_does_not_split_over_the_processes_is_one_line(tmp_path):
    args = [*RUN, "--batch-size", "33", "--out", str(tmp_path / "odd")]
    assert _torchrun(args) == [2, 2]
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow  # three torchrun launches, 35 s; a single process's exact resume is in test_train.py
def test_two_processes_resume_exactly_after_an_interruption(runs, tmp_path):
    two_epochs = [*RUN, "--epochs", "2"]
    assert _torchrun([*two_epochs, "--out", str(tmp_path / "whole")]) == [0, 0]
    steps_per_epoch = -(-1437 // 32)
    assert _torchrun([*two_epochs, "--out", str(tmp_path / "cut")], interrupt_at=steps_per_epoch + 5) == [130, 130]
    assert _torchrun([*two_epochs, "--out", str(tmp_path / "cut"), "--resume"]) == [0, 0]
    whole, cut = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def test_ranks_get_the_augmentation_one_process_gives_each_sample():
    from passportnorm import zoo
    from passportnorm.data import load_dataset
    from passportnorm.distributed import World
    from passportnorm.train import TrainConfig, Trainer

    data = load_dataset("mnist5k-points", seed=0, points=64)
    assert data.augment is not None
    model = zoo.build("pointnet", in_channels=3, num_classes=10, width=0.25)
    trainer = Trainer(model, data, TrainConfig(batch_size=16, seed=4))
    whole = next(trainer._batches(0))
    shares = []
    for rank in range(2):
        trainer.world = World(rank=rank, size=2, local_rank=rank)  # what a rank's trainer slices
        shares.append(next(trainer._batches(0)))
    for part in (0, 1):  # the ranks' shares interleave back into the single process's batch
        rebuilt = torch.empty_like(whole[part])
        rebuilt[0::2], rebuilt[1::2] = shares[0][part], shares[1][part]
        torch.testing.assert_close(rebuilt, whole[part], rtol=0, atol=0)
