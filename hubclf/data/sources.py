"""Where images come from: an image folder, a labels CSV, a ``save_to_disk`` folder or a Hub dataset (what
``--data`` names, parsed once by ``hubclf.refs.DataSource``), and image files given one by one.

    splits = open_dataset("photos/")                  # DatasetDict with an Image and a ClassLabel column
    files = find_images(["cat.jpg", "more/"])         # what predict classifies
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hubclf.atomic import file_kind
from hubclf.data.folders import IMAGE_SUFFIXES, scan_class_folders
from hubclf.refs import SAVED_DATASET_MARKERS, DataSource
from hubclf.text import listing

if TYPE_CHECKING:  # imported when a dataset is opened: finding image files (predict) does without it
    import datasets


def open_dataset(
    data: str | DataSource,
    *,
    labels: str | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    unsplit_name: str = "train",
) -> datasets.DatasetDict:
    """A ``DatasetDict`` from a ``save_to_disk`` directory, an imagefolder directory, a CSV of labels or a Hub id.

    A Hub id may name a revision: ``user/name@v2``. ``labels`` (a CSV) gives the labels of the images in the
    ``data`` folder; ``path_column``/``label_column`` name its columns, and a CSV without a split column becomes
    one split called ``unsplit_name``. Example::

        open_dataset("user/flowers@main")["train"]
    """
    import datasets

    from hubclf.data.csv_labels import read_labels_csv  # its own module; it builds on the label helpers

    source = data if isinstance(data, DataSource) else DataSource.parse(data, labels=labels)
    data = source.text
    if source.is_stream:  # read shard by shard by hubclf.data.streaming, never loaded whole
        raise ValueError(
            f"--data {data} is streamed data ({source.kind}); this command loads a dataset whole: give an image "
            "folder, a saved dataset or a Hub dataset without --streaming"
        )
    if path_column is not None and source.kind != "csv":
        raise ValueError("--path-column names a column of a labels CSV: give the CSV with --data or --labels")
    if source.kind == "csv":
        csv_path, image_root = (source.labels, source.path) if source.labels is not None else (source.path, None)
        return read_labels_csv(
            csv_path, image_root=image_root, path_column=path_column, label_column=label_column,
            unsplit_name=unsplit_name,
        )  # fmt: skip
    if source.kind == "saved":
        loaded = datasets.load_from_disk(str(source.path))
    elif source.kind == "folder":
        loaded = _load_image_folder(source.path, data)
    else:
        try:
            loaded = datasets.load_dataset(source.repo_id, revision=source.revision)
        except ConnectionError as e:  # say both readings: a mistyped folder is the likelier one offline
            raise FileNotFoundError(f"--data {data}: no such folder here, and as a Hub dataset id: {e}") from e
        if isinstance(loaded, (datasets.Dataset, datasets.DatasetDict)):
            check_remote_images(loaded, source.repo_id, data)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"--data {data} loaded as {type(loaded).__name__}; streaming datasets are not supported")
    return loaded


def _load_image_folder(path: Path, data: str) -> datasets.DatasetDict:
    """🤗 datasets' imagefolder, with its silent layout outcomes handled: no images is an error; and as it infers
    labels only from at least 2 class folders holding every image at the same depth, a single class folder (fine
    to evaluate on) is read again with its label, and images at mixed depths are an error. The usual layouts are
    read in one walk of the tree instead (``hubclf.data.folders``: the same splits, rows and features)."""
    import datasets

    scanned = scan_class_folders(path)
    if scanned is not None:
        return datasets.DatasetDict({name: split.to_dataset() for name, split in scanned.items()})
    try:
        with _no_progress_bars():  # "Downloading data" for files that are already here says nothing
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    except datasets.data_files.EmptyDatasetError:
        raise FileNotFoundError(
            f"--data {data}: no images found; an image folder holds one subfolder of images per class "
            f"({Path(data) / 'cat' / '1.jpg'}, {Path(data) / 'dog' / '2.jpg'})"
        ) from None
    if any(list(split.features) != ["image"] for split in loaded.values()):  # labels, or a metadata file's columns
        return loaded
    # Forced labels come from each image's folder: one name means a single class folder; more, mixed depths
    # (photos/cat/1.jpg next to photos/2.jpg would make a class "photos").
    with _no_progress_bars():
        labelled = datasets.load_dataset("imagefolder", data_dir=str(path), drop_labels=False)
    if all(len(split.features["label"].names) == 1 for split in labelled.values()):
        return labelled
    raise ValueError(
        f"--data {data}: no class labels: an image folder needs one subfolder per class with every image at the "
        f"same depth ({Path(data) / 'cat' / '1.jpg'}, {Path(data) / 'dog' / '2.jpg'}); or give the labels in a CSV "
        "with --labels"
    )

def check_remote_images(loaded: datasets.Dataset | datasets.DatasetDict, repo_id: str, data: str) -> None:
    """A Hub dataset's images must come from the dataset itself: every image cell carries its bytes, or names a
    file that 🤗 datasets downloaded from the repo (an imagefolder repo's files in the Hub cache, or what it
    extracted from the repo's archives). A cell ``{"bytes": null, "path": "/home/me/secret.png"}`` would make hubclf
    open a file on this machine (a FIFO there hangs the run): a ``ValueError`` naming the rows.

    Only the ``path`` field of cells without bytes is read, with Arrow, so no image is loaded.

        check_remote_images(datasets.load_dataset("user/flowers"), "user/flowers", "user/flowers")
    """
    import datasets
    import pyarrow.compute as pc
    from huggingface_hub import constants

    roots = [
        os.path.realpath(Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"),
        os.path.realpath(datasets.config.DOWNLOADED_DATASETS_PATH),
    ]
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    for name, split in splits:
        for column, feature in split.features.items():
            if not isinstance(feature, datasets.Image):
                continue
            cells = split.data.column(column)
            without_bytes = pc.is_null(pc.struct_field(cells, "bytes"))
            paths = pc.struct_field(cells, "path").to_pylist()
            outside = [
                (row, path)
                for row, (missing, path) in enumerate(zip(without_bytes.to_pylist(), paths, strict=True))
                if missing and not _inside(path, roots)
            ]
            if outside:
                raise ValueError(
                    f"--data {data}: {len(outside)} image(s) of the {name!r} split carry no image bytes but a path on "
                    f"this machine (row {listing(outside, show=lambda item: f'{item[0]}: {item[1]!r}')}); the images "
                    "of a Hub dataset must come from the dataset, so hubclf does not open local files for it"
                )


def _inside(path: str | None, roots: list[str]) -> bool:
    if not path:
        return False
    real = os.path.realpath(path)
    return any(real.startswith(root + os.sep) for root in roots)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """🤗 datasets' progress bars off while it indexes a local folder ("Downloading data", "Generating train split"
    for files already on disk), as they were afterwards."""
    import datasets

    were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.enable_progress_bars()


def find_empty_class_folders(data: str) -> list[str]:
    """Class folders of a local image folder that hold no image, as paths relative to it (``[]`` for other data).

    The imagefolder loader names classes after the folders that hold images, so an empty folder silently is no
    class at all. A class folder is a sibling of a folder that holds images directly (``root/<class>/`` or
    ``root/<split>/<class>/``). Example::

        find_empty_class_folders("photos/")   # ["tulip"] when photos/tulip/ is empty
    """
    root = Path(data).expanduser()
    if not root.is_dir() or any((root / marker).is_file() for marker in SAVED_DATASET_MARKERS):
        return []
    def visible(path: Path) -> bool:  # datasets skips hidden files and folders, and __pycache__-like ones
        return not any(part.startswith((".", "__")) for part in path.relative_to(root).parts)

    # One walk, keeping folders only: a list of every image path would hold a million Path objects at 1M images.
    class_roots, with_images = set(), set()
    for folder, folders, files in os.walk(root):
        folders[:] = [name for name in folders if not name.startswith((".", "__"))]  # hidden: not walked
        folder = Path(folder)
        if any(
            Path(name).suffix.lower() in IMAGE_SUFFIXES
            and not name.startswith((".", "__"))
            and (folder / name).is_file()
            for name in files
        ):
            with_images.update([folder, *folder.parents])
            if folder != root:
                class_roots.add(folder.parent)
    empty = [
        folder
        for class_root in class_roots
        for folder in class_root.iterdir()
        if folder.is_dir() and visible(folder) and folder not in with_images
    ]
    return sorted(folder.relative_to(root).as_posix() for folder in empty)


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand ``paths``: files are kept as given, folders become their image files (recursive, sorted).

    Hidden files and folders are skipped, and so is anything in a folder that is not a regular file (a FIFO,
    device or socket). A path that does not exist is an error, and so is a named path that is not a regular file
    (decided from its ``stat``, without opening it), and finding no image at all.

        find_images(["cat.jpg", "more/"])   # [Path("cat.jpg"), Path("more/a.png"), Path("more/sub/b.jpg")]
    """
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
        elif path.exists():
            kind = path.stat().st_mode
            if not stat.S_ISREG(kind):  # a FIFO would block the read forever; a device could be endless
                raise ValueError(f"{path} is {file_kind(kind)}, not an image file")
            found.append(path)  # named explicitly: try it whatever its extension
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        raise ValueError(f"no image files found in {[str(p) for p in paths]} (looked for {sorted(IMAGE_SUFFIXES)})")
    return found
