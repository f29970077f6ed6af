"""Each party of the protocol lies the way docs/SECURITY.md ("Threat model") lists; none is named owner.

Issue 33: a retrofit claimant who claims the public model it started from (and every stranger's
fine-tune of it), a thief who backdates a certificate, a thief who labels a trigger set with the
stolen model's own answers, and a verifier whose flag changed the evidence.
"""

import copy
import dataclasses
import json
import warnings
from itertools import product

import pytest
import torch

import passportnorm as pn
from passportnorm.certificate import Certificate
from passportnorm.channels import flip_channels
from passportnorm.cli import main
from passportnorm.data.triggers import TriggerSet, generate_triggers
from passportnorm.dispute import Claim, dispute
from passportnorm.errors import CertificateError, OwnerKeyError
from passportnorm.key import OwnerKey, extract_key
from passportnorm.release import load_released
from passportnorm.verdict import VerdictRule
from passportnorm.verify import verify

COMMON = ["--dataset", "digits", "--arch", "resnet18", "--batch-size", "32"]


@pytest.fixture(scope="module")
def ancestry(tmp_path_factory):
    """P: a public model trained plain; O: P retrofitted by a claimant (`protect --weights`);
    S: a stranger's fine-tune of P, which never saw O."""
    root = tmp_path_factory.mktemp("ancestry")
    assert main(["train", *COMMON, "--epochs", "3", "--seed", "0", "--out", str(root / "P")]) == 0
    weights = str(root / "P" / "released" / "model.safetensors")
    assert main(["protect", *COMMON, "--epochs", "2", "--secret-seed", "0", "--weights", weights,
                 "--trigger-count", "20", "--out", str(root / "O")]) == 0
    assert main(["train", *COMMON, "--epochs", "1", "--seed", "1", "--weights", weights, "--lr", "0.01",
                 "--out", str(root / "S")]) == 0
    return root


def _verify(root, suspect, *flags):
    return main(["verify", "--model", str(root / suspect / "released"), "--key", str(root / "O" / "owner-key"),
                 "--json", *flags])


FLAGS = list(product([[], ["--no-data"]], [[], ["--reference", "O/released"]], [[], ["--ancestor", "P/released"]],
                     [[], ["--max-p-value", "0.5", "--security-bits", "1"]]))


@pytest.mark.parametrize("suspect", ["P", "S"])
def test_a_retrofit_key_never_verifies_its_ancestor_nor_a_strangers_finetune(ancestry, capsys, suspect):
    for data, reference, ancestor, lax in FLAGS:
        flags = [str(ancestry / f) if "/" in f else f for f in [*data, *reference, *ancestor, *lax]]
        assert _verify(ancestry, suspect, *flags) == 1, (suspect, flags)
        report = json.loads(capsys.readouterr().out)
        assert report["signature_detection"] < 0.6, (suspect, flags, report["signature_detection"])


