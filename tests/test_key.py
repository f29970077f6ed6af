"""Owner key, certificate and released-model files: round trips, corruption, pickles, mismatches."""

import copy
import json
import pickle
import shutil
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.certificate import Certificate
from passportnorm.data.triggers import generate_triggers
from passportnorm.errors import CertificateError, ModelFileError, OwnerKeyError
from passportnorm.key import OwnerKey, attach_key, extract_key
from passportnorm.release import load_released, save_released

CONFIG = {"in_channels": 1, "num_classes": 10, "width": 0.125, "norm": "bn"}


@pytest.fixture(scope="module")
def _built(tmp_path_factory):
    """Protected once per module (the protect, the key and the files): each test gets its own copies."""
    folder = tmp_path_factory.mktemp("owner")
    torch.manual_seed(0)
    model = zoo.build("resnet18", **CONFIG)
    x = torch.randn(4, 1, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(model, x, signature="(c) K", passports="random", seed=3)
    with pn.passport_mode(protected):  # give the branch statistics something to remember
        protected.train()(torch.randn(8, 1, 16, 16))
    protected.eval()
    triggers = generate_triggers(5, (1, 16, 16), 10, seed=1)
    key = extract_key(protected, config={"dataset": "none"}, trigger=triggers)
    released = pn.strip(protected)
    key.save(folder / "key")
    save_released(released, folder / "released", "resnet18", CONFIG)
    return protected, released, key, x, folder


@pytest.fixture()
def owner(_built, tmp_path):
    protected, released, key, x, folder = _built
    for name in ("key", "released"):
        shutil.copytree(folder / name, tmp_path / name)
    return copy.deepcopy(protected), copy.deepcopy(released), copy.deepcopy(key), x.clone(), tmp_path


def test_key_round_trip_restores_the_exact_branch(owner):
    protected, released, key, x, tmp = owner
    loaded = OwnerKey.load(tmp / "key")
    assert loaded.digest() == key.digest() and loaded.identity == "(c) K" and loaded.signature_mode == "hash"
    assert loaded.bits_follow_from_passports()
    assert loaded.trigger is not None and torch.equal(loaded.trigger.labels, key.trigger.labels)
    model, meta = load_released(tmp / "released")
    assert meta["arch"] == "resnet18"
    rebuilt = attach_key(model, loaded).eval()
    assert torch.equal(rebuilt(x), protected(x))
    with pn.passport_mode(rebuilt), pn.passport_mode(protected):
        assert torch.equal(rebuilt(x), protected(x))
    assert not pn.is_protected(model), "attach_key works on a copy"
    manifest = json.loads((tmp / "key" / "key.json").read_text())
    assert manifest["sha256_released_weights"] == meta["sha256_weights"]
    assert {"passport_shape", "producer", "norm_type", "channels"} <= set(manifest["layers"][0])


def test_flipped_byte_in_key_tensors_is_detected(owner):
    *_, tmp = owner
    path = tmp / "key" / "key.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(OwnerKeyError, match="key.safetensors does not match the SHA-256 in key.json"):
        OwnerKey.load(tmp / "key")


def test_edited_manifest_is_detected(owner):
    *_, tmp = owner
    path = tmp / "key" / "key.json"
    manifest = json.loads(path.read_text())
    manifest["layers"][0]["alpha"] = 5.0
    path.write_text(json.dumps(manifest))
    with pytest.raises(OwnerKeyError, match="key hash does not match its contents"):
        OwnerKey.load(tmp / "key")


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "key.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "key.json").unlink(), "key.json is missing"),
        (lambda d: (d / "key.json").write_text(json.dumps({"format": "something"})), "is not a passportnorm owner key"),
        (lambda d: (d / "key.safetensors").write_bytes(b"\x00" * 4), "does not match the SHA-256"),
    ],
)
def test_damaged_keys_are_one_line_errors(owner, damage, message):
    *_, tmp = owner
    damage(tmp / "key")
    with pytest.raises(OwnerKeyError, match=message) as info:
        OwnerKey.load(tmp / "key")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["layers"][0].update(channels="8"), r"layers\[0\]\.channels must be int, got '8'"),
        (lambda m: m["layers"][1].pop("producer"), r"layers\[1\]\.producer is missing"),
        (lambda m: m["layers"][0].update(passport_shape=[1, 0]), r"layers\[0\]\.passport_shape must be a"),
        (lambda m: m["signature"].update(mode="rot13"), r"signature\.mode must be 'hash' or 'text', got"),
        (lambda m: m["trigger"].update(count=True), r"trigger\.count must be int, got True"),
        (lambda m: m.update(statistics_layers={}), r"statistics_layers must be list"),
    ],
)
def test_a_malformed_manifest_names_the_field(owner, edit, message):
    *_, tmp = owner
    path = tmp / "key" / "key.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(OwnerKeyError, match=message) as info:
        OwnerKey.load(tmp / "key")
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_the_manifest_is_typed_and_written_back_as_read(owner):
    *_, key, _, tmp = owner
    loaded = OwnerKey.load(tmp / "key")
    assert loaded.manifest == key.manifest  # the typed records compare equal after a round trip
    layer = loaded.layers[0]
    assert isinstance(layer.channels, int) and layer.passport_shape == tuple(key.layers[0].passport_shape)
    written = json.loads((tmp / "key" / "key.json").read_text())
    del written["sha256_key"], written["sha256_tensors"]
    assert loaded.manifest.to_dict() == written == key.manifest.to_dict()


