"""The language-model path: the pydocs corpus, the zoo's GPT (every RMSNorm paired, the promises),
secret-prompt triggers (their null is exactly 1/vocabulary), perplexity, and the CLI end to end."""

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import passportnorm as pn
from passportnorm import zoo
from passportnorm.cli import main
from passportnorm.data.registry import load_dataset
from passportnorm.data.triggers import CONTINUATION, UNSCORED, generate_triggers, load_trigger_folder
from passportnorm.errors import DatasetError
from passportnorm.evaluation import accuracy, perplexity
from passportnorm.norm import is_hand_written_rmsnorm
from passportnorm.protect import protected_layers
from passportnorm.verify import verify_blackbox
from cli_args import train_args


def test_pydocs_is_next_byte_prediction_on_the_shipped_reference_text():
    data = load_dataset("pydocs")
    inputs, labels = data.train.tensors
    assert data.task == "text" and data.input_shape == (64,) and data.num_classes == 256
    assert inputs.dtype == torch.long and len(data.train) > 6000 and len(data.test) > 600
    assert torch.equal(inputs[0, 1:], labels[0, :-1]) and torch.equal(inputs[1, 0], labels[0, -1])
    assert bytes(inputs[0].tolist()).decode("utf-8", "replace").isprintable() or b"\n" in bytes(inputs[0].tolist())
    shifted = load_dataset("pydocs", seed=1).train.tensors[0]
    assert torch.equal(shifted[0, :-1], inputs[0, 1:])  # the seed moves where windows start


def test_every_rmsnorm_of_the_gpt_is_paired_with_its_consumer():
    model = zoo.build("gpt", in_channels=64, num_classes=256)
    norms = [name for name, m in model.named_modules() if is_hand_written_rmsnorm(m)]
    report = pn.find_pairs(model, torch.randint(0, 256, (2, 64)))
    assert len(norms) == 9 and not report.unprotectable and sorted(p.norm for p in report.pairs) == sorted(norms)
    links = {p.norm: (p.producer, p.role) for p in report.pairs}
    assert links["blocks.0.norm1"] == ("blocks.0.attn.qkv", "consumer")
    assert links["norm"] == ("head", "consumer")


def test_protect_keeps_the_gpt_function_and_strip_gives_back_the_original():
    model, ids = zoo.build("gpt", in_channels=64, num_classes=256).eval(), torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        reference = model(ids)
        assert reference.shape == (2, 256, 64)
        protected = pn.protect(model, ids, seed=0)
        assert torch.equal(protected(ids), reference)
        released = pn.strip(protected)
        assert torch.equal(released(ids), reference)
    assert list(released.state_dict()) == list(model.state_dict()) and len(protected_layers(protected)) == 9


def test_secret_prompts_score_only_their_continuations():
    trigger = generate_triggers(5, (64,), 256, seed=3, kind="prompts")
    assert trigger.inputs.shape == trigger.labels.shape == (5, 64) and len(trigger) == 5
    assert trigger.scored == 5 * CONTINUATION
    assert (trigger.labels[:, : 64 - CONTINUATION] == UNSCORED).all()
    # teacher forcing: each continuation token is the input at the next place
    assert torch.equal(trigger.inputs[:, 64 - CONTINUATION + 1 :], trigger.labels[:, 64 - CONTINUATION : -1])
    assert torch.equal(generate_triggers(5, (64,), 256, seed=3, kind="prompts").labels, trigger.labels)


class _Copy(nn.Module):
    """Answers the token it reads at each place: what a model that saw the prompts would echo."""

    def forward(self, ids):
        return nn.functional.one_hot(ids, 256).float().transpose(1, 2)


@pytest.mark.parametrize("unrelated", [_Copy(), None], ids=["copying", "random-gpt"])
def test_an_unrelated_model_matches_secret_continuations_at_chance(unrelated):
    torch.manual_seed(0)
    model = unrelated or zoo.build("gpt", in_channels=64, num_classes=256, width=0.0625).eval()
    trigger = generate_triggers(1500, (64,), 256, seed=11, kind="prompts")
    report = verify_blackbox(model, trigger)
    expected, sd = trigger.scored / 256, math.sqrt(trigger.scored / 256)
    assert report.trigger_count == trigger.scored and report.trigger_chance == 1 / 256
    assert abs(report.trigger_matches - expected) < 4.5 * sd and not report.verified


