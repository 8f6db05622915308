"""Try a hubclf model in the browser: ``hubclf app MODEL``, a Gradio app, and ``--write-space DIR``, a Space.

Drop in or paste an image and the top-k label bars appear (``gr.Label``). The image goes through the same eval
transform as ``hubclf predict`` (``timm.data.resolve_data_config`` + ``create_transform`` from the model's
pretrained_cfg), so a 448×224 model sees 448×224 inputs. The model is loaded once, before the app is built.

Gradio is an optional extra (``pip install 'hubclf[app]'``), imported only inside these functions, and runs
offline: no analytics, no version check, no share link unless asked for.

    from hubclf.app import build_app, launch_app
    launch_app(build_app("me/flowers-alexnet", top_k=3, examples=["photos/"]))   # http://127.0.0.1:7860/
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from PIL import Image

from hubclf._version import __version__
from hubclf.atomic import atomic_write_json, staged_dir
from hubclf.data.images import BadImageError, decode_image, eval_preprocessing
from hubclf.data.sources import find_images
from hubclf.hardware import resolve_device
from hubclf.predict import label_names_of, load_model
from hubclf.text import listing, md_text, printable

if TYPE_CHECKING:
    import gradio

__all__ = [
    "GradioMissingError",
    "SpaceDirNotEmptyError",
    "ImageScorer",
    "build_app",
    "import_gradio",
    "launch_app",
    "write_space",
    "check_space_dir",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hubclf[app]'"
MAX_EXAMPLES = 12  # a few thumbnails under the image; a whole photo folder would bury the app
SPACE_EXAMPLES_DIR = "examples"
# Written into every Space folder hubclf writes: --overwrite replaces only a folder that holds it (or nothing).
SPACE_MARKER = ".hubclf-space"

# Unless told not to, gradio asks api.gradio.app for its latest version and reports usage (to api.gradio.app and,
# through huggingface_hub's telemetry, huggingface.co) from background threads; the app must stay silent offline.
OFFLINE_GRADIO_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SSR_MODE": "False",  # no Node.js server next to the Python one
}


class GradioMissingError(RuntimeError):
    """Gradio (the ``hubclf[app]`` extra) is not installed."""


class SpaceDirNotEmptyError(FileExistsError, ValueError):
    """``write_space`` would replace a non-empty folder without ``overwrite=True``, or one hubclf did not write."""


def import_gradio() -> Any:
    """The ``gradio`` module, imported with analytics off; ``GradioMissingError`` (one line) when it is missing."""
    for name, value in OFFLINE_GRADIO_ENV.items():
        os.environ[name] = value
    try:
        import gradio
    except ImportError as e:
        raise GradioMissingError(f"the app needs gradio ({e}): {INSTALL_HINT}") from e
    return gradio


class ImageScorer:
    """A loaded model with its eval transform and label names: ``scorer(pil_image)`` -> ``{label: probability}``.

    This is the function the app calls on every image; it holds the model, so the model is loaded only once. It
    takes a PIL image or, as the app passes uploads, a file path: the file is then checked from its header before
    it is decoded (``decode_image``), so an upload whose decoding or resizing would exhaust memory is refused
    (``BadImageError``) instead of taking the server down.

        scorer = ImageScorer(hubclf.from_pretrained("out/zoo"))
        scorer(Image.open("ant.png"))   # {"zebra": 0.84, "ant": 0.11, "cat": 0.04}
    """

    def __init__(self, model: nn.Module, *, device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.label_names = label_names_of(model) or [str(i) for i in range(model.num_classes)]
        # The transform path of hubclf predict: the model's own input size, crop and normalisation.
        self.data_config, self.transform = eval_preprocessing(model)

    @torch.inference_mode()
    def __call__(self, image: Image.Image | str | None) -> dict[str, float] | None:
        if image is None:  # the image was cleared: clear the labels too
            return None
        pixels = self.transform(decode_image(image, transform=self.transform)).unsqueeze(0).to(self.device)
        probabilities = self.model(pixels).float().softmax(dim=1)[0].cpu().tolist()
        return dict(zip(self.label_names, probabilities, strict=True))


def find_examples(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Example images from files and/or folders (as ``hubclf predict`` finds them), at most ``MAX_EXAMPLES``.

    Each one is decoded now, so an unreadable example is a clear error at start-up (``BadImageError``).
    """
    found = find_images(paths)
    if len(found) > MAX_EXAMPLES:
        logger.warning("showing the first %d of %d example images", MAX_EXAMPLES, len(found))
    for path in found[:MAX_EXAMPLES]:
        decode_image(str(path))
    return found[:MAX_EXAMPLES]


