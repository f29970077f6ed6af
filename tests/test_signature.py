import pytest
import torch

from passportnorm import Signature, SignatureCapacityError, SignatureError
from passportnorm.signature import bits_to_bytes, bytes_to_bits


@pytest.mark.parametrize("text", ["(c) Alice 2026", "", "Zhang & Chen: ünïcødé ✓ 模型"])
def test_text_round_trip(text):
    sig = Signature.from_text(text)
    assert sig.num_bits == 8 * len(text.encode("utf-8"))
    assert Signature.decode_text(sig.bits) == text
    assert sig.to_bytes().decode("utf-8") == text


def test_bits_are_msb_first_plus_minus_one():
    bits = bytes_to_bits(b"\x81")
    assert bits.tolist() == [1, -1, -1, -1, -1, -1, -1, 1]
    assert bits_to_bytes(bits) == b"\x81"


def test_from_bytes_and_bits():
    sig = Signature.from_bytes(b"\x00\xff")
    assert sig.bits.tolist() == [-1] * 8 + [1] * 8
    again = Signature.from_bits(sig.bits.float())
    assert again == sig and again.text is None


@pytest.mark.parametrize("bad", [torch.tensor([1, 0, -1]), torch.tensor([[1, -1]]), torch.tensor([0.5])])
def test_from_bits_rejects_non_sign_vectors(bad):
    with pytest.raises(SignatureError, match="signature bits must (be a 1-D vector|all be \\+1 or -1)"):
        Signature.from_bits(bad)


def test_fill_puts_message_first_then_seeded_random_bits():
    sig = Signature.from_text("ok")
    filled = sig.fill(64, seed=3)
    assert filled.shape == (64,)
    assert torch.equal(filled[:16], sig.bits)
    assert set(filled.tolist()) <= {-1, 1}
    assert torch.equal(filled, sig.fill(64, seed=3))
    assert not torch.equal(filled, sig.fill(64, seed=4))
    rest = filled[16:]
    assert 0 < int((rest > 0).sum()) < rest.numel()


def test_too_long_message_names_capacity_in_bytes():
    sig = Signature.from_text("a message of twenty b")
    with pytest.raises(SignatureCapacityError, match=r"capacity of 12 bytes"):
        sig.fill(96, seed=0)


def test_coerce_accepts_what_users_pass():
    assert Signature.coerce("hi") == Signature.from_text("hi")
    assert Signature.coerce(b"hi") == Signature.from_text("hi")
    assert Signature.coerce(None).num_bits == 0
    with pytest.raises(SignatureError, match="int"):
        Signature.coerce(42)


def test_decode_shows_damage():
    bits = Signature.from_text("AB").bits.clone()
    bits[0] = 1  # 'A' = 0x41 -> 0xC1, not valid UTF-8 on its own
    assert "\ufffd" in Signature.decode_text(bits)


def test_one_reading_of_bits_a_zero_response_matches_no_bit():
    from passportnorm.signature import claimed_bits, read_bits

    responses = torch.tensor([0.3, -2.0, 0.0, 1e-30])
    assert read_bits(responses).tolist() == [1, -1, 0, 1] and read_bits(responses).dtype == torch.int8
    assert claimed_bits(responses).tolist() == [1, -1, 1, 1]  # a claim needs +-1; its zero bit still reads 0
