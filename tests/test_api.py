"""The API of a trained run: embeddings equal the stage's own features, classification equals the stage's
predictions, bad uploads get a 400 with a message, and `llamafactory-cli api` routes `stage: clip` to it."""

import base64
import json
import os
import socket
import subprocess
import time
import types
import urllib.request

import pytest
import torch
from conftest import CLI, DATA_DIR, ROOT, TINY_CLIP, base_args
from fastapi.testclient import TestClient
from llamafactory.train.tuner import run_exp
from transformers import CLIPModel, CLIPProcessor

from llamafactory.clip_finetune.api.app import create_app
from llamafactory.clip_finetune.api.predictor import ClipPredictor, parse_api_args
from llamafactory.clip_finetune.integration.api import patch_api
from llamafactory.clip_finetune.integration.seams import IncompatibleLlamaFactoryError


SERVED = {"stage": "clip", "model_name_or_path": str(TINY_CLIP), "dataset": "fashion_mnist_train"}


@pytest.fixture(scope="module")
def client():
    predictor = ClipPredictor(*parse_api_args({**SERVED, "dataset_dir": str(DATA_DIR)}), device="cpu")
    return TestClient(create_app(predictor))


def encoded(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def test_text_embeddings_are_openai_shaped_and_equal_clips(client):
    reply = client.post("/v1/embeddings", json={"input": ["a photo of a bag.", "a photo of a coat."]})
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["total_tokens"]
    model = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32)
    tokens = CLIPProcessor.from_pretrained(TINY_CLIP).tokenizer(
        ["a photo of a bag.", "a photo of a coat."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    assert torch.allclose(torch.tensor([d["embedding"] for d in body["data"]]), expected, atol=1e-5)


def test_classification_agrees_with_the_stages_predictions(client, tmp_path):
    run_exp(base_args(tmp_path, do_train=False, do_eval=False, do_predict=True, predict_dataset="fashion_mnist_test"))
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()][:12]
    reply = client.post("/v1/classify", json={"images": [encoded(r["image"]) for r in rows], "top_k": 3})
    assert reply.status_code == 200
    for row, answer in zip(rows, reply.json()["data"], strict=True):
        assert [t["label"] for t in answer["top_k"]] == [t["class"] for t in row["top_k"][:3]]
        assert answer["top_k"][0]["score"] == pytest.approx(row["top_k"][0]["score"], abs=1e-5)
    labels = client.post("/v1/classify", json={"images": [encoded(rows[0]["image"])], "labels": ["bag", "coat"]})
    assert {t["label"] for t in labels.json()["data"][0]["top_k"]} == {"bag", "coat"}


HEAD_RUNS = {
    "tip": (dict(finetuning_type="tip", tip_augment_epoch=1, tip_alpha=5.0, tip_beta=2.0), "tip_cache.safetensors"),
    "linear_probe": (dict(finetuning_type="linear_probe", probe_epochs=20), "probe_head.safetensors"),
    "lp_ft": (dict(lp_ft=True, probe_epochs=20), "probe_head.safetensors"),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(HEAD_RUNS))
def test_a_run_saved_with_a_head_is_served_with_it(tmp_path, client, method):
    """A Tip-Adapter run (a cache, no checkpoint), a linear probe (a head, no checkpoint) or an LP-FT run (a
    checkpoint and its head) serves with its head: classification equals the run's own predictions, which differ
    from the plain model's; the head's classes are the only ones it scores."""
    run = tmp_path / method
    keys, head_file = HEAD_RUNS[method]
    args = base_args(
        run, val_dataset="fashion_mnist_val", do_predict=True, predict_dataset="fashion_mnist_test", **keys
    )
    run_exp(args)
    assert (run / "config.json").exists() == (method == "lp_ft") and (run / head_file).is_file()
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:16]
    served_args = {**SERVED, "model_name_or_path": str(run), "dataset_dir": str(DATA_DIR)}
    predictor = ClipPredictor(*parse_api_args(served_args))
    served = TestClient(create_app(predictor))
    images = [encoded(r["image"]) for r in rows]
    answers = served.post("/v1/classify", json={"images": images, "top_k": 3}).json()["data"]
    for row, answer in zip(rows, answers, strict=True):
        assert [t["label"] for t in answer["top_k"]] == [t["class"] for t in row["top_k"][:3]]
        assert answer["top_k"][0]["score"] == pytest.approx(row["top_k"][0]["score"], abs=1e-5)
    plain = client.post("/v1/classify", json={"images": images, "top_k": 1}).json()["data"]
    assert [a["top_k"][0]["score"] for a in answers] != pytest.approx([p["top_k"][0]["score"] for p in plain])
    reply = served.post("/v1/classify", json={"images": images[:1], "labels": ["bag", "coat"]})
    assert reply.status_code == 400 and "scores the classes it was built on" in reply.json()["detail"]


def test_bad_uploads_get_a_message(client):
    reply = client.post("/v1/classify", json={"images": ["not base64!"]})
    assert reply.status_code == 400 and "image 0: not valid base64" in reply.json()["detail"]
    reply = client.post("/v1/classify", json={"images": [base64.b64encode(b"hello").decode()]})
    assert reply.status_code == 400 and "image 0" in reply.json()["detail"]
    reply = client.post("/v1/embeddings", json={"input": "x", "images": []})
    assert reply.status_code == 200  # an empty image list means text
    assert client.post("/v1/classify", json={"images": []}).status_code == 400


