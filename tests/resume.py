"""Shared check: a protect run killed mid-epoch and resumed ends with the uninterrupted run's release."""

import pytest

from passportnorm import train as train_module
from passportnorm.fileio import tensors_fingerprint
from passportnorm.pipeline import RunOptions, run_protect
from passportnorm.release import load_released


class Stop(Exception):
    pass


def assert_resume_matches_uninterrupted(tmp_path, monkeypatch, options: dict, stop_at_step: int) -> None:
    """The resumed run is given no --secret-seed: it must read the interrupted run's back from secret/."""
    options = {"secret_seed": 11, **options}
    run_protect(RunOptions(**options, out=str(tmp_path / "whole")))
    original = train_module.Trainer.step
    calls = {"n": 0}

    def dying_step(self, batch):
        calls["n"] += 1
        if calls["n"] == stop_at_step:
            raise Stop
        return original(self, batch)

    monkeypatch.setattr(train_module.Trainer, "step", dying_step)
    with pytest.raises(Stop):
        run_protect(RunOptions(**options, out=str(tmp_path / "cut")))
    assert not (tmp_path / "cut" / "released").exists() and (tmp_path / "cut" / "secret" / "checkpoint.pt").exists()
    monkeypatch.setattr(train_module.Trainer, "step", original)
    run_protect(RunOptions(**{**options, "secret_seed": None}, out=str(tmp_path / "cut"), resume=True))
    whole, _ = load_released(tmp_path / "whole" / "released")
    cut, _ = load_released(tmp_path / "cut" / "released")
    assert tensors_fingerprint(whole.state_dict()) == tensors_fingerprint(cut.state_dict())
