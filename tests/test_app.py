"""hubclf.app and ``hubclf app``: the scorer behind the app matches hubclf predict, the model is loaded once, the
Space folder is complete and atomic, gradio stays optional, and the served app works in a real headless Chromium
(upload a photo, read the label bars, click an example) without any outgoing connection.

The photos are the ones gradio ships (``gradio.media``); the model is a tiny hubclf_alexnet_slim whose classifier is
built from the photos' own features, so each photo is recognised as its own class and a wrong image or transform
shows up as a wrong label.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image

import hubclf
from hubclf.cli import main
from hubclf.data.images import build_transforms
from hubclf.predict import predict
from tests.launch import free_port

PHOTOS = {"cheetah": "cheetah1.jpg", "lion": "lion.jpg", "tower": "tower.jpg"}  # label -> gradio media file
IMG_SIZE = (96, 64)  # (height, width): rectangular, like the seed's 448×224
REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_FOR_README = REPO_ROOT / "docs" / "app-screenshot.png"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
APP_START_TIMEOUT_S = 180  # importing torch, timm and gradio on 2 CPU cores shared by several jobs
BROWSER_WAIT_S = 60

# Chromium on a closed network: no background services, no QUIC, a fresh profile (added per run).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def require(module: str):
    """Import ``module``; in CI (CI=true) a missing one fails the test, locally it skips it."""
    try:
        return __import__(module)
    except ImportError as e:
        message = f"{module} is not installed ({e}); scripts/setup.sh installs the app extra: pip install -e '.[app]'"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    require("gradio")
    from gradio.media import get_image

    folder = tmp_path_factory.mktemp("photos")
    return {label: Path(shutil.copyfile(get_image(name), folder / name)) for label, name in PHOTOS.items()}


@pytest.fixture(scope="module")
def model_dir(photos, tmp_path_factory) -> Path:
    """A saved 3-class model that recognises each photo as its label (nearest-centroid classifier on its features)."""
    torch.manual_seed(0)
    model = timm.create_model("hubclf_alexnet_slim", num_classes=len(photos), img_size=IMG_SIZE).eval()
    _, transform = build_transforms(timm.data.resolve_data_config({}, model=model), augment=False)
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in photos.values()])
        features = model.forward_head(model.forward_features(pixels), pre_logits=True)
        mean = features.mean(dim=0)
        centred = features - mean
        # logit_i(x) = (x - mean)·c_i / |c_i|²: 1 for photo i itself, so each photo's own class wins clearly
        weight = centred / centred.pow(2).sum(dim=1, keepdim=True)
        model.get_classifier().weight.copy_(weight)
        model.get_classifier().bias.copy_(-(weight @ mean))
    return hubclf.save_pretrained(model, tmp_path_factory.mktemp("app") / "model", label_names=list(photos))


def expected_scores(model_dir: Path, photo: Path) -> dict[str, float]:
    """What ``hubclf predict`` says about ``photo``: {label: probability}, best first."""
    (result,) = predict(model_dir, [photo], top_k=len(PHOTOS), device="cpu")
    return {p["label"]: p["score"] for p in result.predictions}


# ---- the scorer and the app object ------------------------------------------------------------------------------
def test_scorer_gives_the_probabilities_of_hubclf_predict(model_dir, photos):
    from hubclf.app import ImageScorer

    scorer = ImageScorer(hubclf.from_pretrained(model_dir), device="cpu")
    assert scorer.data_config["input_size"] == (3, *IMG_SIZE)  # the model's own rectangular input
    for label, path in photos.items():
        expected = expected_scores(model_dir, path)
        assert next(iter(expected)) == label  # the toy model tells the photos apart
        scores = scorer(Image.open(path))
        assert scores.keys() == expected.keys()
        for name, score in expected.items():
            assert scores[name] == pytest.approx(score, abs=1e-5)
    # what a browser sends: a PNG with transparency, a grayscale photo; a cleared image clears the labels
    assert sum(scorer(Image.open(photos["lion"]).convert("RGBA")).values()) == pytest.approx(1.0)
    assert sum(scorer(Image.open(photos["lion"]).convert("L")).values()) == pytest.approx(1.0)
    assert scorer(None) is None


def test_app_loads_the_model_once_and_shows_top_k_bars(model_dir, photos, monkeypatch):
    gr = require("gradio")
    import hubclf.app as app_module

    loads = []
    real_load_model = app_module.load_model

    def counting_load_model(model, **kwargs):
        loads.append(model)
        return real_load_model(model, **kwargs)

    monkeypatch.setattr(app_module, "load_model", counting_load_model)
    app = app_module.build_app(str(model_dir), top_k=10, examples=[photos["lion"].parent], device="cpu")
    assert loads == [str(model_dir)]

    (label,) = [block for block in app.blocks.values() if isinstance(block, gr.Label)]
    assert label.num_top_classes == len(PHOTOS)  # top_k is capped at the number of classes
    (examples,) = [block for block in app.blocks.values() if isinstance(block, gr.Dataset)]
    assert len(examples.samples) == len(PHOTOS)
    (predict_fn,) = [fn.fn for fn in app.fns.values() if fn.api_name == "predict"]
    for path in photos.values():
        assert predict_fn(Image.open(path)).keys() == set(PHOTOS)
    assert loads == [str(model_dir)]  # classifying images never reloads the model


def test_importing_hubclf_does_not_import_gradio():
    code = "import sys, hubclf, hubclf.app, hubclf.cli; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_without_gradio_the_command_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    for argv in (["app", "me/model"], ["app", "me/model", "--write-space", str(tmp_path / "space")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'hubclf[app]'" in err, err
    assert not (tmp_path / "space").exists()


def test_the_app_stays_on_this_machine_unless_asked():
    from hubclf.cli import build_parser

    args = build_parser().parse_args(["app", "me/model"])
    assert (args.host, args.port, args.share) == ("127.0.0.1", None, False)
    args = build_parser().parse_args(["app", "me/model", "--host", "0.0.0.0", "--port", "8080", "--share"])
    assert (args.host, args.port, args.share) == ("0.0.0.0", 8080, True)


def test_bad_arguments_are_one_line_errors(model_dir, tmp_path, capsys):
    require("gradio")
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a photo")
    for argv in (
        ["app", str(model_dir), "--top-k", "0"],
        ["app", str(tmp_path / "no-such-model")],
        ["app", str(model_dir), "--examples", str(tmp_path / "no-such-photo.jpg")],
        ["app", str(model_dir), "--examples", str(not_an_image)],
        ["app", str(model_dir), "--write-space", str(tmp_path / "space")],  # a Space needs a Hub repo id
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("hubclf app: error:") and err.count("\n") == 1, err


# ---- --write-space -------------------------------------------------------------------------------------------
def front_matter(readme: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", readme, flags=re.DOTALL)
    assert match, readme[:200]
    return yaml.safe_load(match.group(1))


def test_write_space_writes_a_ready_to_push_space(photos, tmp_path, capsys):
    gr = require("gradio")
    space = tmp_path / "space"
    argv = ["app", "me/zoo-alexnet", "--write-space", str(space), "--top-k", "2", "--examples", str(photos["lion"])]
    assert main(argv) == 0
    assert "hf upload" in capsys.readouterr().out
    assert sorted(p.name for p in space.iterdir()) == [
        ".hubclf-space", "README.md", "app.py", "examples", "requirements.txt"
    ]  # fmt: skip
    assert [p.name for p in (space / "examples").iterdir()] == ["00-lion.jpg"]

    meta = front_matter((space / "README.md").read_text(encoding="utf-8"))
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gr.__version__ and meta["app_file"] == "app.py"
    assert meta["title"] and meta["emoji"] and meta["pinned"] is False and meta["models"] == ["me/zoo-alexnet"]

    source = (space / "app.py").read_text(encoding="utf-8")
    compile(source, "app.py", "exec")
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    build_call = next(call for call in calls if ast.unparse(call.func) == "build_app")
    assert ast.literal_eval(build_call.args[0]) == "me/zoo-alexnet"  # loaded by its Hub id
    assert (space / "requirements.txt").read_text().split() == [f"hubclf=={hubclf.__version__}"]
    assert [p.name for p in tmp_path.iterdir()] == ["space"]  # no staging folder left behind


def test_write_space_replaces_a_non_empty_folder_only_with_overwrite(tmp_path, capsys):
    require("gradio")
    space = tmp_path / "space"
    assert main(["app", "me/zoo", "--write-space", str(space)]) == 0
    (space / "notes.txt").write_text("mine")
    assert main(["app", "me/zoo", "--write-space", str(space)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["app", "me/zoo", "--write-space", str(space), "--overwrite"]) == 0  # a Space hubclf wrote
    assert sorted(p.name for p in space.iterdir()) == [".hubclf-space", "README.md", "app.py", "requirements.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["space"]
    (tmp_path / "empty").mkdir()
    assert main(["app", "me/zoo", "--write-space", str(tmp_path / "empty")]) == 0  # an empty folder is fine


def test_overwrite_never_replaces_a_folder_hubclf_did_not_write(tmp_path, monkeypatch, capsys):
    """``hubclf app owner/name --write-space . --overwrite`` deleted the contents of the current folder."""
    require("gradio")
    work = tmp_path / "home" / "a" / "work"
    (work / "project").mkdir(parents=True)
    (work / "notes.txt").write_text("keep me")
    (work / "project" / "main.py").write_text("print()")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cases = {
        ".": "is the current folder", str(work): "is the current folder", "..": "a folder above the current one",
        "/": "is the root folder", "~": "is your home folder",
        "project": "holds files hubclf did not write (main.py; no .hubclf-space marker)",
    }  # fmt: skip
    for where, message in cases.items():
        assert main(["app", "me/zoo", "--write-space", where, "--overwrite"]) == 2, where
        err = capsys.readouterr().err
        assert err.startswith("hubclf app: error: ") and message in err and err.count("\n") == 1, (where, err)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "project"]  # nothing touched
    assert (work / "notes.txt").read_text() == "keep me" and (work / "project" / "main.py").is_file()


def test_the_app_shows_label_names_as_typed_and_refuses_an_image_over_budget(photos, tmp_path, monkeypatch):
    """Label names from someone's config reach the app's Markdown; an upload whose resize would exhaust memory is
    refused with a message instead of failing the server (a 375-byte 100000x1 PNG asked for gigabytes)."""
    gr = require("gradio")
    import hubclf.app as app_module

    names = ["![x](http://127.0.0.1:9/track.png)", "<img src=x onerror=alert(1)>", "# big"]
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3, img_size=IMG_SIZE)
    folder = hubclf.save_pretrained(model, tmp_path / "model", label_names=names)
    app = app_module.build_app(str(folder), device="cpu")
    (markdown,) = [block for block in app.blocks.values() if isinstance(block, gr.Markdown)]
    assert "!\\[x\\](http://127.0.0.1:9/track.png)" in markdown.value  # no image: the brackets are text
    assert "\\<img src=x onerror=alert(1)\\>" in markdown.value and "\\# big" in markdown.value
    # every "<" and "](" that could open a tag or a link is escaped
    assert markdown.value.count("<img") == markdown.value.count("\\<img")
    assert markdown.value.count("](") == markdown.value.count("\\](")

    strip = tmp_path / "strip.png"
    Image.new("RGB", (100_000, 1)).save(strip)
    (predict_fn,) = [fn.fn for fn in app.fns.values() if fn.api_name == "predict"]
    with pytest.raises(gr.Error, match="resize its 100000x1 pixels.*MAX_DECODE_BYTES"):
        predict_fn(str(strip))  # what gradio passes for an upload: its file path
    assert predict_fn(str(photos["lion"])).keys() == set(names)  # the app lives on


def test_the_written_space_serves_the_model_from_the_hub(model_dir, photos, use_hub, new_repo_id, tmp_path):
    gr = require("gradio")
    import runpy

    repo_id = new_repo_id("space")
    hubclf.push_to_hub(model_dir, repo_id, token=use_hub.token, verify=False)
    space = tmp_path / "space"
    assert main(["app", repo_id, "--write-space", str(space), "--examples", str(photos["tower"])]) == 0
    namespace = runpy.run_path(str(space / "app.py"))  # not as __main__: builds the app without serving it
    app = namespace["app"]
    (predict_fn,) = [fn.fn for fn in app.fns.values() if fn.api_name == "predict"]
    scores = predict_fn(Image.open(photos["tower"]))
    assert max(scores, key=scores.get) == next(iter(expected_scores(model_dir, photos["tower"]))) == "tower"
    (examples,) = [block for block in app.blocks.values() if isinstance(block, gr.Dataset)]
    assert len(examples.samples) == 1


# ---- the served app in a real browser ---------------------------------------------------------------------------
# Runs `hubclf app` with an audit hook that reports every connection or DNS lookup that does not stay on this machine.
AUDITED_CLI = r"""
import ipaddress, sys