def test_the_retrofit_owner_verifies_only_with_the_ancestor_it_records(ancestry, capsys):
    assert _verify(ancestry, "O", "--ancestor", str(ancestry / "P" / "released")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ancestor"]["given"] and not report["ancestor"]["signature_shows"]
    assert _verify(ancestry, "O") == 1  # the same evidence, but nothing rules out the ancestor
    report = json.loads(capsys.readouterr().out)
    assert any(r.startswith("not decidable") for r in report["failed_conditions"])
    key = OwnerKey.load(ancestry / "O" / "owner-key")
    released = json.loads((ancestry / "O" / "released" / "model.json").read_text())
    assert key.ancestor.weights_sha256 == released["ancestor_weights_sha256"]
    # a weights file is an ancestor too; another model is refused in one line, before anything is read
    assert _verify(ancestry, "O", "--ancestor", str(ancestry / "P" / "released" / "model.safetensors")) == 0
    capsys.readouterr()
    assert _verify(ancestry, "O", "--ancestor", str(ancestry / "S" / "released")) == 2
    assert "the key records" in capsys.readouterr().err


def test_a_from_scratch_key_refuses_an_ancestor_flag(ancestry):
    """A verifier's flag must not change what the evidence is: a key with no ancestor takes none
    (a thief could otherwise hand in a copy of the owner's release as "the ancestor")."""
    key = OwnerKey.load(ancestry / "O" / "owner-key")
    plain = OwnerKey(key.tensors, dataclasses.replace(key.manifest, ancestor=None))
    released = load_released(ancestry / "O" / "released")[0]
    with pytest.raises(OwnerKeyError, match="records none"):
        verify(released, plain, ancestor=released)


def test_the_attacks_decide_a_retrofit_owner_with_its_ancestor(ancestry, tmp_path, capsys):
    out = tmp_path / "pruned"
    base = ["attack", "prune", "--model", str(ancestry / "O" / "released"), "--key",
            str(ancestry / "O" / "owner-key"), "--rates", "0.1"]
    assert main([*base, "--out", str(out), "--ancestor", str(ancestry / "P" / "released")]) == 0
    assert json.loads((out / "result.json").read_text())["rows"][0]["verified"] is True
    assert main([*base, "--out", str(tmp_path / "blind")]) == 0
    assert json.loads((tmp_path / "blind" / "result.json").read_text())["rows"][0]["verified"] is False


# --- a claimant who flips a public model's channels to spell their bits, and records no ancestor ---


def _trained_cnn():
    from passportnorm import zoo
    from passportnorm.data import load_dataset
    from passportnorm.train import TrainConfig, Trainer

    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = zoo.build("small_cnn", width=1.0)
    Trainer(model, data, TrainConfig(epochs=2, batch_size=32)).fit()
    return data, model.eval()


def test_flipping_a_public_model_to_spell_a_signature_claims_nothing():
    """The lie: take public P, flip every BatchNorm channel whose response has the wrong sign (free:
    the function stays), publish the result as one's own release with a key that names no ancestor.
    Alignment would undo the flips when reading P; it does not, because P's gains are positive."""
    data, public = _trained_cnn()
    x = data.test.tensors[0][:64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        claimant = pn.protect(copy.deepcopy(public), data.train.tensors[0][:8], signature="(c) M", seed=7,
                              weak_layers="skip")
    for branch in pn.protected_layers(claimant).values():
        g = branch.passport_responses()[0].detach()
        flips = branch.signature.to(g.dtype) * g < 0
        flip_channels(branch.producer, branch.norm, 1.0 - 2.0 * flips.float())
    key, release = extract_key(claimant), pn.strip(claimant).eval()
    torch.testing.assert_close(release(x), public(x), rtol=1e-4, atol=1e-4)  # the same function
    assert verify(release, key).signature_detection == 1.0  # the claimant's release spells the bits
    for data_given in (None, data.test):
        report = verify(public, key, data=data_given, reference=release)
        assert report.alignment["used"], report.alignment  # P is matched to the release ...
        assert report.alignment["flipped"] == 0  # ... but no positive gain is negated back
        assert not report.verified and report.signature_detection < 0.65, report.signature_detection


# --- times, certificates and trigger labels ---


def _labelled_by(model: torch.nn.Module, triggers: TriggerSet) -> TriggerSet:
    with torch.no_grad():
        labels = model.eval()(triggers.inputs).argmax(1)
    return TriggerSet(triggers.inputs, labels, triggers.num_classes, "labelled by the stolen model")


@pytest.fixture(scope="module")
def trigger_only_claims():
    """Two text-signature claims (whose bits a dispute never counts) on one model, each with a
    trigger set labelled by that model's answers: only time can tell them apart."""
    data, model = _trained_cnn()
    claims = []
    for name, seed in (("alice", 1), ("bob", 2)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            protected = pn.protect(copy.deepcopy(model), data.train.tensors[0][:8], signature=f"(c) {name}",
                                   seed=seed, weak_layers="skip", signature_mode="text")
        triggers = _labelled_by(model, generate_triggers(40, (1, 8, 8), 10, seed=seed))
        key = extract_key(protected, trigger=triggers)
        claims.append(Claim(name, key, Certificate.issue(key, model), model))
    return model, claims


def test_a_backdated_certificate_orders_nothing(trigger_only_claims):
    model, (alice, bob) = trigger_only_claims
    for date in ("2001-01-01T00:00:00+00:00", "1970-01-01T00:00:00Z", "2001-01-01T00:00:00-12:00"):
        backdated = Claim("bob", bob.key, Certificate(**{**bob.certificate.__dict__, "created_utc": date}), model)
        for first, second in ((alice, backdated), (backdated, alice)):
            result = dispute(model, first, second)
            assert result.winner is None and result.decided_by.startswith("undecided"), result.to_markdown()
            assert "no attested times" in result.decided_by


def test_unparseable_certificate_times_are_one_line(tmp_path, trigger_only_claims, capsys):
    _, (alice, _) = trigger_only_claims
    for date in ("yesterday", "2001-01-01T00:00:00", "", "2001-13-01T00:00:00+00:00"):
        path = tmp_path / "certificate.json"
        path.write_text(json.dumps({**alice.certificate.__dict__, "created_utc": date, "timestamp_token": None}))
        with pytest.raises(CertificateError, match="created_utc"):
            Certificate.load(path)


def _local_tsa():
    """The tests' RFC 3161 authority: needs the timestamp extra and asn1crypto (the test extra)."""
    pytest.importorskip("rfc3161_client", reason="the timestamp extra is not installed: pip install 'passportnorm[timestamp]'")
    pytest.importorskip("asn1crypto", reason="the test extra is not installed: pip install 'passportnorm[test]'")
    import tsa

    return tsa


def test_attested_times_decide_and_a_claimants_own_tsa_attests_nothing(tmp_path, trigger_only_claims):
    TestAuthority = _local_tsa().TestAuthority

    model, (alice, bob) = trigger_only_claims
    trusted = TestAuthority("trusted TSA").at(pn_time("2026-01-01T00:00:00+00:00"))
    mallory = TestAuthority("Bob's own TSA").at(pn_time("2001-01-01T00:00:00+00:00"))
    alice_certified = Claim("alice", alice.key, _stamped(alice.certificate, trusted), model)
    bob_certified = Claim("bob", bob.key, _stamped(bob.certificate, trusted.later(days=30)), model)
    roots = [trusted.root]
    for first, second in ((alice_certified, bob_certified), (bob_certified, alice_certified)):
        result = dispute(model, first, second, tsa_roots=roots)
        assert result.winner == "alice" and "earlier attested" in result.decided_by, result.to_markdown()
    # Bob stamps his certificate at 2001 with a TSA he runs himself: the verifier does not trust it
    self_made = Claim("bob", bob.key, _stamped(bob.certificate, mallory), model)
    result = dispute(model, alice_certified, self_made, tsa_roots=roots)
    assert result.winner is None and any("does not verify" in n for n in result.notes), result.to_markdown()
    # a token lifted from Alice's certificate onto Bob's attests Bob's digests at no time
    lifted = Claim("bob", bob.key, Certificate(**{**bob.certificate.__dict__,
                                                   "timestamp_token": alice_certified.certificate.timestamp_token}),
                   model)
    result = dispute(model, alice_certified, lifted, tsa_roots=roots)
    assert result.winner is None and any("Mismatch between messages" in n for n in result.notes)
    # Bob trusted too: his own root would back his 2001 claim, so a verifier must choose roots with care
    result = dispute(model, alice_certified, self_made, tsa_roots=[*roots, mallory.root])
    assert result.winner == "bob"


def pn_time(text):
    from datetime import datetime

    return datetime.fromisoformat(text)


def _stamped(certificate: Certificate, authority) -> Certificate:
    from rfc3161_client import TimestampRequestBuilder

    request = TimestampRequestBuilder().data(certificate.commitment()).cert_request(cert_request=True).build()
    return certificate.with_token(authority.stamp(request.as_bytes()))


def test_a_thief_who_labels_triggers_with_the_stolen_model_loses_whatever_the_dates(digits_owner):
    """Bob takes Alice's release, builds a key with fresh passports and a trigger set labelled by
    the release's own answers, certifies the same weights and backdates. Alice's hash-bound bits
    show up in Bob's release; Bob's do not show up in Alice's: derivation decides, not time."""
    data, released, alice_key = digits_owner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stolen = pn.protect(copy.deepcopy(released), data.train.tensors[0][:8], signature="(c) Bob", seed=11,
                            weak_layers="skip", passports="random")
    bob_key = extract_key(stolen, trigger=_labelled_by(released, generate_triggers(40, (1, 8, 8), 10, seed=5)))
    alice = Claim("alice", alice_key, Certificate.issue(alice_key, released), released)
    bob_certificate = Certificate(**{**Certificate.issue(bob_key, released).__dict__,
                                     "created_utc": "2001-01-01T00:00:00+00:00"})
    bob = Claim("bob", bob_key, bob_certificate, copy.deepcopy(released))
    for first, second in ((alice, bob), (bob, alice)):
        result = dispute(released, first, second)
        assert result.winner == "alice", result.to_markdown()
        assert "hash-bound bits also show up in bob's" in result.decided_by


# --- one measurement discipline ---


def test_trigger_answers_do_not_depend_on_data_or_the_models_mode(trigger_only_claims):
    model, (alice, _) = trigger_only_claims
    from passportnorm.data import load_dataset

    test = load_dataset("digits", seed=0).test
    answers = set()
    for mode, given in product(("train", "eval"), (None, test)):
        suspect = copy.deepcopy(model).train(mode == "train")
        report = verify(suspect, alice.key, data=given, trigger=alice.key.trigger,
                        rule=VerdictRule(allow_text_signatures=True))
        answers.add((report.trigger_matches, report.signature_matches))
        assert suspect.training == (mode == "train")  # the caller's model is left as it was
    assert len(answers) == 1, answers
    rows = {r["trigger_matches"] for r in dispute(copy.deepcopy(model).train(), alice, alice_renamed(alice)).rows}
    assert rows == {next(iter(answers))[0]}


def alice_renamed(claim: Claim) -> Claim:
    return Claim(f"{claim.name} again", claim.key, claim.certificate, claim.released)


def test_certify_with_a_tsa_and_offline_and_dispute_reads_the_attested_time(ancestry, tmp_path, capsys):
    """The CLI end to end against a real RFC 3161 exchange with a local TSA (its own test CA)."""
    tsa = _local_tsa()
    TestAuthority, TSAServer = tsa.TestAuthority, tsa.TSAServer

    authority = TestAuthority()
    root = authority.root_pem(tmp_path / "root.pem")
    owner = ["--key", str(ancestry / "O" / "owner-key"), "--model", str(ancestry / "O" / "released"), "--no-data",
             "--ancestor", str(ancestry / "P" / "released")]
    with TSAServer(authority) as server:
        assert main(["certify", *owner, "--out", str(tmp_path / "online.json"), "--tsa", server.url]) == 0
    online = Certificate.load(tmp_path / "online.json")
    assert online.attested_utc([authority.root])[0] == authority.clock.replace(microsecond=0)
    # offline: the commitment out, a token made elsewhere, the token in
    assert main(["certify", *owner, "--out", str(tmp_path / "x.json"), "--commitment-out",
                 str(tmp_path / "commitment.bin")]) == 0
    assert not (tmp_path / "x.json").exists()
    from rfc3161_client import TimestampRequestBuilder

    request = TimestampRequestBuilder().data((tmp_path / "commitment.bin").read_bytes()).build()
    (tmp_path / "reply.tsr").write_bytes(authority.later(hours=1).stamp(request.as_bytes()))
    assert main(["certify", *owner, "--out", str(tmp_path / "offline.json"), "--tsa-token",
                 str(tmp_path / "reply.tsr")]) == 0
    assert Certificate.load(tmp_path / "offline.json").attested_utc([authority.root])[0] == authority.clock.replace(
        microsecond=0)
    capsys.readouterr()
    # a token over other bytes, an unreachable TSA: one line each, exit 2, nothing written
    (tmp_path / "other.tsr").write_bytes(authority.stamp(TimestampRequestBuilder().data(b"x").build().as_bytes()))
    assert main(["certify", *owner, "--out", str(tmp_path / "bad.json"), "--tsa-token",
                 str(tmp_path / "other.tsr")]) == 2
    assert "other data" in capsys.readouterr().err
    assert main(["certify", *owner, "--out", str(tmp_path / "bad.json"), "--tsa", "http://127.0.0.1:9/tsa"]) == 2
    assert "no time-stamp response" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
    # verify states the attested time only under a root the verifier names
    args = ["verify", "--model", str(ancestry / "O" / "released"), "--key", str(ancestry / "O" / "owner-key"),
            "--ancestor", str(ancestry / "P" / "released"), "--certificate", str(tmp_path / "online.json"),
            "--no-data", "--json"]
    assert main([*args, "--tsa-root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["certificate"]["attested time"].startswith(str(online.created_utc)[:4])
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["certificate"]["attested time"].startswith("none: no TSA root")


# --- owner-chosen trigger labels: a measured null, not 1/num_classes ---


def _digit_folder(folder, labels_of):
    """60 held-out digits as PNGs with labels.csv (the label a function of the true class)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir()
    lines = []
    for i in range(1500, 1560):
        Image.fromarray((digits.images[i] * 15.9).astype("uint8")).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{labels_of(int(digits.target[i]))}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_natural_images_with_their_own_labels_prove_nothing_against_the_measured_null(tmp_path):
    """The lie: a claimant picks natural images labelled with their true class; any model of the
    task answers them, so against 1/10 an independent model "proves" the claim."""
    from passportnorm.data import load_dataset
    from passportnorm.data.triggers import load_trigger_folder
    from passportnorm.verdict import binomial_p_value
    from passportnorm.verify import verify_blackbox

    data, independent = _trained_cnn()
    triggers = load_trigger_folder(_digit_folder(tmp_path / "true", lambda y: y), (1, 8, 8), 10,
                                   load_dataset("digits", seed=0).normalize, seed=3)
    report = verify_blackbox(independent, triggers)
    assert report.trigger_matches >= 0.8 * report.trigger_count  # the independent model answers them
    assert binomial_p_value(report.trigger_matches, report.trigger_count, 0.1) < 1e-6  # the old null
    assert not report.verified and report.trigger_chance > 0.7, (report.trigger_chance, report.trigger_null)
    assert "held-out controls" in report.trigger_null


def test_owner_chosen_labels_a_model_learned_are_still_evidence(tmp_path):
    from passportnorm import zoo
    from passportnorm.data import load_dataset
    from passportnorm.data.triggers import load_trigger_folder
    from passportnorm.train import TrainConfig, Trainer
    from passportnorm.verify import verify_blackbox

    data = load_dataset("digits", seed=0)
    triggers = load_trigger_folder(_digit_folder(tmp_path / "shifted", lambda y: (y + 3) % 10), (1, 8, 8), 10,
                                   data.normalize, seed=3)
    torch.manual_seed(0)
    owner = zoo.build("small_cnn", width=1.0)
    Trainer(owner, data, TrainConfig(epochs=8, batch_size=32, triggers_per_batch=8), trigger=triggers).fit()
    report = verify_blackbox(owner, triggers)
    assert report.verified, (report.trigger_matches, report.trigger_chance, report.trigger_null)
    assert report.trigger_chance < 0.25  # the controls, never trained on, rarely take the shifted labels
    _, independent = _trained_cnn()
    assert not verify_blackbox(independent, triggers).verified


def test_permuting_a_public_model_to_spell_a_signature_claims_nothing(ancestry, capsys):
    """The lie alignment cannot refuse to undo: a permutation leaves no trace of who made it, so the
    public model read through the claimant's release reads the claimant's bits where it permuted.
    Those layers are not counted; the layers no permutation touched read the public model at chance."""
    from passportnorm.attacks.spell import spell_by_rearranging
    from passportnorm.data import load_dataset

    public = load_released(ancestry / "P" / "released")[0].eval()
    example = load_dataset("digits", seed=0).train.tensors[0][:8]
    release, key = spell_by_rearranging(public, example, "permute")
    torch.testing.assert_close(release(example), public(example), rtol=1e-4, atol=1e-4)
    for data_given in (None, load_dataset("digits", seed=0).test):
        report = verify(public, key, data=data_given, reference=release)
        assert report.alignment["used"] and report.alignment["rearranged"]
        read = [report.per_layer[path] for path in report.alignment["rearranged"] if path in report.per_layer]
        assert max(read) >= 0.95  # where it permuted, the forgery spells its bits (a near-tie of two filters
        # can swap one pair back: 31/32 with one thread per process) ...
        assert not report.verified and report.signature_detection < 0.6  # ... and there only
    # the command: one row per rearrangement, neither verified
    out = ancestry / "spelled"
    assert main(["attack", "spell", "--model", str(ancestry / "P" / "released"), "--key",
                 str(ancestry / "O" / "owner-key"), "--out", str(out)]) == 0
    rows = json.loads((out / "result.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["flip", "permute", "stream"]
    assert not any(r["verified_through_release"] for r in rows)
    assert rows[-1]["stream_permuted_back"] is None  # a CNN has no residual stream to reorder


def test_an_obfuscated_resnet_copy_is_still_the_owners(ancestry, tmp_path, capsys):
    """What the uncounted layers cost the owner on a ResNet: the layers that feed residual additions
    cannot be permuted alone, so they still carry the claim after a full obfuscation."""
    out = tmp_path / "hidden"
    assert main(["attack", "obfuscate", "--model", str(ancestry / "O" / "released"), "--key",
                 str(ancestry / "O" / "owner-key"), "--out", str(out), "--ancestor",
                 str(ancestry / "P" / "released")]) == 0
    capsys.readouterr()
    assert _verify(ancestry, "O", "--ancestor", str(ancestry / "P" / "released"), "--reference",
                   str(ancestry / "O" / "released"), "--no-data") == 0
    capsys.readouterr()
    code = main(["verify", "--model", str(out / "model"), "--key", str(ancestry / "O" / "owner-key"), "--json",
                 "--reference", str(ancestry / "O" / "released"), "--ancestor", str(ancestry / "P" / "released")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["alignment"]["rearranged"] and report["signature_detection"] == 1.0
    assert 128 < report["signature_bits"] < 1184
