"""The documentation's examples are tests: README.md and docs/**/*.md.

- **Python.** Every ```` ```python ```` block runs, and every ```` ```pycon ```` block runs as a doctest (its
  printed output must match). A page's blocks run in order, in one namespace, so a later block uses what an earlier
  one made, like a reader pasting them one after the other.
- **Shell.** ```` ```bash ```` blocks are not executed, but every ``hubclf ...`` command in them (and every
  ``$ hubclf ...`` line of an output listing) must parse: it goes through ``hubclf.cli.build_parser().parse_args``.
  A command with shell syntax that cannot be resolved without a shell (``$VAR``, globs, redirections) is skipped,
  visibly.

The world each page runs in, offline (fixtures below):

- a fresh, empty working folder holding ``photos/{train,validation}/{daisy,rose,tulip}/*.jpg`` (6 + 2 small
  JPEGs per class), ``rose.jpg`` and ``daisy.jpg``;
- a fresh local Hub (``tests/hubserver.py``) where the user ``me`` is logged in (``HF_ENDPOINT``, ``HF_TOKEN``);
- torchvision's AlexNet ImageNet weights in torch.hub's cache (``TORCH_HOME``), so ``pretrained=True`` loads
  without a download: a random-init torchvision AlexNet saved under the release's file name, as the test suite's
  ``torchvision_checkpoint`` fixture makes it (tests/conftest.py). hubclf_alexnet and hubclf_alexnet_slim use it;
- and, for the pages listed in ``PAGE_SETUP``, what their text says already exists: ``flowers`` = the model folder
  ``out/flowers`` (``hubclf_alexnet_slim``, 3 classes daisy/rose/tulip, 448×224, written by
  ``hubclf.save_pretrained``) and the same model pushed as ``me/flowers-alexnet``.

**Skipping a block.** Put ``<!-- docs-test: skip REASON -->`` on the line right before its opening fence. Skipped
blocks are reported as warnings in pytest's summary. Prefer making the block runnable.
"""

from __future__ import annotations

import doctest
import shutil
import warnings
from pathlib import Path

import pytest

from tests.docs_examples import (
    REPO_ROOT,
    code_blocks,
    doc_pages,
    hubclf_command_lines,
    make_photos,
    pages_with_examples,
    prose_names,
)
from tests.hub_fixtures import point_hub_clients_at
from tests.hubserver import HubServer

PAGE_SETUP = {
    "docs/predict.md": ("flowers",),
    "docs/export.md": ("flowers",),
    "docs/app.md": ("flowers",),
}
TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"  # the file name of torchvision's release (hubclf_alexnet's url)


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


# ---- the world ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def docs_templates(tmp_path_factory: pytest.TempPathFactory, torchvision_checkpoint) -> dict[str, Path]:
    """Made once per session: the photos, torch.hub's cache with the AlexNet weights, the ``out/flowers`` model."""
    import timm

    import hubclf

    photos = tmp_path_factory.mktemp("docs-photos")
    make_photos(photos)
    torch_home = tmp_path_factory.mktemp("docs-torch-home")
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(torchvision_checkpoint("alexnet")[0], checkpoints / TORCHVISION_ALEXNET)
    flowers = tmp_path_factory.mktemp("docs-flowers") / "flowers"
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3, img_size=(448, 224))
    hubclf.save_pretrained(model, flowers, label_names=["daisy", "rose", "tulip"])
    return {"photos": photos, "torch_home": torch_home, "flowers": flowers}


