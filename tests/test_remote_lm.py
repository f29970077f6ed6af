"""serve + verify-remote for a language model: token ids in, a next-token choice at every place out,
scored on the secret prompts' continuations only; the owner's served release verifies, an
unrelated GPT does not, and bad requests to a language model get a clear 4xx."""

import json
import warnings

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi, uvicorn, httpx) is not installed")
httpx = pytest.importorskip("httpx", reason="the 'serve' extra (fastapi, uvicorn, httpx) is not installed")

import passportnorm as pn  # noqa: E402
from passportnorm import zoo  # noqa: E402
from passportnorm.cli import main  # noqa: E402
from passportnorm.data.triggers import UNSCORED, generate_triggers  # noqa: E402
from passportnorm.key import extract_key  # noqa: E402
from passportnorm.release import save_released  # noqa: E402
from passportnorm.remote import RemoteOptions, TransportOptions, verify_remote  # noqa: E402
from passportnorm.remote.protocols import TemplateProtocol, V2Protocol  # noqa: E402
from passportnorm.serve import BackgroundServer, build_app, served_release  # noqa: E402

CONFIG = {"in_channels": 64, "num_classes": 256, "width": 0.125}
FAST = TransportOptions(timeout=10, retries=2, backoff=0.01)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An owner's GPT that learned 10 secret prompts (80 scored continuation tokens), its key, and an
    unrelated GPT of the same size; both released as pydocs models."""
    root = tmp_path_factory.mktemp("remote-lm")
    trigger = generate_triggers(10, (64,), 256, seed=7, kind="prompts")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(zoo.build("gpt", **CONFIG), trigger.inputs[:2], seed=0, signature="(c) L")
    optimizer = torch.optim.Adam(protected.parameters(), lr=0.01)
    for _ in range(150):  # the owner's continuations, learned by heart
        loss = torch.nn.functional.cross_entropy(protected(trigger.inputs), trigger.labels, ignore_index=UNSCORED)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    extract_key(protected, trigger=trigger).save(root / "owner-key")
    save_released(pn.strip(protected).eval(), root / "owner", "gpt", CONFIG, dataset="pydocs")
    save_released(zoo.build("gpt", **CONFIG).eval(), root / "unrelated", "gpt", CONFIG, dataset="pydocs")
    return root


def _verify(url, root, out, **options):
    return verify_remote(
        RemoteOptions(url=url, key=str(root / "owner-key"), out=str(out), batch_size=4, transport=FAST, **options)
    )


def test_a_served_language_model_is_verified_by_its_prompts_and_an_unrelated_one_is_not(folders, tmp_path):
    for name, expected in (("owner", True), ("unrelated", False)):
        with BackgroundServer(build_app(served_release(str(folders / name)))) as url:
            result = _verify(url, folders, tmp_path / name)
        report, control = result["report"], result["control"]
        assert result["verified"] is expected, report["reasons"]
        assert report["trigger_count"] == 80 and control["count"] == 80  # continuations only, not the prompts
        assert control["matches"] <= 5  # fresh prompts on the owner's continuations: chance is 1/256
        if expected:
            assert report["trigger_matches"] == 80 and report["trigger_log10_p_value"] < -100
        else:
            assert report["trigger_matches"] <= 5
        assert result["encoding"]["format"] == "token ids as JSON integers (exact)"
        lines = (tmp_path / name / "requests.jsonl").read_text().splitlines()
        assert len(lines) == 1 + 6  # 3 trigger and 3 control batches of at most 4 prompts
    assert "VERIFIED" in (tmp_path / "owner" / "result.md").read_text()


def test_the_language_model_server_announces_and_answers_every_place(folders):
    served = served_release(str(folders / "owner"))
    assert served.token_inputs and served.num_classes == 256 and served.pixels is None
    ids = torch.randint(0, 256, (2, 64))
    with BackgroundServer(build_app(served)) as url:
        meta = httpx.get(f"{url}/v2/models/passportnorm").json()
        assert meta["inputs"][0]["datatype"] == "INT64" and meta["inputs"][0]["shape"] == [-1, 64]
        assert meta["outputs"][0]["shape"] == [-1, 64, 256] and meta["outputs"][1]["shape"] == [-1, 64]
        answer = httpx.post(url + V2Protocol("passportnorm").request(ids).path,
                            content=V2Protocol("passportnorm").request(ids).content()).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["shape"] == [2, 64] and outputs["logits"]["shape"] == [2, 64, 256]
    with torch.no_grad():
        expected = served.model(ids).argmax(1)  # the zoo's GPT puts the vocabulary on axis 1
    assert outputs["label"]["data"] == expected.flatten().tolist()
    logits = torch.tensor(outputs["logits"]["data"]).reshape(2, 64, 256)
    assert torch.equal(logits.argmax(-1), expected)  # the answer's class axis is last
    # a client reading only the logits takes the same choices
    assert V2Protocol("passportnorm").labels({"outputs": [outputs["logits"]]}, 128) == expected.flatten().tolist()


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({"datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}, "send one of INT64, INT32 (token ids)"),
        ({"datatype": "INT64", "shape": [1, 64], "data": [300] * 64}, "outside 0..255 (the vocabulary)"),
        ({"datatype": "INT64", "shape": [1, 64], "data": [1.5] * 64}, "not integer token ids"),
        ({"datatype": "INT64", "shape": [1, 32], "data": [1] * 32}, "this model takes [batch, 64]"),
    ],
    ids=["floats", "beyond the vocabulary", "fractions", "short"],
)
def test_bad_requests_to_a_language_model_get_a_clear_400(folders, tensor, message):
    with BackgroundServer(build_app(served_release(str(folders / "owner")))) as url:
        response = httpx.post(f"{url}/v2/models/passportnorm/infer", json={"inputs": [{"name": "input", **tensor}]})
    assert response.status_code == 400 and message in response.json()["error"]


def test_a_template_api_answering_rows_of_next_tokens(folders, tmp_path):
    """Another API's shape: token ids nested, the answer as one row of choices per prompt."""
    template = TemplateProtocol({"path": "/v2/models/passportnorm/infer", "labels": "rows",
                                 "body": {"tokens": "{{inputs}}"}})
    ids = torch.randint(0, 256, (3, 64))
    assert template.request(ids).body["tokens"] == ids.tolist()  # integers, not floats
    rows = ids.tolist()
    assert template.labels({"rows": rows}, 3 * 64) == ids.flatten().tolist()
    with pytest.raises(ValueError, match="should hold 192 labels"):
        template.labels({"rows": rows[:2]}, 3 * 64)


