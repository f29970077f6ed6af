"""serve + verify-remote end to end on localhost: the owner's release verifies, a plain model does not,
flaky and rate-limiting servers give the same verdict, an interrupted run resumes, custom APIs work."""

import json
import socket
import subprocess
import sys
import time
import warnings

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi, uvicorn, httpx) is not installed")
httpx = pytest.importorskip("httpx", reason="the 'serve' extra (fastapi, uvicorn, httpx) is not installed")

import passportnorm as pn  # noqa: E402
from html_pages import assert_self_contained, check_in_chromium, chromium  # noqa: E402
from passportnorm import zoo  # noqa: E402
from passportnorm.cli import main  # noqa: E402
from passportnorm.data import load_dataset  # noqa: E402
from passportnorm.data.pixels import PixelScale, encode_png  # noqa: E402
from passportnorm.data.triggers import generate_triggers  # noqa: E402
from passportnorm.key import extract_key  # noqa: E402
from passportnorm.release import save_released  # noqa: E402
from passportnorm.remote import RemoteError, RemoteOptions, TransportOptions, verify_remote  # noqa: E402
from passportnorm.remote.protocols import TorchServeProtocol  # noqa: E402
from passportnorm.serve import BackgroundServer, build_app, served_release  # noqa: E402
from passportnorm.train import TrainConfig, Trainer  # noqa: E402

CONFIG = {"in_channels": 1, "num_classes": 10, "width": 1.0}
FAST = TransportOptions(timeout=10, retries=3, backoff=0.01)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An owner's release and key (30 noise triggers learned) and a plain model, both released on digits."""
    root = tmp_path_factory.mktemp("remote")
    data = load_dataset("digits", seed=0)
    triggers = generate_triggers(30, data.input_shape, 10, seed=5)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(
            zoo.build("small_cnn", **CONFIG),
            data.train.tensors[0][:8],
            signature="(c) R",
            passports="shuffle",
            weak_layers="skip",
            seed=0,
        )
    Trainer(protected, data, TrainConfig(epochs=6, batch_size=32), trigger=triggers).fit()
    extract_key(protected, trigger=triggers).save(root / "owner-key")
    extract_key(protected).save(root / "key-without-triggers")
    save_released(pn.strip(protected).eval(), root / "owner", "small_cnn", CONFIG, dataset="digits")
    plain = zoo.build("small_cnn", **CONFIG)
    Trainer(plain, data, TrainConfig(epochs=3, batch_size=32)).fit()
    save_released(plain.eval(), root / "plain", "small_cnn", CONFIG, dataset="digits")
    return root


class Unreliable:
    """ASGI wrapper: every ``every``-th inference request answers ``status`` (``down``: all of them)."""

    def __init__(self, app, every=0, status=503):
        self.app, self.every, self.status, self.down, self.seen = app, every, status, False, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/infer"):
            self.seen += 1
            if self.down or (self.every and self.seen % self.every == 0):
                headers = [(b"content-type", b"application/json"), (b"retry-after", b"0")]
                await send({"type": "http.response.start", "status": self.status, "headers": headers})
                await send({"type": "http.response.body", "body": b'{"error": "try again later"}'})
                return
        await self.app(scope, receive, send)


def _verify(url, root, out, **options):
    return verify_remote(
        RemoteOptions(
            url=url,
            key=str(root / "owner-key"),
            out=str(out),
            batch_size=8,
            transport=options.pop("transport", FAST),
            **options,
        )
    )


def test_owner_release_verifies_and_a_plain_model_does_not(folders, tmp_path):
    for name, expected in (("owner", True), ("plain", False)):
        with BackgroundServer(build_app(served_release(str(folders / name)))) as url:
            result = _verify(url, folders, tmp_path / name)
        assert result["verified"] is expected, result["report"]["reasons"]
        control = result["control"]
        assert (
            control["count"] == 30 and control["accuracy_on_owner_labels"] < 0.5
        )  # the control stays near chance
        if expected:
            assert result["report"]["trigger_p_value"] < 1e-6
        lines = [json.loads(line) for line in (tmp_path / name / "requests.jsonl").read_text().splitlines()]
        assert lines[0]["kind"] == "header" and lines[0]["url"] == url
        assert len(lines) == 1 + 8  # 4 trigger and 4 control batches of 8, each answered first time
        assert all(len(line["request_sha256"]) == 64 and line["status"] == 200 for line in lines[1:])
        assert "VERIFIED" in (tmp_path / name / "result.md").read_text()


