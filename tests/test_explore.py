"""The explorer (infer/explore.py): its routes answer from one look at the image, and the page
works in a real browser (Debian's chromium, driven by Playwright; no browser is downloaded)."""

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from infer import Classifier
from infer.explore import ExploreServer, Explorer, Subject
from tests.conftest import CLASSES, perturb_, run_cli
from vit.checkpoint import ModelCard, save_model
from vit.explain import look, rollout, token_attention
from vit.families import model_config
from infer.images import load_image
from vit.model import VisionTransformer
from infer.preprocess import to_model_input

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A fine-tuned-style ViT-Ti at 64 px (a 4 x 4 patch grid) for CIFAR-10's classes, with
    weights that make every map non-trivial."""
    torch.manual_seed(0)
    model = perturb_(VisionTransformer(model_config("vit_tiny_patch16_224", num_classes=10, img_size=64)))
    torch.nn.init.normal_(model.head.weight, std=0.5)
    path = tmp_path_factory.mktemp("explore") / "vit_cifar10_finetuned.pth"
    save_model(path, model, ModelCard("vit_tiny_patch16_224", 64, tuple(CLASSES), (0.5,) * 3, (0.5,) * 3, source_size=32))
    return path


@pytest.fixture
def server(checkpoint, cifar_dir):
    """The explorer on a free port of 127.0.0.1, serving in a thread; its address."""
    images = [cifar_dir / "test" / "ship" / "0001.jpg", cifar_dir / "test" / "cat" / "0003.jpg"]
    explore = ExploreServer(Explorer(Subject.from_checkpoint(str(checkpoint), torch.device("cpu"))), port=0,
                            images=images)
    thread = threading.Thread(target=explore.serve_forever, daemon=True)
    thread.start()
    host, port = explore.server_address[:2]
    yield explore, f"http://{host}:{port}"
    explore.shutdown()
    explore.close()
    assert not Path(explore.scratch.name).exists()  # the temporary folder is gone


def call(url: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"X-File-Name": "upload.jpg"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_routes_answer_from_one_look_at_the_image(server, checkpoint, cifar_dir):
    explore, url = server
    assert explore.server_address[0] == "127.0.0.1"
    path = cifar_dir / "test" / "cat" / "0003.jpg"
    status, answer = call(f"{url}/api/image", path.read_bytes())
    assert status == 200, answer
    assert not list(Path(explore.scratch.name).iterdir())  # the upload's bytes are gone once read

    # the prediction is infer's, to the last digit shown
    classifier = Classifier(checkpoint, device="cpu", amp="none")
    (prediction,) = classifier.classify([path], topk=5)
    assert [name for name, _ in answer["top"]] == [name for name, _ in prediction.top]
    assert [round(p, 5) for _, p in answer["top"]] == [round(p, 5) for _, p in prediction.top]

    # the maps are vit.explain's, from the model's own attention
    model, cfg = explore.explorer.subject.model, explore.explorer.subject.model.cfg
    inputs = to_model_input(load_image(path, 32)[None], 64, (0.5,) * 3, (0.5,) * 3, 32)
    seen = look(model, inputs)
    assert torch.allclose(torch.tensor(answer["rollout"]), rollout(seen.maps, cfg)[0].flatten())
    status, view = call(f"{url}/api/view?id={answer['id']}&layer=5&patch=6")
    assert status == 200, view
    assert torch.allclose(torch.tensor(view["heads"]), token_attention(seen.maps, cfg, 5, 6)[0].flatten(1))
    assert view["similar"][6] == pytest.approx(1.0, abs=1e-5)  # a patch is itself
    status, cls_view = call(f"{url}/api/view?id={answer['id']}&layer=5&patch=")
    assert cls_view["similar"] is None and cls_view["heads"] != view["heads"]
    assert len(answer["pca"]) == 16 * 3 and 0 <= min(answer["pca"]) and max(answer["pca"]) <= 1

    # the --images files, by number; and what cannot be answered, in one line
    status, picked = call(f"{url}/api/folder?index=0")
    assert status == 200 and picked["top"]
    status, error = call(f"{url}/api/image", b"this is not an image")
    assert status == 400 and error["error"].startswith("upload.jpg: not an image") and "\n" not in error["error"]
    status, error = call(f"{url}/api/view?id=gone&layer=0&patch=")
    assert status == 400 and "no longer kept" in error["error"]
    status, error = call(f"{url}/api/view?id={answer['id']}&layer=99&patch=")
    assert status == 400 and "outside the model" in error["error"]


def test_the_page_in_a_real_browser(server, checkpoint, cifar_dir, tmp_path):
    """Upload a real CIFAR-10 image, read the top class and confidence from the page, click a
    patch and see the attention view change, and see a bad file answered in one line."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "the browser test needs Debian's chromium: apt-get install -y chromium"
    _, url = server
    path = cifar_dir / "test" / "ship" / "0001.jpg"
    (prediction,) = Classifier(checkpoint, device="cpu", amp="none").classify([path], topk=1)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('vit_tiny_patch16_224')")
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#top-class")
            assert page.text_content("#top-class") == prediction.top[0][0]
            assert page.text_content("#top-confidence") == f"{100 * prediction.top[0][1]:.1f}%"

            page.wait_for_function("document.getElementById('attention').dataset.drawn !== '0'")
            before = page.evaluate("document.getElementById('attention').toDataURL()")
            box = page.locator("#seen").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.1)  # row 1, column 3
            page.wait_for_function("document.getElementById('attention').dataset.source === 'patch 2'")
            assert page.evaluate("document.getElementById('attention').toDataURL()") != before
            assert "row 1, column 3" in page.text_content("#source")

            page.locator("#heads canvas").nth(1).click()  # a head of its own
            assert page.text_content("#head-label") == "head 2"
            page.fill("#layer", "2")  # the slider: another layer's maps
            page.wait_for_function("document.getElementById('layer-label').textContent.startsWith('2 of')")

            bad = tmp_path / "holiday.jpg"
            bad.write_text("not really a photo")
            page.set_input_files("#file", str(bad))
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            error = page.text_content("#error")
            assert error.startswith("holiday.jpg: not an image") and "\n" not in error and "Traceback" not in error
        finally:
            browser.close()