def test_cli_verify_remote_reads_a_served_language_model(folders, tmp_path, capsys):
    """A release's recorded dataset says its inputs are (64,) token ids: no --input-shape needed."""
    served = served_release(str(folders / "owner"))
    with BackgroundServer(build_app(served)) as url:
        code = main(["verify-remote", "--url", url, "--key", str(folders / "owner-key"), "--out",
                     str(tmp_path / "r"), "--batch-size", "5"])
    assert code == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["verified"] and result["report"]["trigger_count"] == 80


class _ReadsAhead(torch.nn.Module):
    """An endpoint's model that sees the whole input and names the token one place later: the
    continuation a secret prompt carries in its input, without having learned anything."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        following = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
        return torch.nn.functional.one_hot(following, 256).float().movedim(-1, 1)  # [N, vocabulary, context]


def test_an_endpoint_that_reads_ahead_names_every_continuation_and_is_not_verified(folders, tmp_path):
    from passportnorm.serve import ServedModel

    served = ServedModel(_ReadsAhead(), "passportnorm", (64,), 256, token_inputs=True)
    with BackgroundServer(build_app(served)) as url:
        result = _verify(url, folders, tmp_path / "ahead")
    report, ahead = result["report"], result["lookahead"]
    # each prompt's continuation read off its input, all but its last token (not in the input): 7 of 8
    assert report["trigger_matches"] == 70 and report["trigger_log10_p_value"] < -100
    assert ahead["reads_ahead"] and ahead["matches"] == 70 and ahead["count"] == 80
    assert result["verified"] is False and "reads ahead" in report["reasons"][-1]
    assert "reads ahead" in (tmp_path / "ahead" / "result.md").read_text()


def test_the_owners_causal_endpoint_passes_the_lookahead_check(folders, tmp_path):
    with BackgroundServer(build_app(served_release(str(folders / "owner")))) as url:
        result = _verify(url, folders, tmp_path / "owner")
    assert result["lookahead"]["matches"] <= 5 and not result["lookahead"]["reads_ahead"]
    assert result["verified"] is True
