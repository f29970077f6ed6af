"""PassportSchedule in the user's own loop: a plain loop, and an AMP + DistributedDataParallel loop."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import passportnorm as pn
from passportnorm import zoo
from passportnorm.data import load_dataset
from passportnorm.train import TrainConfig, Trainer


def _protected():
    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = pn.protect(zoo.build("small_cnn", width=1.0), data.train.tensors[0][:8], signature="(c) loop", seed=0,
                       weak_layers="skip")
    return data, model


def test_the_credit_spreads_aware_steps_like_the_ratio_says():
    _, model = _protected()
    counts = [len(pn.PassportSchedule(model, ratio=r).aware_steps()) for r in (0.0, 0.5)]
    assert counts == [0, 1]
    quarter = pn.PassportSchedule(model, ratio=0.25)
    assert [len(quarter.aware_steps()) for _ in range(6)] == [0, 0, 1, 0, 0, 1]
    third = pn.PassportSchedule(model, ratio=0.75)
    assert sum(len(third.aware_steps()) for _ in range(4)) == 12  # 3 aware steps per free one
    with pytest.raises(pn.PassportNormError, match="ratio 1.0 must be in"):
        pn.PassportSchedule(model, ratio=1.0)


def test_a_plain_loop_with_the_helper_is_the_trainer_step_for_step():
    data, model = _protected()
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, triggers_per_batch=0)
    trainer = Trainer(model, data, config)
    _, mine = _protected()
    optimizer = torch.optim.SGD(mine.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=trainer.steps_per_epoch)
    schedule = pn.PassportSchedule(mine, ratio=0.5)
    images, labels = data.train.tensors
    for i in range(12):
        x, y = images[i * 32:(i + 1) * 32], labels[i * 32:(i + 1) * 32]
        trainer.step((x, y))
        mine.train()
        loss = F.cross_entropy(mine(x), y)  # the README's loop, as written there
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for _ in schedule.aware_steps():
            with schedule.aware():
                loss = schedule.with_sign_loss(F.cross_entropy(mine(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(), mine.state_dict().values()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    data, model = _protected()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    schedule = pn.PassportSchedule(ddp, ratio=0.5)
    images, labels = data.train.tensors
    losses = []
    for step in range(6):
        start = step * 64 + rank * 32  # each rank takes its half of a global batch of 64
        x, y = images[start:start + 32], labels[start:start + 32]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(ddp(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for _ in schedule.aware_steps():
            with schedule.aware(), torch.autocast("cpu", dtype=torch.bfloat16):
                loss = schedule.with_sign_loss(F.cross_entropy(ddp(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    torch.save({"state": model.state_dict(), "losses": losses}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_an_amp_ddp_loop_with_the_helper_keeps_the_ranks_in_step(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    parameters = [{k: v for k, v in r["state"].items() if "running" not in k and "num_batches" not in k} for r in results]
    assert parameters[0].keys() == parameters[1].keys()
    assert all(torch.equal(parameters[0][k], parameters[1][k]) for k in parameters[0])  # DDP kept the ranks equal
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() and len(r["losses"]) == 6 for r in results)
