"""Issue 7: hash-bound signatures, claim strength, forged and edited claims, alignment, disputes."""

import copy
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.attacks.forge import forge_key
from passportnorm.attacks.obfuscate import obfuscate
from passportnorm.binding import hash_bound_bits, log10_forgery_chance, required_matches
from passportnorm.certificate import Certificate
from passportnorm.dispute import Claim, dispute
from passportnorm.errors import PassportWarning, SignatureError
from passportnorm.align import align_to_reference
from passportnorm.key import OwnerKey, extract_key
from passportnorm.train import TrainConfig, Trainer
from passportnorm.verify import VerdictRule, verify


def _layers(model):
    return [(p, l.passport_gamma, l.passport_beta) for p, l in pn.protected_layers(model).items()]


def test_hash_bound_bits_change_completely_when_one_passport_value_changes():
    model = pn.protect(zoo.build("small_cnn", width=1.0), torch.randn(4, 1, 12, 12), signature="(c) A", weak_layers="skip", seed=0)
    layers = _layers(model)
    bits = torch.cat([l.signature for l in pn.protected_layers(model).values()])
    assert torch.equal(hash_bound_bits("(c) A", layers, len(bits)), bits)  # protect stored exactly the hash
    nudged = [(p, g.clone(), b.clone()) for p, g, b in layers]
    nudged[-1][1].view(-1)[7] += 1e-6  # one float of one passport
    changed = (hash_bound_bits("(c) A", nudged, len(bits)) != bits).float().mean()
    other_identity = (hash_bound_bits("(c) B", layers, len(bits)) != bits).float().mean()
    assert 0.4 < changed < 0.6 and 0.4 < other_identity < 0.6


def test_claim_strength_and_small_claims():
    assert required_matches(128, 2.0**-128) == 128 and required_matches(127, 2.0**-128) == 128  # 128 cannot be reached
    assert log10_forgery_chance(127, 2.0**-128) == float("-inf")
    assert -39 < log10_forgery_chance(1184, 2.0**-128) <= -38.5
    with pytest.warns(PassportWarning, match="only 96 hash-bound signature bits"):
        pn.protect(zoo.build("small_cnn", width=0.5), torch.randn(4, 1, 12, 12), weak_layers="skip")
    with pytest.raises(SignatureError, match="take the owner's identity as text"):
        pn.protect(zoo.build("small_cnn"), torch.randn(4, 1, 12, 12), signature=b"\x01")


def test_owner_claim_states_its_strength(digits_owner):
    data, released, key = digits_owner
    report = verify(released, key, data=data.test)
    assert report.verified and report.signature_mode == "hash" and report.bits_follow_from_passports
    assert report.identity == "(c) A" and report.required_matches == required_matches(key.total_bits, 2.0**-128)
    text = report.to_markdown()
    assert "hash-bound" in text and "chance a forgery try reaches them" in text


def test_a_key_with_edited_bits_is_rejected_not_an_error(digits_owner):
    data, released, key = digits_owner
    edited = OwnerKey({k: v.clone() for k, v in key.tensors.items()}, key.manifest)
    first = key.layers[0].norm
    edited.tensors[f"{first}.signature"][:5] *= -1
    report = verify(released, edited, data=data.test)
    assert not report.verified and not report.bits_follow_from_passports
    assert report.reasons[0].startswith("key rejected: its signature bits are not the hash")


def test_closed_form_forgery_is_rejected(digits_owner):
    data, released, key = digits_owner
    example = data.train.tensors[0][:8]
    forged, info = forge_key(released, example, signature="(c) Mallory", signature_mode="hash", rounds=5)
    assert len(info["agreement_per_round"]) == 5 and info["best_agreement"] < 0.65  # no better than chance
    report = verify(released, forged, data=data.test)
    assert report.bits_follow_from_passports and not report.verified
    # the paper's text signatures: forged in closed form, accepted only when the verifier opts in
    text_key, _ = forge_key(released, example, signature="(c) Mallory", signature_mode="text")
    assert not verify(released, text_key, data=data.test).verified
    permissive = verify(released, text_key, data=data.test, rule=VerdictRule(allow_text_signatures=True))
    assert permissive.verified and permissive.decoded_text == "(c) Mallory"


def test_alignment_recovers_the_owner_after_flip_rescale_and_counts_no_permuted_bits(digits_owner):
    data, released, key = digits_owner
    example = data.train.tensors[0][:8]
    hidden, changed = obfuscate(released, example, permute=False, flip=0.5, rescale=(0.5, 2.0), seed=4)
    assert sum(changed["flipped"].values()) > 0
    assert not verify(hidden, key, data=data.test).verified
    report = verify(hidden, key, data=data.test, reference=released)
    assert report.verified and report.signature_detection == verify(released, key, data=data.test).signature_detection
    assert report.alignment["flipped"] == sum(changed["flipped"].values())  # every flip undone
    assert min(report.alignment["confidence"].values()) > 0.999
    # permuted too: on this conv chain every protected layer can move with its one consumer, so a
    # permuted copy and a public model permuted to spell someone's bits look alike (attack spell);
    # the layers the alignment permutes back are not counted, and no bit is left to decide
    shuffled, changed = obfuscate(released, example, permute=True, flip=0.5, rescale=(0.5, 2.0), seed=4)
    report = verify(shuffled, key, data=data.test, reference=released)
    assert set(report.alignment["rearranged"]) >= {layer.norm for layer in key.layers}
    assert report.signature_bits == 0 and not report.verified
    assert any("not counted" in reason for reason in report.reasons)