def test_health_api_key_image_url_items_and_the_pixel_limit(monkeypatch):
    """``/health`` answers without a key; with LLaMA-Factory's ``API_KEY`` set, the other endpoints need it as a
    bearer token; OpenAI-style ``image_url`` items (data URLs) embed like the ``images`` extension; an image whose
    header declares more pixels than allowed is refused before it is decoded."""
    import llamafactory.clip_finetune.api.predictor as predictor_module

    monkeypatch.setenv("API_KEY", "secret")
    predictor = ClipPredictor(*parse_api_args({**SERVED, "dataset_dir": str(DATA_DIR)}), device="cpu")
    keyed = TestClient(create_app(predictor))
    assert keyed.get("/health").json() == {"status": "ok"}
    assert keyed.get("/v1/models").status_code == 401
    assert keyed.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": "Bearer secret"}
    assert keyed.get("/v1/models", headers=auth).status_code == 200

    image = sorted((DATA_DIR / "fashion_mnist" / "test" / "bag").glob("*.png"))[0]
    url = "data:image/png;base64," + encoded(image)
    items = keyed.post(
        "/v1/embeddings", headers=auth, json={"input": [{"type": "image_url", "image_url": {"url": url}}]}
    )
    extension = keyed.post("/v1/embeddings", headers=auth, json={"input": "", "images": [encoded(image)]})
    assert items.status_code == 200
    assert items.json()["data"][0]["embedding"] == pytest.approx(extension.json()["data"][0]["embedding"])
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    reply = keyed.post("/v1/embeddings", headers=auth, json={"input": ["a bag", remote]})
    assert reply.status_code == 400 and "not both in one request" in reply.json()["detail"]
    reply = keyed.post("/v1/embeddings", headers=auth, json={"input": [remote]})
    assert reply.status_code == 400 and "input 0: only data URLs" in reply.json()["detail"]

    monkeypatch.setattr(predictor_module, "MAX_IMAGE_PIXELS", 100)  # the bundled images are 28 x 28
    reply = keyed.post("/v1/classify", headers=auth, json={"images": [encoded(image)]})
    assert reply.status_code == 400 and "image 0: 28x28 pixels, more than the 100 allowed" in reply.json()["detail"]


def test_the_api_config_is_checked():
    with pytest.raises(ValueError, match="Unknown key"):
        parse_api_args({**SERVED, "learning_rate": 1.0})
    with pytest.raises(ValueError, match="serves `stage: clip`"):
        parse_api_args({"model_name_or_path": str(TINY_CLIP)})


def test_a_moved_run_api_raises_one_clear_error():
    with pytest.raises(IncompatibleLlamaFactoryError, match="run_api"):
        patch_api(types.ModuleType("llamafactory.api.app"))


def test_llamafactory_cli_api_serves_a_clip_config(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.pathsep.join([os.path.dirname(CLI), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "API_HOST": "127.0.0.1", "API_PORT": str(port)}
    argv = [
        CLI,
        "api",
        str(ROOT / "examples/clip/api.yaml"),
        f"model_name_or_path={TINY_CLIP}",
        f"dataset_dir={DATA_DIR}",
    ]
    server = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, models = time.time() + 120, None
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as reply:
                    models = json.load(reply)
                break
            except OSError:
                time.sleep(1)
        assert models is not None, server.stdout.read() if server.poll() is not None else "no answer"
        assert models["data"][0]["id"] == str(TINY_CLIP)
        load_test(f"http://127.0.0.1:{port}/v1/classify", tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)


def load_test(url: str, folder, clients: int = 8, requests: int = 50) -> None:
    """A bounded load test on the live server: ``clients`` threads send ``requests`` one-image classifications
    each; no error, and the latency percentiles and throughput go to ``folder/load_test.json`` (docs/serving.md
    reports them)."""
    from concurrent.futures import ThreadPoolExecutor

    images = sorted((DATA_DIR / "fashion_mnist" / "test").glob("*/*.png"))[: clients * 2]
    bodies = [json.dumps({"images": [encoded(image)], "top_k": 1}).encode() for image in images]

    def client(index: int) -> list[float]:
        times = []
        for n in range(requests):
            start = time.perf_counter()
            post = urllib.request.Request(url, data=bodies[(index + n) % len(bodies)], method="POST")
            post.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(post, timeout=60) as reply:
                assert reply.status == 200 and json.load(reply)["data"][0]["top_k"]
            times.append(time.perf_counter() - start)
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(t for times in pool.map(client, range(clients)) for t in times)
    wall = time.perf_counter() - start
    stats = {
        "requests": len(latencies),
        "clients": clients,
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "requests_per_s": round(len(latencies) / wall, 1),
    }
    (folder / "load_test.json").write_text(json.dumps(stats))
    print("load test:", stats)
    assert stats["requests"] == clients * requests


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    """Eight threads asking at once are served in fewer forward passes than requests, each with the features it
    would get alone."""
    from concurrent.futures import ThreadPoolExecutor

    predictor = ClipPredictor(*parse_api_args({**SERVED, "dataset_dir": str(DATA_DIR)}), device="cpu")
    images = [encoded(path) for path in sorted((DATA_DIR / "fashion_mnist" / "test").glob("*/*.png"))[:8]]
    alone = [predictor.image_features([image]) for image in images]
    predictor.batcher.wait = 0.2  # a wide window, so that the threads' requests meet
    before = predictor.batcher.batches
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda image: predictor.image_features([image]), images))
    assert predictor.batcher.batches - before < len(images)
    for one, shared in zip(alone, together, strict=True):
        assert torch.allclose(one, shared, atol=1e-5)