LOCAL_NAMES = {None, "localhost", b"localhost", "", b""}

def is_local(host):
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except ValueError:
        return False

def report_outgoing(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and not is_local(args[1][0]):
        print(f"OUTGOING CONNECTION {args[1]}", file=sys.stderr, flush=True)
    elif event == "socket.getaddrinfo" and not is_local(args[0]):
        print(f"OUTGOING DNS LOOKUP {args[0]}", file=sys.stderr, flush=True)

sys.addaudithook(report_outgoing)
from hubclf.cli import main
sys.exit(main(sys.argv[1:]))
"""


@contextmanager
def served_app(args: list[str], log_path: Path) -> Iterator[str]:
    """Run ``hubclf app ARGS`` on a free 127.0.0.1 port until the block ends; yields its URL."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", AUDITED_CLI, "app", *args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        try:
            deadline = time.monotonic() + APP_START_TIMEOUT_S
            while "Running on http://127.0.0.1" not in log_path.read_text():
                assert server.poll() is None, f"hubclf app exited:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"hubclf app did not start:\n{log_path.read_text()}"
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.send_signal(signal.SIGINT)  # gradio closes its server on Ctrl-C
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture
def chromium(tmp_path) -> Iterator:
    """Headless Debian Chromium through the system chromedriver (nothing downloaded); fails in CI when missing."""
    webdriver = require("selenium.webdriver").webdriver
    from selenium.webdriver.chrome.service import Service

    browser = next((found for name in CHROMIUM_CANDIDATES if (found := shutil.which(name))), None)
    if browser is None or not os.access(CHROMEDRIVER, os.X_OK):
        message = f"chromium and {CHROMEDRIVER} are needed: bash scripts/install-browser.sh (apt-get, as root)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1000, "height": 700, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        yield driver
    finally:
        driver.quit()


def shown_scores(driver) -> dict[str, float]:
    """The label bars of the Prediction box: {label: probability}, in the order shown."""
    from selenium.webdriver.common.by import By

    bars = driver.find_elements(By.CSS_SELECTOR, "#prediction meter")
    return {bar.get_attribute("aria-label"): float(bar.get_attribute("value")) for bar in bars}


def wait_for_top_label(driver, label: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def top_label_shown(driver) -> bool:
        heading = driver.find_elements(By.CSS_SELECTOR, "#prediction [data-testid=label-output-value]")
        return bool(heading) and heading[0].text == label and len(shown_scores(driver)) == len(PHOTOS)

    try:
        WebDriverWait(driver, BROWSER_WAIT_S).until(top_label_shown)
    except Exception as e:
        shown = driver.find_element(By.ID, "prediction").text
        raise AssertionError(f"expected top label {label!r}, the page shows {shown!r}") from e


@pytest.mark.slow
def test_upload_a_photo_in_chromium_and_read_the_label_bars(model_dir, photos, chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = {label: expected_scores(model_dir, path) for label, path in photos.items()}
    top_labels = {label: next(iter(scores)) for label, scores in expected.items()}
    assert len(set(top_labels.values())) == len(PHOTOS)  # so the browser can not show the right label by chance

    log = tmp_path / "app.log"
    args = [str(model_dir), "--top-k", "3", "--examples", str(photos["lion"].parent), "--title", "hubclf · toy zoo"]
    with served_app(args, log) as url:
        chromium.get(url)
        file_input = WebDriverWait(chromium, BROWSER_WAIT_S).until(
            lambda driver: driver.find_element(By.CSS_SELECTOR, "#image input[type=file]")
        )
        file_input.send_keys(str(photos["lion"]))
        wait_for_top_label(chromium, top_labels["lion"])
        shown = shown_scores(chromium)
        assert list(shown) == list(expected["lion"])  # best first, as hubclf predict orders them
        assert shown == pytest.approx(expected["lion"], abs=1e-5)
        screenshot = tmp_path / "app.png"
        assert chromium.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size == (1000, 700)
        if os.environ.get("HUBCLF_UPDATE_SCREENSHOT"):  # regenerate the README's picture, in 256 colours (~70 kB)
            SCREENSHOT_FOR_README.parent.mkdir(exist_ok=True)
            palette = Image.open(screenshot).convert("RGB").quantize(256, dither=Image.Dither.NONE)
            palette.save(SCREENSHOT_FOR_README, optimize=True)

        # an example thumbnail puts its photo in the input, and the bars follow (the folder's first: cheetah1.jpg)
        thumbnails = chromium.find_elements(By.CSS_SELECTOR, "button.gallery-item")
        assert len(thumbnails) == len(PHOTOS)
        thumbnails[0].click()
        wait_for_top_label(chromium, top_labels["cheetah"])
        assert shown_scores(chromium) == pytest.approx(expected["cheetah"], abs=1e-5)

        fetched = chromium.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched and all(address.startswith(url) for address in fetched), fetched  # fonts and scripts: local

    output = log.read_text()
    assert "OUTGOING" not in output, output  # no analytics, version check or telemetry from the server
    assert "Traceback" not in output, output