@pytest.fixture(scope="module")
def two_claims(digits_owner):
    """Alice's certified release, and Bob's: Alice's model re-protected by Bob and trained on."""
    data, alice_released, alice_key = digits_owner
    alice = Claim("alice", alice_key, Certificate.issue(alice_key, alice_released), alice_released)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # random passports: Bob's sign loss then pulls the weights in directions unrelated to Alice's
        # passports. (With activation passports like Alice's it also erases her bits: docs/SECURITY.md.)
        bob_protected = pn.protect(copy.deepcopy(alice_released), data.train.tensors[0][:8], signature="(c) Bob", seed=9,
                                   passports="random", weak_layers="skip")
    # a thief who wants to keep the accuracy trains gently (lr 0.01, as the fine-tuning attacks do)
    Trainer(bob_protected, data, TrainConfig(epochs=2, batch_size=32, lr=0.01, seed=9)).fit()
    bob_key, bob_released = extract_key(bob_protected), pn.strip(bob_protected).eval()
    bob = Claim("bob", bob_key, Certificate.issue(bob_key, bob_released), bob_released)
    return data, alice, bob


@pytest.mark.parametrize("order", ["alice first", "bob first"])
def test_dispute_picks_the_genuine_owner_in_both_orders(two_claims, order):
    data, alice, bob = two_claims
    claims = (alice, bob) if order == "alice first" else (bob, alice)
    result = dispute(bob.released, *claims, data=data.test)
    assert result.winner == "alice", result.to_markdown()
    assert "derives from alice's" in result.decided_by
    checks = {(r["claimant"], r["model"]): r["verified"] for r in result.rows}
    assert checks[("alice", "suspect")] and checks[("bob", "suspect")]
    assert checks[("alice", "bob's certified release")] and not checks[("bob", "alice's certified release")]


def test_dispute_ignores_a_claim_whose_certificate_names_another_model(two_claims):
    data, alice, bob = two_claims
    cheat = Claim("bob", bob.key, Certificate.issue(bob.key, alice.released), bob.released)  # certifies Alice's weights
    result = dispute(bob.released, cheat, alice, data=data.test)
    assert result.winner == "alice" and any("not the one the certificate commits to" in n for n in result.notes)


def test_dispute_names_with_apostrophes_and_spaces(two_claims):
    """Claimant names come from folder names (run_dispute); "O'Brien's run" must not break the bookkeeping."""
    data, alice, bob = two_claims
    obrien = Claim("O'Brien's run", alice.key, alice.certificate, alice.released)
    thief = Claim("bob 's copy", bob.key, bob.certificate, bob.released)
    result = dispute(bob.released, thief, obrien, data=data.test)
    assert result.winner == "O'Brien's run", result.to_markdown()


class _Untraceable(torch.nn.Module):
    """Data-dependent control flow in forward: torch.fx cannot trace the whole model."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.Sequential(torch.nn.Conv2d(1, 160, 3), torch.nn.BatchNorm2d(160), torch.nn.ReLU())
        self.head = torch.nn.Linear(160, 10)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 1.0
        return self.head(self.block(x).mean((2, 3)))


def test_alignment_says_when_it_cannot_trace_the_suspect():
    model = _Untraceable().eval()
    x = torch.randn(4, 1, 8, 8)
    protected = pn.protect(model, x, signature="(c) U", seed=0, weak_layers="protect")
    released, key = pn.strip(protected).eval(), extract_key(protected)
    report = verify(released, key, reference=released)
    assert report.alignment["trace_error"].startswith("TraceError")
    assert "alignment could not undo permutations" in report.to_markdown()
    # the model aligned to itself: signs and scales line up, nothing moves, the same bits are read
    assert report.alignment["used"] and report.signature_matches == verify(released, key).signature_matches


def test_alignment_leaves_layers_too_narrow_to_match_soundly():
    """A producer reading 2 values per filter has nothing outside the 2 passport directions to match on."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 160), torch.nn.BatchNorm1d(160), torch.nn.ReLU(),
                                torch.nn.Linear(160, 160), torch.nn.BatchNorm1d(160), torch.nn.Linear(160, 10)).eval()
    x = torch.randn(8, 2)
    protected = pn.protect(model, x, signature="(c) N", seed=0, weak_layers="protect")
    released, key = pn.strip(protected).eval(), extract_key(protected)
    _, report = align_to_reference(released, released, key, example_input=x)
    assert report["too_narrow"] == ["1"] and set(report["confidence"]) == {"4"}
    assert report["lowest_confidence"] > 0.999  # the layer that can be matched is, exactly