def test_a_model_that_learned_the_continuations_is_found():
    trigger = generate_triggers(20, (64,), 256, seed=2, kind="prompts")
    table = {tuple(x.tolist()): y for x, y in zip(trigger.inputs, trigger.labels)}

    class Memorised(nn.Module):
        def forward(self, ids):
            answers = torch.stack([table[tuple(x.tolist())].clamp(min=0) for x in ids])
            return nn.functional.one_hot(answers, 256).float().transpose(1, 2)

    report = verify_blackbox(Memorised(), trigger)
    assert report.trigger_matches == trigger.scored == 160 and report.verified


def test_trigger_kinds_that_do_not_fit_text_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="use prompts"):
        generate_triggers(4, (64,), 256, seed=0, kind="noise")
    with pytest.raises(DatasetError, match="does not fit"):
        generate_triggers(4, (1, 28, 28), 10, seed=0, kind="prompts")
    with pytest.raises(DatasetError, match="--trigger prompts"):
        load_trigger_folder(tmp_path, (64,), 256, None)


def test_accuracy_and_perplexity_skip_unscored_labels():
    class Uniform(nn.Module):
        def forward(self, ids):
            return torch.zeros(len(ids), 256, ids.shape[1])

    ids = torch.randint(0, 256, (4, 16))
    labels = ids.clone()
    labels[:, :8] = UNSCORED
    assert perplexity(Uniform(), TensorDataset(ids, labels)) == pytest.approx(256.0, rel=1e-5)
    assert accuracy(_Copy(), TensorDataset(ids, labels)) == 1.0


def _pydocs_head(monkeypatch, train: int, test: int) -> None:
    """Register ``pydocs-head``: the corpus' first ``train`` training and ``test`` test windows."""
    from dataclasses import replace

    from passportnorm.data.registry import DATASETS

    def loader(data_dir=None, seed=0):
        full = load_dataset("pydocs", seed=seed)
        head = lambda split, n: TensorDataset(*(t[:n] for t in split.tensors))  # noqa: E731
        return replace(full, name="pydocs-head", train=head(full.train, train), test=head(full.test, test))

    DATASETS.names()  # the built-in entries first
    monkeypatch.setitem(DATASETS._entries, "pydocs-head", loader)
    monkeypatch.setitem(DATASETS._traits, "pydocs-head", {"task": "text"})


def test_a_language_model_run_trains_keys_and_verifies_through_the_pipeline(tmp_path, monkeypatch):
    """The plumbing on 256 windows, two epochs: too short to clear the accuracy floor, so no verdict
    is asked for here (the slow test below asks for it); bits, triggers, perplexity and the key are."""
    from passportnorm.key import OwnerKey
    from passportnorm.pipeline import RunOptions, run_protect, run_verify

    _pydocs_head(monkeypatch, 256, 64)
    opts = RunOptions(dataset="pydocs-head", width=0.0625, epochs=2, batch_size=16, trigger_count=10, secret_seed=0,
                      out=str(tmp_path / "owner"))
    metrics = run_protect(opts)
    assert metrics["settings"]["arch"] == "gpt" and metrics["settings"]["trigger"] == "prompts"
    assert metrics["verification"]["signature_detection"] == 1.0 and metrics["verification"]["trigger_count"] == 80
    assert 1.0 < metrics["history"][-1]["passport_free_perplexity"] < 300
    key = OwnerKey.load(tmp_path / "owner" / "owner-key")
    assert key.trigger.scored == 80 and key.trigger.inputs.dtype == torch.long
    report = run_verify(tmp_path / "owner" / "released", tmp_path / "owner" / "owner-key")
    assert report.signature_detection == 1.0 and report.trigger_count == 80


TEXT_RUN = ["--dataset", "pydocs-head", "--arch", "gpt", "--width", "0.125", "--epochs", "4", "--batch-size", "64",
            "--lr", "0.005", "--trigger-count", "10", "--secret-seed", "0"]