def build_app(
    model: nn.Module | str | os.PathLike,
    *,
    top_k: int = 5,
    examples: Sequence[str | os.PathLike] = (),
    title: str | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
) -> gradio.Blocks:
    """A Gradio app that shows ``model``'s top-``top_k`` labels for an uploaded or pasted image.

    ``model`` is a loaded model or anything ``hubclf.predict.load_model`` takes (Hub repo id, folder, ``hf-hub:`` /
    ``local-dir:`` name); it is loaded here, once. ``examples`` are image files and/or folders shown under the input.

        app = build_app("out/flowers/best", top_k=3, examples=["photos/rose.jpg"])
        launch_app(app, port=7860)
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    gr = import_gradio()
    example_files = find_examples(examples) if examples else []
    name = str(model) if isinstance(model, str | os.PathLike) else type(model).__name__
    scorer = ImageScorer(load_model(model, revision=revision), device=device)
    _, height, width = scorer.data_config["input_size"]
    title = title or f"hubclf · {name}"
    labels = scorer.label_names
    # Label names come from someone's config.json: shown as typed, never as Markdown or HTML (a link, an image
    # fetched from their server, a heading).
    shown = ", ".join(md_text(label) for label in labels[:10]) + (
        f" and {len(labels) - 10} more" if len(labels) > 10 else ""
    )

    def classify(image: Image.Image | str | None) -> dict[str, float] | None:
        try:
            return scorer(image)
        except BadImageError as e:  # shown in the app, like predict lists an unreadable file; the server lives on
            raise gr.Error(html.escape(printable(e)), print_exception=False) from None

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {md_text(title)}\nDrop in or paste an image. The model sees it at {height}×{width} (height×width) "
            f"and knows {len(labels)} classes: {shown}."
        )
        with gr.Row(equal_height=True):
            # A file path, not a PIL image: gradio would decode the upload whole before hubclf could check it.
            image = gr.Image(
                type="filepath", label="Image", sources=["upload", "clipboard"], image_mode=None, elem_id="image"
            )
            label = gr.Label(num_top_classes=min(top_k, len(labels)), label="Prediction", elem_id="prediction")
        if example_files:
            gr.Examples(examples=[[str(p)] for p in example_files], inputs=image, label="Examples")
        # change (not only upload) so pasting, picking an example and clearing all update the bars
        image.change(classify, inputs=image, outputs=label, api_name="predict")
    return app


def launch_app(
    app: gradio.Blocks,
    *,
    host: str | None = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    block: bool = True,
) -> str:
    """Serve ``app`` on ``host:port`` and print its URL; with ``block`` (the default) wait there until Ctrl-C.

    ``None`` leaves host and port to gradio: ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (set on Spaces), else
    127.0.0.1 and the first free port from 7860. ``share=True`` asks gradio.live for a public link: the only case
    in which the app itself talks to the internet. Returns the local URL.

        launch_app(build_app("out/zoo"), port=7860)   # prints "Running on http://127.0.0.1:7860/"
    """
    _, local_url, share_url = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        inbrowser=False,
        show_error=True,
        ssr_mode=False,
        mcp_server=False,
        prevent_thread_lock=True,
        quiet=True,  # gradio's own banner suggests editing launch(); ours names the URL and how to stop
    )
    print(f"Running on {local_url} (Ctrl-C to stop)", flush=True)
    if share_url:
        print(f"Public link: {share_url}", flush=True)
    if block:
        app.block_thread()
    return local_url


# ---- Space -----------------------------------------------------------------------------------------------------
SPACE_APP = '''"""Gradio Space for the hubclf model {repo_id}, written by `hubclf app --write-space`."""

from pathlib import Path

from hubclf.app import build_app, launch_app

examples = [p for p in [Path(__file__).parent / "{examples_dir}"] if p.is_dir()]
app = build_app("{repo_id}", top_k={top_k}, examples=examples{revision_arg})

if __name__ == "__main__":
    launch_app(app, host=None)  # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, as set on Spaces; else 127.0.0.1:7860
'''

SPACE_README_BODY = """
# {{ title }}