@pytest.mark.parametrize("status", [503, 429])
def test_a_server_that_fails_every_third_request_gives_the_same_verdict(folders, tmp_path, status):
    flaky = Unreliable(build_app(served_release(str(folders / "owner"))), every=3, status=status)
    with BackgroundServer(flaky) as url:
        result = _verify(url, folders, tmp_path)
    assert result["verified"] and result["requests_sent_this_run"] > 8  # the failed ones were retried
    failed = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()[1:]]
    assert {line["status"] for line in failed} == {200, status}  # every attempt is in the evidence log


def test_an_interrupted_verification_resumes_from_the_answered_batches(folders, tmp_path):
    server = Unreliable(build_app(served_release(str(folders / "owner"))))
    with BackgroundServer(server) as url:
        original = server.app
        budget = {"left": 3}

        async def dies_after_three(scope, receive, send):  # the connection drops for good after 3 answers
            if scope["type"] == "http" and scope["path"].endswith("/infer"):
                budget["left"] -= 1
                server.down = budget["left"] < 0
            await original(scope, receive, send)

        server.app = dies_after_three
        with pytest.raises(RemoteError, match="rerun the same command to resume"):
            _verify(url, folders, tmp_path, transport=TransportOptions(retries=1, backoff=0.01))
        server.down, server.app = False, original
        log = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()[1:]]
        answered = sum(line.get("labels") is not None for line in log)
        assert answered >= 3 and log[-1]["status"] == 503
        with pytest.raises(Exception, match="pass --resume to continue it or --overwrite"):
            _verify(url, folders, tmp_path)
        result = _verify(url, folders, tmp_path, resume=True)
    assert (
        result["verified"] and result["requests_sent_this_run"] == 8 - answered
    )  # only the unanswered batches


def test_a_custom_api_through_a_template(folders, tmp_path):
    from fastapi import FastAPI

    served = served_release(str(folders / "owner"))
    app = FastAPI()

    @app.post("/api/classify")
    def classify(body: dict):  # another shape of API: nested images in, a list of records out
        images = torch.tensor(body["images"])
        scores = served.infer(images).softmax(1)
        return {"predictions": [{"class": int(s.argmax()), "score": float(s.max())} for s in scores]}

    template = tmp_path / "api.json"
    template.write_text(
        json.dumps(
            {
                "path": "/api/classify",
                "body": {"model": "digits", "images": "{{inputs}}"},
                "labels": "predictions[*].class",
            }
        )
    )
    with BackgroundServer(app) as url:
        result = _verify(url, folders, tmp_path / "out", protocol="template", template=str(template))
    assert result["verified"]


def test_the_server_answers_bad_requests_with_a_clear_4xx(folders):
    served = served_release(str(folders / "owner"), max_batch=4)
    good = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    cases = [
        (
            "passportnorm",
            {"inputs": [dict(good, shape=[1, 3, 8, 8], data=[0.0] * 192)]},
            400,
            "takes [batch, 1, 8, 8]",
        ),
        ("passportnorm", {"inputs": [dict(good, datatype="BYTES")]}, 400, "datatype 'BYTES'"),
        ("passportnorm", {"inputs": [dict(good, data=[0.0] * 63)]}, 400, "has 63 values"),
        ("passportnorm", {"inputs": [dict(good, shape=[5, 1, 8, 8], data=[0.0] * 320)]}, 413, "limit of 4"),
        ("passportnorm", {"inputs": []}, 400, "exactly one input tensor"),
        ("other", {"inputs": [good]}, 404, "no model named 'other'"),
    ]
    with BackgroundServer(build_app(served)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v2/health/ready").json() == {"ready": True}
        meta = client.get("/v2/models/passportnorm").json()
        assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8] and meta["outputs"][0]["shape"] == [-1, 10]
        for name, body, status, message in cases:
            answer = client.post(f"/v2/models/{name}/infer", json=body)
            assert answer.status_code == status and message in answer.json()["error"], (body, answer.text)
        answer = client.post("/v2/models/passportnorm/infer", content=b"not json")
        assert answer.status_code == 400 and "malformed request" in answer.json()["error"]
        form = {"content-type": "application/x-www-form-urlencoded"}  # what curl -d sends
        answer = client.post(
            "/v2/models/passportnorm/infer", content=json.dumps({"inputs": [good]}), headers=form
        )
        assert answer.status_code == 200, answer.text
        answer = client.post("/v2/models/passportnorm/infer", json={"inputs": [good], "id": "r1"})
        assert answer.json()["id"] == "r1" and [o["name"] for o in answer.json()["outputs"]] == [
            "logits",
            "label",
        ]