@pytest.fixture
def docs_world(docs_templates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh working folder and a fresh local Hub for one page; returns ``setup(name)`` for ``PAGE_SETUP``."""
    work = tmp_path / "work"
    shutil.copytree(docs_templates["photos"], work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("TORCH_HOME", str(docs_templates["torch_home"]))
    with HubServer(tmp_path / "hub", user="me") as hub:
        point_hub_clients_at(monkeypatch, hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", hub.token)

        def setup(name: str) -> None:
            if name != "flowers":
                raise ValueError(f"PAGE_SETUP names an unknown setup {name!r}")
            import hubclf

            shutil.copytree(docs_templates["flowers"], work / "out" / "flowers")
            hubclf.push_to_hub(work / "out" / "flowers", "me/flowers-alexnet", verify=False)

        yield setup


# ---- Python blocks ------------------------------------------------------------------------------------------------
def test_page_setups_name_existing_pages():
    for page in PAGE_SETUP:
        assert (REPO_ROOT / page).is_file(), f"PAGE_SETUP names {page}, which does not exist"


@pytest.mark.parametrize("page", pages_with_examples(), ids=_rel)
def test_python_examples_run(page: Path, docs_world):
    for name in PAGE_SETUP.get(_rel(page), ()):
        docs_world(name)
    namespace: dict = {"__name__": "__docs__"}
    skipped = []
    for block in code_blocks(page):
        if block.lang not in ("python", "pycon"):
            continue
        if block.skip_reason is not None:
            skipped.append(f"{block.where} ({block.skip_reason})")
            continue
        if block.lang == "python":
            exec(compile(block.code, block.where, "exec"), namespace)
        else:
            _run_doctest(block, namespace)
    if skipped:
        warnings.warn(f"{_rel(page)}: {len(skipped)} block(s) not run: {'; '.join(skipped)}", stacklevel=1)


def _run_doctest(block, namespace: dict) -> None:
    test = doctest.DocTestParser().get_doctest(block.code, namespace, block.where, str(block.path), block.line - 1)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=report.append, clear_globs=False)
    assert runner.failures == 0, f"{block.where}: the pycon block's output differs\n" + "".join(report)


# ---- names in the prose -------------------------------------------------------------------------------------------
_NAMES = [found for page in doc_pages() for found in prose_names(page)]


@pytest.mark.parametrize(("where", "name"), _NAMES, ids=[f"{where}:{name}" for where, name in _NAMES])
def test_hubclf_names_in_the_prose_exist(where: str, name: str):
    """`hubclf.train.lr_find.lr_find` in a sentence names a module or an object that must exist: imported (the
    longest importable prefix), then looked up attribute by attribute."""
    import importlib

    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
            break
        except ModuleNotFoundError as error:
            if error.name not in {".".join(parts[:i]) for i in range(2, end + 1)}:
                raise  # a module of the name exists but imports something missing: say so
    for attribute in parts[end:]:
        assert hasattr(found, attribute), f"{where}: `{name}` does not exist (no {attribute!r} in {found!r})"
        found = getattr(found, attribute)


# ---- hubclf command lines -----------------------------------------------------------------------------------------
_COMMANDS = [command for page in doc_pages() for command in hubclf_command_lines(page)]


def test_the_docs_show_hubclf_commands():
    assert len(_COMMANDS) >= 20, f"only {len(_COMMANDS)} hubclf command lines found: is the extraction broken?"


@pytest.mark.parametrize("command", _COMMANDS, ids=[c.where for c in _COMMANDS])
def test_hubclf_command_lines_parse(command, capsys):
    from hubclf.cli import build_parser

    if command.argv is None:
        pytest.skip(f"{command.where}: not resolvable without a shell ({command.unresolved}): {command.text}")
    try:
        build_parser().parse_args(command.argv)
    except SystemExit as stop:  # argparse's way to say "error" (2), or --help / --version (0)
        assert stop.code == 0, f"{command.where}: `{command.text}` does not parse:\n{capsys.readouterr().err}"


# ---- the README's first screen --------------------------------------------------------------------------------------
def test_the_readme_first_screen_is_install_train_predict_push_on_your_own_folder():
    # It was the demo; installing into one's own environment had no line.
    first_screen = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:24]
    text = "\n".join(first_screen)
    assert "your own environment" in text and "pip install 'hubclf" in text
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    commands = [line.split("#")[0].strip() for line in block if not line.startswith("#")]
    assert [c.split()[1] if c.startswith("hubclf") else c.split()[0] for c in commands] == [
        "pip", "train", "predict", "hf", "push"
    ]  # fmt: skip
    assert "--data photos/" in commands[1] and "--img-size" not in commands[1]  # the size comes from the photos
    assert "scripts/demo.sh" not in text  # the demo comes after
    assert len((REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