def test_command_line_errors_are_one_line(tmp_path):
    missing = run_cli("infer.explore", "--checkpoint", str(tmp_path / "missing.pth"))
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0 and "no such" in missing.stderr
    neither = run_cli("infer.explore")
    assert neither.returncode == 2 and "--checkpoint" in neither.stderr


def test_a_backbone_without_classifier_or_cls_token_is_explored_too(cifar_dir):
    """SigLIP's image tower by name: no classifier (no prediction), no CLS token (its view is the
    mean of the patches' rows, as vit.explain reads it), and the PCA picture and similarities."""
    subject = Subject.from_name("vit_base_patch16_siglip_224", "none", torch.device("cpu"))
    explorer = Explorer(subject)
    info = explorer.info([])
    assert info["classifier"] is False and info["grid"] == 14
    answer = explorer.analyse(cifar_dir / "test" / "frog" / "0002.jpg")
    assert answer["top"] is None and len(answer["pca"]) == 14 * 14 * 3 and len(answer["rollout"]) == 196
    view = explorer.view(answer["id"], layer=11, patch=None)
    assert view["similar"] is None and len(view["heads"]) == 12
    rows = explorer.analyses[answer["id"]].look.maps[11][0, :, :, :].mean(dim=1)  # every patch's row, averaged
    assert torch.allclose(torch.tensor(view["heads"]), rows)
    assert explorer.view(answer["id"], layer=0, patch=100)["similar"][100] == pytest.approx(1.0, abs=1e-5)


def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 30) -> tuple[int, str]:
    """Send `head` (request line and headers, CRLF-separated, no blank line) and `body` over a plain
    socket; return the status and the body of the answer, however the server ends it."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as connection:
        connection.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest.split("\r\n\r\n", 1)[-1]


@pytest.mark.timing
def test_uploads_are_accepted_or_refused_from_their_header_alone(server):
    """Item 1 of the hardening round: Content-Length decides, before any byte of the body is read."""
    import time

    explore, url = server
    host = url.split("//")[1]
    for length, status in [("-1", 400), ("abc", 400), ("10" * 15, 413), (str(10**12), 413), (str(10**30), 413)]:
        started = time.perf_counter()
        code, body = raw_request(url, f"POST /api/image HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}")
        assert code == status, (length, body)
        assert time.perf_counter() - started < 5  # decided at once: nothing waits for a body
        assert "\n" not in json.loads(body)["error"]
    code, body = raw_request(url, f"POST /api/image HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked")
    assert code == 411 and "Content-Length" in json.loads(body)["error"]
    assert not list(Path(explore.scratch.name).iterdir())  # nothing was written


def test_only_this_servers_names_and_pages_are_answered(server, cifar_dir):
    """Item 4: a foreign Host (DNS rebinding) and a foreign Origin on a POST get a 403."""
    explore, url = server
    port = url.rsplit(":", 1)[1]
    code, body = raw_request(url, "GET /api/info HTTP/1.1\r\nHost: attacker.example")
    assert code == 403 and "ship" not in body and "not this server's name" in json.loads(body)["error"]
    code, body = raw_request(url, f"GET /api/info HTTP/1.1\r\nHost: attacker.example:{port}")
    assert code == 403
    for name in ("localhost", "127.0.0.1", "[::1]"):
        code, body = raw_request(url, f"GET /api/info HTTP/1.1\r\nHost: {name}:{port}")
        assert code == 200 and json.loads(body)["model"] == "vit_tiny_patch16_224"
    image = (cifar_dir / "test" / "cat" / "0003.jpg").read_bytes()
    head = f"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(image)}"
    code, body = raw_request(url, head + "\r\nOrigin: https://attacker.example", image)
    assert code == 403 and "only this server's own page" in json.loads(body)["error"]
    code, body = raw_request(url, head + f"\r\nOrigin: http://127.0.0.1:{port}", image)
    assert code == 200 and json.loads(body)["top"]


def test_an_error_inside_the_server_is_an_answer_and_the_server_goes_on(server, monkeypatch):
    """Item 6: what a handler raises becomes a 500 with one line, not a dropped connection."""
    explore, url = server

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge\nmore detail")

    monkeypatch.setattr(explore.explorer, "view", broken)
    status, answer = call(f"{url}/api/view?id=x&layer=0&patch=")
    assert status == 500 and "LinAlgError" in answer["error"] and "\n" not in answer["error"]
    assert call(f"{url}/api/info")[0] == 200


@pytest.mark.timing
def test_a_silent_connection_is_dropped_and_a_burst_of_uploads_is_answered(server, monkeypatch, cifar_dir):
    """Item 3: a half-sent request is closed after the timeout (here 1 s) instead of holding a
    thread forever, and 50 uploads at once are all answered (the backlog holds the burst)."""
    import socket
    import time
    from concurrent.futures import ThreadPoolExecutor

    import infer.explore

    explore, url = server
    monkeypatch.setattr(infer.explore.Handler, "timeout", 1)
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nhalf")
        started = time.perf_counter()
        assert connection.recv(1024) == b""  # the server closed it (the event, not a fixed wait)
        assert time.perf_counter() - started < 20
    assert explore.request_queue_size >= 50
    image = (cifar_dir / "test" / "cat" / "0003.jpg").read_bytes()
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: call(f"{url}/api/image", image)[0], range(50)))
    assert statuses == [200] * 50


def test_sigterm_removes_the_scratch_folder_and_a_bad_port_is_one_line(checkpoint, tmp_path):
    """Item 5: SIGTERM stops the server as Ctrl-C does, the uploads' folder removed."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "infer.explore", "--checkpoint", str(checkpoint), "--port", "0"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TMPDIR": str(scratch)})
    try:
        assert process.stdout.readline().startswith("exploring")  # serving: its scratch folder exists
        assert [p.name.startswith("vit-explore-") for p in scratch.iterdir()] == [True]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert not list(scratch.iterdir())
    bad = run_cli("infer.explore", "--checkpoint", str(checkpoint), "--port", "80000")
    assert bad.returncode == 2 and "80000 is not a port" in bad.stderr and bad.stderr.count("\n") == 1