A [Gradio](https://gradio.app) demo of the image classifier [{{ repo_id }}](https://huggingface.co/{{ repo_id }}):
drop in an image and see its top {{ top_k }} labels. Written by `hubclf app {{ repo_id }} --write-space`; run it
locally with `pip install -r requirements.txt gradio=={{ gradio_version }} && python app.py`.
"""


def write_space(
    repo_id: str,
    space_dir: str | os.PathLike,
    *,
    top_k: int = 5,
    examples: Sequence[str | os.PathLike] = (),
    revision: str | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face Space (``app.py``, ``requirements.txt``, ``README.md``, ``examples/``) for ``repo_id``.

    ``app.py`` loads the model by its Hub id; ``README.md`` carries the Space metadata (sdk: gradio, the installed
    gradio version). The folder is written next to ``space_dir`` and renamed into place, with a ``.hubclf-space``
    marker. A non-empty ``space_dir`` is only replaced with ``overwrite=True``, and only if hubclf wrote it (it holds
    the marker); the current folder, a folder above it, the home folder and ``/`` are never replaced. Push it with
    ``hf upload me/flowers-demo DIR . --repo-type space``.

        write_space("me/flowers-alexnet", "space/", examples=["photos/rose.jpg"])
    """
    from huggingface_hub import SpaceCard, SpaceCardData
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    repo_id = repo_id.removeprefix("hf-hub:")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"a Space loads its model from the Hub: give a repo id (owner/name), not {repo_id!r}") from e
    if "/" not in repo_id or Path(repo_id).exists():
        raise ValueError(f"a Space loads its model from the Hub: give its repo id (owner/name), not {repo_id!r}")
    space_dir = Path(space_dir)
    check_space_dir(space_dir, overwrite=overwrite)
    example_files = find_examples(examples) if examples else []
    gradio_version = import_gradio().__version__
    title = title or f"{repo_id.split('/')[-1]} classifier"

    with staged_dir(space_dir) as staging:  # written next to space_dir, swapped in once complete
        card = SpaceCard.from_template(
            SpaceCardData(
                title=title,
                emoji="🏷️",
                colorFrom="indigo",
                colorTo="green",
                sdk="gradio",
                sdk_version=gradio_version,
                app_file="app.py",
                pinned=False,
                models=[repo_id],
                tags=["hubclf", "image-classification", "timm"],
            ),
            template_str="---\n{{ card_data }}\n---\n" + SPACE_README_BODY,
            title=title,
            repo_id=repo_id,
            top_k=top_k,
            gradio_version=gradio_version,
        )
        (staging / "README.md").write_text(card.content.rstrip("\n") + "\n", encoding="utf-8")
        revision_arg = "" if revision is None else f", revision={json.dumps(revision)}"
        app_source = SPACE_APP.format(
            repo_id=repo_id, top_k=top_k, revision_arg=revision_arg, examples_dir=SPACE_EXAMPLES_DIR
        )
        (staging / "app.py").write_text(app_source, encoding="utf-8")
        # gradio itself comes from sdk_version; the model's code (and torch, timm) from hubclf
        (staging / "requirements.txt").write_text(f"hubclf=={__version__}\n", encoding="utf-8")
        if example_files:
            (staging / SPACE_EXAMPLES_DIR).mkdir()
            for index, source in enumerate(example_files):
                shutil.copyfile(source, staging / SPACE_EXAMPLES_DIR / f"{index:02d}-{source.name}")
        # The marker that lets a later --overwrite replace this folder (and no folder hubclf did not write).
        atomic_write_json(staging / SPACE_MARKER, {"written_by": "hubclf app --write-space", "model": repo_id,
                                                   "hubclf_version": __version__})  # fmt: skip
    return space_dir


def check_space_dir(space_dir: Path, *, overwrite: bool) -> None:
    """Refuse a ``--write-space`` folder whose replacement would destroy what hubclf did not write.

    Never replaced: the current folder or one above it (``.``, ``..``, ``/``), and the home folder. A non-empty
    folder only with ``overwrite``, and only one that holds the marker hubclf writes into every Space folder.

        check_space_dir(Path("."), overwrite=True)   # SpaceDirNotEmptyError: ... is the current folder ...
    """
    target = space_dir.expanduser().resolve()
    here, home = Path.cwd().resolve(), Path.home().resolve()
    if target == home or target == Path(target.anchor):
        what = "your home folder" if target == home else "the root folder"
        raise SpaceDirNotEmptyError(f"--write-space {space_dir} is {what}; give a new folder for the Space")
    if target == here or target in here.parents:
        what = "the current folder" if target == here else "a folder above the current one"
        raise SpaceDirNotEmptyError(f"--write-space {space_dir} is {what} ({target}); give a new folder for the Space")
    if not space_dir.exists():
        return
    if not space_dir.is_dir():
        raise SpaceDirNotEmptyError(f"--write-space {space_dir} exists and is not a folder")
    entries = sorted(entry.name for entry in space_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise SpaceDirNotEmptyError(f"{space_dir} exists and is not empty (pass --overwrite to replace it)")
    if not (space_dir / SPACE_MARKER).is_file():
        raise SpaceDirNotEmptyError(
            f"{space_dir} holds files hubclf did not write ({listing(entries, limit=5)}; no {SPACE_MARKER} marker): "
            "--overwrite replaces only a Space folder written by hubclf app --write-space. Give a new folder"
        )