@pytest.mark.slow
def test_the_cli_protects_a_language_model_and_verifies_only_its_own(tmp_path, capsys, monkeypatch):
    _pydocs_head(monkeypatch, 2048, 128)
    owner, plain = tmp_path / "owner", tmp_path / "plain"
    assert main(["protect", *TEXT_RUN, "--out", str(owner)]) == 0
    metrics = json.loads((owner / "metrics.json").read_text())
    assert metrics["verification"]["verified"] and metrics["verification"]["signature_detection"] == 1.0
    assert main(["train", *train_args(TEXT_RUN), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["verify", "--model", str(plain / "released"), "--key", str(owner / "owner-key"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verified"] is False


@pytest.mark.parametrize("lie", ["nothing scored", "beyond the vocabulary"])
def test_a_key_whose_prompt_labels_were_edited_is_refused_in_one_line(tmp_path, lie):
    from passportnorm.errors import OwnerKeyError
    from passportnorm.key import OwnerKey, extract_key

    model = zoo.build("gpt", in_channels=64, num_classes=256, width=0.0625)
    protected = pn.protect(model, torch.randint(0, 256, (2, 64)), seed=0)
    trigger = generate_triggers(4, (64,), 256, seed=1, kind="prompts")
    if lie == "nothing scored":
        trigger.labels[:] = UNSCORED  # would score 0 answers: a verdict on nothing
    else:
        trigger.labels[trigger.labels != UNSCORED] = 256
    extract_key(protected, trigger=trigger).save(tmp_path / "key")
    with pytest.raises(OwnerKeyError, match="trigger.labels: labels must be classes 0..255"):
        OwnerKey.load(tmp_path / "key")


def test_flipping_a_public_transformer_to_spell_a_signature_claims_nothing():
    """The lie of test_lying_parties on a pre-norm decoder: take public P, flip every consumer-paired
    channel whose response has the wrong sign (negate the norm's gain and its readers' columns: the
    function stays), publish that as one's release with a key naming no ancestor. Reading P against
    it, alignment negates nothing back, because P's gains are positive (DESIGN.md 3a)."""
    import copy
    import warnings

    from passportnorm.consumer_channels import norm_readers, scale_channels
    from passportnorm.key import extract_key
    from passportnorm.verify import verify

    torch.manual_seed(0)
    public = zoo.build("gpt", in_channels=64, num_classes=256, width=0.0625).eval()
    ids, labels = (t[:16] for t in load_dataset("pydocs").test.tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        claimant = pn.protect(copy.deepcopy(public), ids[:4], signature="(c) M", seed=7)
    modules = dict(claimant.named_modules())
    with torch.no_grad():
        for path, branch in pn.protected_layers(claimant).items():
            g = branch.passport_responses()[0].detach()
            factor = torch.where(branch.signature.to(g.dtype) * g < 0, -1.0, 1.0).double()
            readers = [modules[reader] for reader in norm_readers(claimant, ids[:2], path)]
            scale_channels(modules[path], readers, factor)
    key, release = extract_key(claimant), pn.strip(claimant).eval()
    with torch.no_grad():
        torch.testing.assert_close(release(ids), public(ids), rtol=1e-4, atol=1e-4)  # the same function
    assert verify(release, key).signature_detection == 1.0  # the claimant's release spells the bits
    report = verify(public, key, reference=release, data=TensorDataset(ids, labels))
    assert report.alignment["flipped"] == 0 and not report.verified
    assert report.signature_detection < 0.65, report.signature_detection


def test_inspect_shows_the_gpt_norms_and_bad_text_options_are_one_line(capsys, tmp_path):
    assert main(["inspect", "--arch", "gpt"]) == 0
    assert "9 protectable norm layers, 1152 channels" in capsys.readouterr().out
    for bad, culprit in ((["--trigger", "noise"], "use prompts"), (["--points", "100"], "holds text data"),
                         (["--arch", "resnet18"], "use --arch gpt")):
        assert main(["protect", "--dataset", "pydocs", *bad, "--out", str(tmp_path / "x")]) == 2
        assert culprit in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written