def test_an_image_too_large_to_decode_is_refused_from_its_header_and_decodes_are_bounded(server, monkeypatch,
                                                                                          tmp_path, cifar_dir):
    """Item 2: what one upload may cost is bounded before decoding (pixels x bytes per pixel), and
    at most DECODES_AT_ONCE uploads are decoded at once, whatever arrives."""
    import io
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    import infer.explore
    import infer.images

    explore, url = server
    monkeypatch.setattr(infer.images, "MAX_DECODED_BYTES", 2 * 1000 * 1000)  # 2 MB: a 1000 x 1001 16-bit PNG is over
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1001, 1000), dtype=np.uint16)).save(buffer, format="PNG")
    status, answer = call(f"{url}/api/image", buffer.getvalue())
    assert status == 400 and "would take 2 MB decoded, over the 1 MB one image may" in answer["error"], answer

    active, most = [0], [0]
    real = infer.explore.load_image

    def counting(*args, **kwargs):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.05)  # hold the decode a moment, so that overlapping uploads would show
        try:
            return real(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(infer.explore, "load_image", counting)
    image = (cifar_dir / "test" / "cat" / "0003.jpg").read_bytes()
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: call(f"{url}/api/image", image)[0], range(8))) == [200] * 8
    assert 1 <= most[0] <= infer.explore.DECODES_AT_ONCE


def test_the_server_answers_at_most_max_threads_connections_at_once(checkpoint, monkeypatch):
    """Item 3: connections beyond MAX_THREADS wait in the backlog instead of each taking a thread
    (1000 half-sent requests held 1000 threads before). Here 2 threads, 5 silent connections, each
    closed by a 1 s timeout in turn: never more than 2 handled at once, and every one answered."""
    import socket

    import infer.explore

    monkeypatch.setattr(infer.explore, "MAX_THREADS", 2)
    monkeypatch.setattr(infer.explore.Handler, "timeout", 1)
    active, most, lock = [0], [0], threading.Lock()
    real_handle = infer.explore.Handler.handle

    def counted(handler):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            real_handle(handler)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(infer.explore.Handler, "handle", counted)
    explore = ExploreServer(Explorer(Subject.from_checkpoint(str(checkpoint), torch.device("cpu"))), port=0)
    threading.Thread(target=explore.serve_forever, daemon=True).start()
    try:
        host, port = explore.server_address[:2]
        connections = [socket.create_connection((host, port), timeout=30) for _ in range(5)]
        for connection in connections:
            connection.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1")  # never finished
        for connection in connections:
            assert connection.recv(1024) == b""  # closed by the server's timeout (the event waited for)
            connection.close()
        assert most[0] == 2
    finally:
        explore.shutdown()
        explore.close()
