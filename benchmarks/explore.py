"""How fast the explorer answers: an upload, a click on a patch, a move of the layer slider.

    python -m benchmarks.explore --image ../shared/data/cifar10-jpg/test/ship/0001.jpg
    python -m benchmarks.explore --image ... --checkpoint runs/cifar10/vit_cifar10_finetuned.pth --screenshot docs/explorer.png

The server runs in this process on a free port (ViT-B/16 at 224 px with random weights by
default: the time does not depend on the weights). Each figure is the median of `--repeats`:

    HTTP     the request's round trip from this process (urllib): the server's whole work
    browser  in headless Chromium (Debian's, driven by Playwright), from the action to the page
             having drawn its answer: the round trip plus the page's JavaScript and canvases

The issue's targets on 2 CPU cores: an upload under 2 s, a click or a slider move under 0.3 s.
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import torch

from infer.explore import ExploreServer, Explorer, Subject
from infer.cpu import cpu_kind

CHROMIUM = "/usr/bin/chromium"


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def http_figures(url: str, image: Path, repeats: int) -> dict[str, float]:
    def post():
        request = urllib.request.Request(f"{url}/api/image", data=image.read_bytes())
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    figures = {"upload": median_seconds(post, repeats)}
    key = post()["id"]  # the image the clicks and slider moves read
    info = json.loads(urllib.request.urlopen(f"{url}/api/info").read())

    def get(query):
        with urllib.request.urlopen(f"{url}/api/view?id={key}&{query}") as response:
            response.read()

    step = iter(range(10**6))
    figures["click a patch"] = median_seconds(
        lambda: get(f"layer={info['layers'] - 1}&patch={next(step) % info['grid'] ** 2}"), repeats)
    figures["move the layer slider"] = median_seconds(lambda: get(f"layer={next(step) % info['layers']}&patch="), repeats)
    return figures


def browser_figures(url: str, image: Path, repeats: int, screenshot: Path | None) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent !== 'loading...'")
        drawn = "Number(document.getElementById('attention').dataset.drawn)"

        def upload():
            count = page.evaluate(drawn)
            page.set_input_files("#file", str(image))
            page.wait_for_function(f"{drawn} > {count}")

        box = None

        def click(i=iter(range(10**6))):
            count, n = page.evaluate(drawn), page.evaluate("state.info.grid")
            patch = next(i) % (n * n)
            page.mouse.click(box["x"] + (patch % n + 0.5) * box["width"] / n, box["y"] + (patch // n + 0.5) * box["height"] / n)
            page.wait_for_function(f"{drawn} > {count}")

        def slide(i=iter(range(10**6))):
            count, layers = page.evaluate(drawn), page.evaluate("state.info.layers")
            page.fill("#layer", str(next(i) % layers + 1))
            page.wait_for_function(f"{drawn} > {count}")

        figures = {"upload": median_seconds(upload, repeats)}
        box = page.locator("#seen").bounding_box()
        figures["click a patch"] = median_seconds(click, repeats)
        figures["move the layer slider"] = median_seconds(slide, repeats)
        if screenshot:  # a patch clicked, in the last layer but one
            page.fill("#layer", str(page.evaluate("state.info.layers") - 1))
            page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.45 * box["height"])
            page.wait_for_timeout(300)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explore", description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="the image to upload")
    parser.add_argument("--checkpoint", help="a fine-tuned checkpoint (default: --model with random weights)")
    parser.add_argument("--model", default="vit_base_patch16_224", help="default: %(default)s")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the page here")
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    subject = (Subject.from_checkpoint(args.checkpoint, cpu) if args.checkpoint
               else Subject.from_name(args.model, "none", cpu))
    server = ExploreServer(Explorer(subject), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    try:
        print(f"{subject.name} at {subject.img_size} px on {cpu_kind()}, {torch.get_num_threads()} threads; "
              f"median of {args.repeats}")
        http = http_figures(url, Path(args.image), args.repeats)
        browser = browser_figures(url, Path(args.image), args.repeats, args.screenshot)
        for name in http:
            print(f"{name:24} HTTP {http[name]:.3f} s   browser {browser[name]:.3f} s")
    finally:
        server.shutdown()
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
