"""Secrets stay secret: nothing a run publishes lets anyone rebuild its passports.

The attack tried here is the one issue 15 describes: read every number the public files hold
(model.json, certificate.json, metrics.json, report.md, history.csv), rebuild the model and its
example inputs exactly as ``protect`` does, and run ``protect`` with each candidate seed. It
works against a run whose secret seed is known, which shows the test can fail.
"""

import json
import re
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.cli import main
from passportnorm.data import load_dataset
from passportnorm.key import OwnerKey
from passportnorm.key_manifest import SecretSeed
from passportnorm.protect import protected_layers

RUN = ["--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--epochs", "1", "--batch-size", "32",
       "--trigger-count", "20", "--signature", "(c) S"]
PUBLIC = ("released/model.json", "certificate.json", "metrics.json", "report.md", "history.csv")


def _public_numbers(out) -> set[int]:
    text = "\n".join((out / name).read_text() for name in PUBLIC if (out / name).is_file())
    return {int(n) for n in re.findall(r"\d+", text) if len(n) < 40}


def _regenerate(out, seed: int) -> torch.Tensor:
    """The first protected layer's gamma passport, rebuilt from public files and a guessed secret seed."""
    meta = json.loads((out / "released" / "model.json").read_text())
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    data = load_dataset(settings["dataset"], seed=settings["seed"])
    torch.manual_seed(settings["seed"])
    model = zoo.build(meta["arch"], **meta["model_config"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(model, data.train.tensors[0][:16], signature=settings["signature"], seed=seed,
                               passports=settings["passports"], weak_layers=settings["weak_layers"],
                               signature_mode=settings["signature_mode"])
    return next(iter(protected_layers(protected).values())).passport_gamma


def _key_passport(out) -> torch.Tensor:
    key = OwnerKey.load(out / "owner-key")
    return key.layer_tensors(key.layers[0].norm)["passport_gamma"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    outs = {}
    for name, extra in (("default", []), ("default-again", []), ("fixed", ["--secret-seed", "7"])):
        outs[name] = root / name
        assert main(["protect", *RUN, *extra, "--out", str(outs[name])]) in (0, 1)
    return outs


def test_public_files_do_not_let_anyone_regenerate_the_passports(runs):
    out = runs["default"]
    secret = _key_passport(out)
    candidates = _public_numbers(out) | set(range(0, 64)) | {7919}
    assert all(not torch.equal(_regenerate(out, seed), secret) for seed in sorted(candidates))


def test_the_same_attack_succeeds_when_the_secret_seed_is_known(runs):
    out = runs["fixed"]
    assert torch.equal(_regenerate(out, 7), _key_passport(out))


def test_default_runs_draw_their_secret_from_the_os_and_say_where_it_came_from(runs):
    default, again, fixed = runs["default"], runs["default-again"], runs["fixed"]
    assert not torch.equal(_key_passport(default), _key_passport(again))  # same public settings, other secrets
    seed = OwnerKey.load(default / "owner-key").manifest.secret_seed
    assert seed.source == "os-csprng" and int(seed.value).bit_length() > 64
    for name in PUBLIC:
        path = default / name
        assert not path.is_file() or seed.value not in path.read_text(), name
    assert "OS CSPRNG" in json.loads((default / "metrics.json").read_text())["seeds"]["secret_seed"]
    fixed_key = OwnerKey.load(fixed / "owner-key").manifest
    assert fixed_key.secret_seed == SecretSeed(source="user", value="7")
    assert "given by the user" in json.loads((fixed / "metrics.json").read_text())["seeds"]["secret_seed"]
    assert "secret_seed" not in json.loads((fixed / "metrics.json").read_text())["settings"]


def test_trigger_sets_follow_the_secret_seed_not_the_public_one(runs):
    triggers = [OwnerKey.load(runs[name] / "owner-key").trigger for name in ("default", "default-again")]
    assert not torch.equal(triggers[0].inputs, triggers[1].inputs)


def test_the_python_api_draws_a_secret_seed_unless_given_and_strip_drops_the_stamps():
    model, x = zoo.build("small_cnn", width=1.0), torch.randn(4, 1, 12, 12)
    first, second = (pn.protect(model, x, signature="p", weak_layers="skip") for _ in range(2))
    assert first.passportnorm_secret_seed["source"] == "os-csprng"
    gammas = [next(iter(protected_layers(m).values())).passport_gamma for m in (first, second)]
    assert not torch.equal(*gammas)
    fixed = [pn.protect(model, x, signature="p", weak_layers="skip", seed=3) for _ in range(2)]
    assert torch.equal(*[next(iter(protected_layers(m).values())).passport_gamma for m in fixed])
    assert fixed[0].passportnorm_secret_seed == {"value": 3, "source": "user"}
    released = pn.strip(first)
    assert not [name for name in vars(released) if name.startswith("passportnorm")]