def test_a_pickle_posing_as_key_is_never_loaded(owner, monkeypatch):
    *_, tmp = owner
    folder = tmp / "key"
    (folder / "key.safetensors").write_bytes(pickle.dumps({"x": 1}))
    manifest = json.loads((folder / "key.json").read_text())
    from passportnorm.fileio import sha256_file

    manifest["sha256_tensors"] = sha256_file(folder / "key.safetensors")  # a careful forger fixes the hash
    (folder / "key.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(OwnerKeyError, match="pickle or torch.save archive, which passportnorm never loads"):
        OwnerKey.load(folder)


def test_key_for_another_architecture_names_the_layer(owner):
    _, _, key, _, _ = owner
    wider = zoo.build("resnet18", **{**CONFIG, "width": 0.25})
    with pytest.raises(OwnerKeyError, match=r"another architecture: 'bn1' has 16 channels, the key expects 8"):
        attach_key(wider, key)
    other = zoo.build("alexnet", **CONFIG)
    with pytest.raises(OwnerKeyError, match="the model has no module"):
        attach_key(other, key)


def test_released_model_files(owner):
    _, released, _, _, tmp = owner
    folder = tmp / "released"
    torch.save(released.state_dict(), folder / "model.safetensors")  # a pickle under the right name
    with pytest.raises(ModelFileError, match="pickle or torch.save archive"):
        load_released(folder)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_released(tmp / "nothing")
    save_released(released, tmp / "r2", "resnet18", {**CONFIG, "width": 0.25})
    with pytest.raises(ModelFileError, match=r"does not fit resnet18 .*'conv1.weight' has shape"):
        load_released(tmp / "r2")
    with pytest.raises(ModelFileError, match="strip"):
        save_released(pn.protect(released, torch.randn(2, 1, 16, 16)), tmp / "r3", "resnet18", CONFIG)
    assert not (tmp / "r3").exists(), "a refused release leaves nothing behind"


def test_certificate_commits_to_key_and_release(owner):
    protected, released, key, _, tmp = owner
    cert = Certificate.issue(key, released)
    cert.save(tmp / "cert.json")
    loaded = Certificate.load(tmp / "cert.json")
    assert loaded == cert and loaded.created_utc.endswith("+00:00")
    loaded.check_key(key)
    assert loaded.matches_released(released)
    tuned = copy.deepcopy(released)
    with torch.no_grad():
        tuned.linear.bias[0] += 1e-3  # one weight moved a little: no longer the certified release
    assert not loaded.matches_released(tuned)
    other_key = extract_key(pn.protect(zoo.build("resnet18", **CONFIG), torch.randn(2, 1, 16, 16), seed=9))
    with pytest.raises(CertificateError, match="it is not the certified key"):
        loaded.check_key(other_key)
    (tmp / "bad.json").write_text("[]")
    with pytest.raises(CertificateError, match="is not a passportnorm certificate"):
        Certificate.load(tmp / "bad.json")


def test_a_key_of_another_scheme_is_one_line(owner, capsys):
    import dataclasses

    from passportnorm.cli import main

    *_, key, _, tmp = owner
    layers = tuple(dataclasses.replace(layer, branch="uchida-2017") for layer in key.layers)
    OwnerKey(key.tensors, dataclasses.replace(key.manifest, layers=layers)).save(tmp / "other")
    assert main(["verify", "--model", str(tmp / "released"), "--key", str(tmp / "other"), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "uses branch kind 'uchida-2017', which this version cannot rebuild" in err and err.count("\n") == 1


def test_the_key_is_never_readable_by_others_while_it_is_written(owner, monkeypatch):
    """Issue 33: the staging folder was 0755 until just before the rename, so the key's files could
    be read while they were written. Now it is owner-only from its first moment."""
    import os
    import stat

    import passportnorm.key as key_module

    _, _, key, _, tmp = owner
    seen = []
    real = key_module.save_tensors

    def watching(tensors, path, **kwargs):
        seen.append(stat.S_IMODE(os.stat(path.parent).st_mode))
        return real(tensors, path, **kwargs)

    monkeypatch.setattr(key_module, "save_tensors", watching)
    key.save(tmp / "fresh-key")
    assert seen == [0o700]
    assert stat.S_IMODE(os.stat(tmp / "fresh-key").st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in (tmp / "fresh-key").iterdir())


def test_a_changed_key_file_is_reported_for_what_the_check_shows(owner):
    """The hash check shows that a file changed since the key was written, not who changed it or how."""
    *_, tmp = owner
    path = tmp / "key" / "key.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(OwnerKeyError, match="cannot tell which") as info:
        OwnerKey.load(tmp / "key")
    assert "corrupted" not in str(info.value) and "altered" not in str(info.value)


def test_a_trigger_set_with_owner_labels_keeps_its_controls_through_the_key(owner):
    from passportnorm.data.triggers import LABELS_CHOSEN, TriggerSet

    protected, _, _, _, tmp = owner
    chosen = TriggerSet(torch.randn(4, 1, 16, 16), torch.tensor([1, 2, 3, 4]), 10, "folder:x", LABELS_CHOSEN,
                        torch.randn(3, 1, 16, 16), torch.tensor([5, 6, 7]))
    extract_key(protected, trigger=chosen).save(tmp / "chosen")
    loaded = OwnerKey.load(tmp / "chosen").trigger
    assert loaded.labels_from == LABELS_CHOSEN and torch.equal(loaded.control_labels, chosen.control_labels)
    assert torch.equal(loaded.controls, chosen.controls) and len(loaded) == 4
    # every new key says where its trigger labels came from (older keys: key.py infers it from the source)
    manifest = json.loads((tmp / "key" / "key.json").read_text())
    assert "labels_from" in manifest["trigger"]