def test_cli_serve_and_verify_remote(folders, tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "passportnorm", "serve", str(folders / "owner"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        args = [
            "verify-remote",
            "--url",
            url,
            "--key",
            str(folders / "owner-key"),
            "--out",
            str(tmp_path / "v"),
        ]
        assert main([*args, "--html", str(tmp_path / "remote.html")]) == 0
        assert "**VERIFIED**" in capsys.readouterr().out
        page = (tmp_path / "remote.html").read_text()
        assert_self_contained(page, "VERIFIED", plots=1)
        assert "same probability for fresh inputs drawn like the triggers" in page  # the control's meaning
        assert (tmp_path / "v" / "result.json").is_file() and "requests.jsonl" in page
        assert main(args) == 2  # the folder holds a finished run: one line, nothing lost
        assert "pass --resume" in capsys.readouterr().err
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["serve", "nowhere"], "nowhere"),
        (["serve", "FOLDER", "--port", "70000"], "--port 70000 is not a TCP port"),
        (["verify-remote", "--url", "localhost:1", "--key", "KEY"], "must start with http:// or https://"),
        (
            ["verify-remote", "--url", "http://x", "--key", "KEY", "--protocol", "template"],
            "needs --template FILE",
        ),
        (["verify-remote", "--url", "http://x", "--key", "KEY", "--rate", "-1"], "--rate must be positive"),
    ],
)
def test_bad_remote_input_is_one_line(folders, tmp_path, capsys, argv, message):
    argv = [
        a.replace("FOLDER", str(folders / "owner")).replace("KEY", str(folders / "owner-key")) for a in argv
    ]
    assert main(argv + (["--out", str(tmp_path / "o")] if argv[0] == "verify-remote" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_torchserve_images_verify_the_owner_and_not_the_plain_model(folders, tmp_path):
    """Each trigger travels as an 8-bit PNG to /predictions/{name}; the server's handler normalises it."""
    for name, expected in (("owner", True), ("plain", False)):
        with BackgroundServer(build_app(served_release(str(folders / name)))) as url:
            result = _verify(url, folders, tmp_path / name, protocol="torchserve", dataset="digits")
        assert result["verified"] is expected, result["report"]["reasons"]
        assert result["endpoint"]["batch_size"] == 1 and result["requests_sent_this_run"] == 60
        assert 0.1 < result["encoding"]["clipped_share"] < 0.5  # N(0, 1) noise: |z| > 1 is clipped
        assert "8-bit PNG" in (tmp_path / name / "result.md").read_text()


def test_the_predictions_endpoint_answers_like_torchserve(folders):
    served = served_release(str(folders / "owner"))
    image = served.pixels.to_pixels(torch.zeros(1, 8, 8))[0]
    with BackgroundServer(build_app(served)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/ping").json() == {"status": "Healthy"}
        answer = client.post("/predictions/passportnorm", content=encode_png(image)).json()
        assert len(answer) == 5 and all(k.isdigit() for k in answer) and 0 < sum(answer.values()) <= 1.0001
        expected = served.infer(served.pixels.to_inputs(image).unsqueeze(0)).argmax(1).item()
        assert max(answer, key=answer.get) == str(expected)
        wrong = client.post(
            "/predictions/passportnorm", content=encode_png(torch.zeros(1, 9, 8, dtype=torch.uint8))
        )
        assert wrong.status_code == 400 and "takes 8x8" in wrong.json()["error"]
        text = client.post("/predictions/passportnorm", content=b"<html>")
        assert text.status_code == 400 and "not an image" in text.json()["error"]


def test_pixels_round_trip_the_datasets_normalisation():
    scale = PixelScale.of(lambda x: (x - 0.1307) / 0.3081, (1, 4, 4))
    pixels = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    inputs = scale.to_inputs(pixels)
    assert torch.allclose(inputs, (pixels / 255 - 0.1307) / 0.3081, atol=1e-6)
    back, clipped = scale.to_pixels(inputs)
    assert torch.equal(back, pixels) and clipped == 0.0
    assert scale.to_pixels(torch.full((1, 1, 2, 2), 10.0))[1] == 1.0


@pytest.mark.parametrize(
    "answer,label",
    [({"3": 0.7, "1": 0.2}, 3), ([{"4": 0.9}], 4), (7, 7), ({"label": 2}, 2), ([0.1, 0.8, 0.1], 1)],
)
def test_torchserve_answers_in_the_shapes_handlers_write(answer, label):
    assert TorchServeProtocol("m", PixelScale.of(lambda x: x, (1, 2, 2))).labels(answer, 1) == [label]


def test_torchserve_answers_naming_classes_are_refused_with_the_fix():
    protocol = TorchServeProtocol("m", PixelScale.of(lambda x: x, (1, 2, 2)))
    with pytest.raises(ValueError, match="names classes .'cat'., not indices"):
        protocol.labels({"cat": 0.9, "dog": 0.1}, 1)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answering(body, content_type=b"application/json", delay=0.0):
    """An ASGI app answering every request with ``body`` (after ``delay`` seconds)."""
    import asyncio

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(delay)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
        )
        await send({"type": "http.response.body", "body": body})

    return app


LABELS_OF_8 = json.dumps({"outputs": [{"name": "label", "data": [0] * 8}]}).encode()


@pytest.mark.parametrize(
    "app,message",
    [
        (None, "ConnectError"),  # nothing listens: refused
        (_answering(b"<html><body>Login</body></html>", b"text/html"), "answered text/html, not JSON"),
        (
            _answering(json.dumps({"outputs": [{"name": "label", "data": [1, 2, 3]}]}).encode()),
            "hold 8 labels",
        ),
        (_answering(LABELS_OF_8, delay=2.0), "ReadTimeout"),
        (_answering(LABELS_OF_8.replace(b"[0, 0", b"[57, 0")), "answered class 57"),
    ],
    ids=["refused", "html", "wrong-shape", "timeout", "outside-classes"],
)
def test_a_bad_endpoint_is_one_line_naming_it_and_leaves_no_result(folders, tmp_path, capsys, app, message):
    out = tmp_path / "out"
    args = ["verify-remote", "--key", str(folders / "owner-key"), "--out", str(out), "--batch-size", "8"]
    args += ["--timeout", "0.5", "--retries", "1", "--backoff", "0.01"]
    if app is None:
        assert main(args + ["--url", f"http://127.0.0.1:{_free_port()}"]) == 2
    else:
        with BackgroundServer(app) as url:
            assert main(args + ["--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "http://127.0.0.1:" in err and "\n" not in err, err
    assert not (out / "result.json").exists() and not (out / "result.md").exists()


def test_a_key_without_triggers_cannot_verify_remotely(folders, tmp_path, capsys):
    key = str(folders / "key-without-triggers")
    assert main(["verify-remote", "--url", "http://127.0.0.1:1", "--key", key, "--out", str(tmp_path)]) == 2
    assert "has no trigger set" in capsys.readouterr().err


def test_the_remote_page_renders_in_headless_chromium(folders, tmp_path):
    from passportnorm.evidence_report import remote_page

    chromium()  # skips here, before any work, where no browser is installed
    with BackgroundServer(build_app(served_release(str(folders / "plain")))) as url:
        result = _verify(url, folders, tmp_path / "out")
    (tmp_path / "remote.html").write_text(remote_page(result, str(folders / "owner-key")))
    check_in_chromium(tmp_path / "remote.html", "NOT VERIFIED", "no", tmp_path)
