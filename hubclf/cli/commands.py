"""The ``hubclf`` command line.

Each sub-command lives in the module that implements it; this file only wires argparse to them, importing them
lazily so ``hubclf --help`` prints before torch is imported. The train flags are defined once, in
``hubclf.cli.train_flags``.

    hubclf convert alexnet-owt-7be5be79.pth out/model.safetensors --model hubclf_alexnet
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, NoReturn


# ---- convert ---------------------------------------------------------------------------------------------
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="Convert a torchvision .pth state dict into hubclf's model.safetensors")
    p.add_argument("src", help="torchvision state dict (.pth), loaded with torch.load(weights_only=True)")
    p.add_argument("dst", help="output .safetensors file (or a directory, which gets model.safetensors)")
    p.add_argument("--model", default=None, help="hubclf architecture (default: detected from the keys)")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from hubclf.convert import convert_torchvision_checkpoint

    _imports_done()

    out = convert_torchvision_checkpoint(args.src, args.dst, model_name=args.model)
    print(f"wrote {out}")
    return 0


# ---- push (hub I/O) ----------------------------------------------------------------------------------------
def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="Upload a save_pretrained folder to the Hugging Face Hub in one commit, then verify it reloads",
        description="Token: HF_TOKEN or `hf auth login`; server: HF_ENDPOINT (default https://huggingface.co).",
    )
    p.add_argument("model_dir", help="folder written by hubclf.save_pretrained / hubclf train")
    p.add_argument("repo_id", help="Hub repo id, e.g. me/flowers-alexnet (created if missing)")
    p.add_argument(
        "--private", action="store_true", help="create the repo as private; refuse to push to an existing public repo"
    )
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing; default: main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip re-downloading and comparing the logits"
    )
    p.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from hubclf.hub import push_to_hub

    _imports_done()

    # push_to_hub reports the upload and the verification (hubclf.hub), repo creation and retries (hubclf.publish)
    # through loggers: show those lines. Without --private an existing repo keeps its visibility.
    with (
        _messages_on_stderr("hubclf.hub", "%(message)s", level="INFO"),
        _messages_on_stderr("hubclf.publish", "%(message)s", level="INFO"),
    ):
        url = push_to_hub(
            args.model_dir,
            args.repo_id,
            private=True if args.private else None,
            revision=args.revision,
            create_pr=args.create_pr,
            commit_message=args.message,
            verify=args.verify,
        )
    print(url)
    return 0


# ---- train ---------------------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    from hubclf.cli.train_flags import add_train_arguments

    p = sub.add_parser(
        "train",
        help="Fine-tune or feature-extract a classifier on your images (also under `accelerate launch`)",
        description="Train a timm/hubclf classifier on an image folder, a Hub dataset or a saved dataset. "
        "Example: hubclf train --model hubclf_alexnet --data photos/ --img-size 448 224 --freeze backbone "
        "--epochs 5 --output-dir out/",
    )
    add_train_arguments(p)
    p.set_defaults(func=_run_train)


# huggingface_hub and 🤗 datasets print their warnings through handlers of their own; through ours too, each line
# came out twice (an offline Hub retry: 12 lines instead of 6).
_LIBRARIES_THAT_PRINT_THEIR_OWN = ("huggingface_hub", "datasets")


class _PlainLines(logging.Formatter):
    """One process, no --verbose: the message alone ("warning: " before warnings), without Accelerate's
    "[RANK 0] ", which says nothing when there is one rank."""

    def format(self, record: logging.LogRecord) -> str:
        message = _RANK_PREFIX.sub("", super().format(record), count=1)
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


_RANK_PREFIX = re.compile(r"^\[RANK \d+\] ")


class _AboveProgressBars(logging.StreamHandler):
    """A log handler that writes through ``tqdm.write``: an open progress bar is cleared, the line printed and the
    bar drawn again below it, instead of the line landing on the bar's own line ("... ETA 00:00]saved ...")."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm  # imported by then: only a run with progress bars logs much

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _several_processes() -> bool:
    """Started by ``accelerate launch`` / ``torchrun`` with more than one process (read from the environment, so
    nothing is imported to know it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _log_to_stderr(verbose: bool = False) -> None:
    """INFO and above on stderr, unless logging is already set up: plain lines on one process; with ``--verbose`` or
    under several processes a timestamp, the level, the logger and Accelerate's rank, as ``logging.basicConfig``."""
    root = logging.getLogger()
    if root.handlers:  # the caller's (or pytest's) configuration wins, as with basicConfig
        return
    handler = _AboveProgressBars()
    if verbose or _several_processes():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_PlainLines("%(message)s"))
    handler.addFilter(lambda record: not record.name.startswith(_LIBRARIES_THAT_PRINT_THEIR_OWN))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _run_train(args: argparse.Namespace) -> int:
    from hubclf.cli.train_flags import config_from_args
    from hubclf.train.preflight import quick_checks

    config = config_from_args(args)
    quick_checks(config)  # before torch and timm are imported (seconds): a mistyped path is reported at once
    from hubclf.train import TrainingInterrupted, train

    _imports_done()
    _log_to_stderr(verbose=getattr(args, "verbose", False))
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint is ours to print
    try:
        result = train(config)
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return 130  # the shell's code for "stopped by a signal"
    best = result.best_metrics
    print(f"best val top1 {best['top1']:.1%} -> {result.best_model_dir}; final model -> {result.final_model_dir}")
    if result.hub_url:
        print(f"pushed to {result.hub_url}")
    return 0


# ---- lr-find -------------------------------------------------------------------------------------------------
_LR_FIND_FLAGS = ("start_lr", "end_lr", "steps", "loss_smoothing", "diverge_factor", "json")


def _add_lr_find(sub: argparse._SubParsersAction) -> None:
    from hubclf.cli.train_flags import LR_FIND_EXCLUDES, add_train_arguments

    p = sub.add_parser(
        "lr-find",
        help="LR range test: sweep the learning rate exponentially, plot the loss, suggest an LR for `hubclf train`",
        description="Takes hubclf train's flags (model, data, --freeze, --opt, --batch-size...) and trains for "
        "--steps batches, looping over the training images as often as needed, while the LR grows from --start-lr "
        "to --end-lr; stops early when the smoothed loss passes --diverge-factor x its best. Writes "
        "OUTPUT_DIR/lr_find.png and lr_find.json. The suggestion is where the smoothed loss falls fastest (else the "
        "minimum's LR / 10); a flat or noisy curve gives none and says so. Flags that cannot apply to a sweep "
        "(--epochs, --lr, --push-to-hub...) are errors. Example: hubclf lr-find --model hubclf_alexnet --data photos/ "
        "--freeze backbone --output-dir out/",
    )
    group = p.add_argument_group("LR range test")
    group.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
    group.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default: 10)")
    group.add_argument(
        "--steps", type=int, default=100, help="training steps of the sweep, at least 20; the images are looped over "
        "as often as that takes (default: 100)",
    )  # fmt: skip
    group.add_argument(
        "--loss-smoothing",
        type=float,
        default=0.9,
        help="beta of the loss curve's moving average, in [0, 1) (default: 0.9); not label smoothing",
    )
    group.add_argument(
        "--diverge-factor", type=float, default=4.0, help="stop once the smoothed loss is this x its best (default: 4)"
    )
    group.add_argument("--json", action="store_true", help="print the whole result (curve included) as JSON")
    add_train_arguments(p, exclude=LR_FIND_EXCLUDES)  # each excluded flag is an error that says why
    p.set_defaults(func=_run_lr_find)


def _run_lr_find(args: argparse.Namespace) -> int:
    from hubclf.atomic import strict_json_dumps
    from hubclf.cli.train_flags import config_from_args
    from hubclf.train.preflight import quick_checks

    train_flags = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in _LR_FIND_FLAGS})
    config = config_from_args(train_flags)
    quick_checks(config)  # before torch and timm are imported
    from hubclf.train.lr_find import lr_find

    _imports_done()
    with _messages_on_stderr("hubclf.train.lr_find", "hubclf lr-find: %(message)s", level="INFO"):
        result = lr_find(
            config,
            start_lr=args.start_lr,
            end_lr=args.end_lr,
            steps=args.steps,
            smoothing=args.loss_smoothing,
            diverge_factor=args.diverge_factor,
        )
    if args.json:
        print(strict_json_dumps(result.to_dict(), indent=2))  # a diverged loss (NaN/inf) -> null
        return 0
    if result.confident:
        print(f"suggested lr {result.suggested_lr:.3g} ({result.method} of the smoothed loss)")
    else:
        print(f"no confident suggestion: the curve is {result.caveat}; keep --lr {result.suggested_lr:.3g}, or "
              "sweep again with more --steps, a larger --batch-size or a wider --start-lr/--end-lr")  # fmt: skip
    print(
        f"lowest smoothed loss {min(result.smoothed_losses):.4f} at lr {result.min_loss_lr:.3g}; "
        f"{len(result.lrs)} steps, {result.stop_reason}"
    )
    plot = result.plot_path or f"no plot ({result.plot_skipped})"
    print(f"curve: {result.curve_path}; plot: {plot}")
    return 0


# ---- compare ---------------------------------------------------------------------------------------------------
_COMPARE_FLAGS = ("strategies", "lrs", "lr_search", "search_epochs", "in_process", "push_best", "json")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from hubclf.cli.train_flags import COMPARE_EXCLUDES, add_train_arguments

    p = sub.add_parser(
        "compare",
        help="Fine-tune or freeze? Train several strategies with the same budget and compare them",
        description="Trains --model on --data once per strategy (head: frozen backbone; finetune: whole network, "
        "backbone at lr x 0.1; staged: head first, unfrozen after max(1, epochs//4) epochs; scratch: the same "
        "architecture from random weights), all with the same epochs, batch size and seed, each with its own "
        "learning rate: --lr fixes it, otherwise the best of a 3-value grid after --search-epochs short runs. "
        "Every other hubclf train flag applies to every run. "
        "Prints a table (val top-1, wall time, images/s, peak RSS), writes OUTPUT_DIR/compare.json and "
        "compare.png. Example: hubclf compare --model hf-hub:me/base --data photos/ --epochs 5 "
        "--strategies head,finetune,scratch --output-dir cmp/",
    )
    group = p.add_argument_group("comparison")
    group.add_argument(
        "--strategies", default="head,finetune,staged,scratch", help="comma-separated (default: %(default)s)"
    )
    group.add_argument(
        "--lr",
        dest="lrs",
        metavar="LR",
        help="fixed learning rates, e.g. head=3e-2,finetune=1e-3 (a bare 1e-3 fixes all); the others are searched",
    )
    group.add_argument(
        "--lr-search",
        choices=("grid", "lr-find"),
        default="grid",
        help="how an unfixed LR is chosen: grid = best val top-1 of 3 LRs after --search-epochs each; lr-find = "
        "hubclf lr-find's suggestion (one LR range test, faster) (default: grid)",
    )
    group.add_argument("--search-epochs", type=int, default=1, help="epochs of each grid-search run (default: 1)")
    group.add_argument(
        "--in-process",
        action="store_true",
        help="run everything in this process (faster start; peak RSS is then this process's peak so far)",
    )
    group.add_argument(
        "--push-best", metavar="REPO_ID", help="push the winner's best model, with the table in its card"
    )
    group.add_argument("--json", action="store_true", help="print compare.json instead of the table")
    add_train_arguments(
        p,
        exclude=COMPARE_EXCLUDES,
        helps={
            "--output-dir": "a new folder: one hubclf train run per strategy, compare.json, compare.png",
            "--private": "create the --push-best repo as private",
        },
    )
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from hubclf.cli.train_flags import config_from_args
    from hubclf.compare import compare, format_table, parse_lrs, parse_strategies
    from hubclf.train.preflight import quick_checks

    strategies = parse_strategies(args.strategies)
    train_flags = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in _COMPARE_FLAGS})
    config = config_from_args(train_flags)
    quick_checks(config)  # before torch and timm are imported
    _imports_done()
    with _messages_on_stderr("hubclf.compare", "hubclf compare: %(message)s", level="INFO"):
        result = compare(
            config,
            strategies,
            lrs=parse_lrs(args.lrs, strategies),
            search_epochs=args.search_epochs,
            lr_search=args.lr_search,
            isolate=not args.in_process,
            push_best=args.push_best,
        )
    print(result.json_path.read_text(encoding="utf-8") if args.json else format_table(result))
    print(f"wrote {result.json_path} and {result.plot_path}", file=sys.stderr)
    if result.hub_url:  # also in compare.json's hub_url: stdout stays one JSON document with --json
        print(f"pushed {result.best.strategy} to {result.hub_url}", file=sys.stderr if args.json else sys.stdout)
    return 0


# ---- predict / eval -------------------------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="Classify image files or folders with a saved or published model",
        description="Prints the top-k label names with probabilities for every image, using the model's own input "
        "size and normalisation. Exit status: 0 every image was classified, 1 some images could not be read "
        "(each one is reported on stderr), 2 usage error (bad arguments, model or path not found). "
        "Example: hubclf predict me/flowers-alexnet photos/ rose.jpg --top-k 3",
    )
    p.add_argument("model", help="Hub repo id (owner/name), model folder, hf-hub:owner/name or local-dir:PATH")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively, sorted)")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default: 5, capped at the classes)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for decoding (default: 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {path, predictions: [{label, score}], error} (error is null for a readable image)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the probabilities of each image and its horizontal mirror",
    )
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from hubclf.atomic import strict_json_dumps
    from hubclf.predict import format_predictions, predict

    _imports_done()

    with _messages_on_stderr("hubclf.predict", "hubclf predict: %(message)s"):
        results = predict(
            args.model,
            args.images,
            top_k=args.top_k,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            revision=args.revision,
            tta=args.tta,
        )
    if args.json:
        print(strict_json_dumps([result.to_dict() for result in results], indent=2))  # NaN/inf scores -> null
    else:
        print(format_predictions(results))
    failed = sum(result.error is not None for result in results)
    if failed:
        print(f"hubclf predict: {failed} of {len(results)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="Score a model on a labelled dataset: top-1/top-5, per-class accuracy, confusion matrix",
        description="Works under `accelerate launch` (only the main process prints). The dataset's label names must "
        "be among the model's (in any order; fewer is fine). Unreadable images are skipped, reported on stderr and "
        "left out of the metrics. Exit status: 0 evaluated, 2 usage error (bad arguments, label mismatch, model or "
        "data not found). Example: hubclf eval me/flowers-alexnet --data photos/ --split validation --json",
    )
    p.add_argument("model", help="Hub repo id (owner/name), model folder, hf-hub:owner/name or local-dir:PATH")
    p.add_argument(
        "--data",
        required=True,
        help="image folder, save_to_disk directory, Hub dataset id (user/name[@revision]) or labels .csv "
        "(path,label rows; without a split column every row is evaluated)",
    )
    p.add_argument("--split", default=None, help="split to evaluate (default: validation/valid/val/test, if present)")
    p.add_argument("--image-column", default=None, help="image column (default: the dataset's only Image column)")
    p.add_argument("--label-column", default=None, help="label column (default: the ClassLabel or label column)")
    p.add_argument("--labels", default=None, help="CSV of path,label rows for the images in the --data folder")
    p.add_argument("--path-column", default=None, help="the labels CSV's path column (default: detected)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass, per process (default: 32)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for decoding (default: 0)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: score the mean softmax of each image and its horizontal mirror",
    )
    p.add_argument(
        "--show-errors",
        type=int,
        default=0,
        metavar="K",
        help="list the K most confidently wrong images (path, true and predicted label, probability)",
    )
    p.add_argument(
        "--plot", default=None, metavar="PATH", help="draw the confusion matrix (normalised by row) as a PNG at PATH"
    )
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from hubclf.atomic import strict_json_dumps
    from hubclf.evaluate import evaluate_model, format_report

    _imports_done()
    if args.plot:  # before the evaluation, not after it
        from hubclf.plots import matplotlib_missing

        if matplotlib_missing():
            raise RuntimeError(f"--plot: {matplotlib_missing()}")
    accelerator = Accelerator()
    with _messages_on_stderr("hubclf.evaluate", "hubclf eval: %(message)s"):
        result = evaluate_model(
            args.model,
            args.data,
            args.split,
            image_column=args.image_column,
            label_column=args.label_column,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            revision=args.revision,
            labels=args.labels,
            path_column=args.path_column,
            accelerator=accelerator,
            tta=args.tta,
            show_errors=args.show_errors,
        )
    if accelerator.is_main_process:
        if args.plot:
            from hubclf.plots import plot_confusion_matrix

            plot_confusion_matrix(result["confusion_matrix"], result["label_names"], args.plot)
            print(f"hubclf eval: confusion matrix drawn in {args.plot}", file=sys.stderr)
        print(strict_json_dumps(result, indent=2) if args.json else format_report(result))
    return 0


# ---- app (Gradio) ---------------------------------------------------------------------------------------------
def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="Try a model in the browser: a Gradio app with top-k label bars (or write it as a Space)",
        description="Serves a Gradio app on http://HOST:PORT where you upload or paste an image and see the model's "
        "top-k labels, with the model's own input size and normalisation. Needs the app extra: "
        "pip install 'hubclf[app]'. Offline: no analytics, no share link unless --share. "
        "Example: hubclf app me/flowers-alexnet --examples photos/ --port 7860. "
        "With --write-space DIR it writes a Hugging Face Space for the Hub model instead "
        "(push it with: hf upload me/flowers-demo DIR . --repo-type space).",
    )
    p.add_argument("model", help="Hub repo id (owner/name), model folder, hf-hub:owner/name or local-dir:PATH")
    p.add_argument("--top-k", type=int, default=5, help="label bars shown (default: 5, capped at the classes)")
    p.add_argument(
        "--examples", nargs="+", default=[], metavar="DIR_OR_FILE", help="example images: files and/or folders"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--share", action="store_true", help="also ask gradio.live for a public link (off by default)")
    p.add_argument("--title", default=None, help="page title (default: hubclf · MODEL)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    p.add_argument(
        "--write-space",
        default=None,
        metavar="DIR",
        help="write app.py, requirements.txt and README.md (Space metadata) for the Hub model MODEL to DIR, "
        "instead of serving",
    )
    p.add_argument("--overwrite", action="store_true", help="with --write-space: replace a non-empty DIR")
    p.set_defaults(func=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    from hubclf.app import build_app, launch_app, write_space

    _imports_done()

    if args.write_space is not None:
        out = write_space(
            args.model,
            args.write_space,
            top_k=args.top_k,
            examples=args.examples,
            revision=args.revision,
            title=args.title,
            overwrite=args.overwrite,
        )
        space_id = f"{args.model.removeprefix('hf-hub:')}-demo"
        print(f"wrote {out}; push it as a Space with: hf upload {space_id} {out} . --repo-type space")
        return 0
    with _messages_on_stderr("hubclf.app", "hubclf app: %(message)s"):
        app = build_app(
            args.model,
            top_k=args.top_k,
            examples=args.examples,
            title=args.title,
            device=args.device,
            revision=args.revision,
        )
    launch_app(app, host=args.host, port=args.port, share=args.share)


# ---- export ----------------------------------------------------------------------------------------------------
def _add_export(sub: argparse._SubParsersAction) -> None:
    from hubclf.cli.train_flags import IMG_SIZE_FLAG

    p = sub.add_parser(
        "export",
        help="Export a model to ONNX or TorchScript, checked against PyTorch; labels and preprocessing settings "
        "stored as metadata",
        description="Writes OUT only after the exported file reproduces PyTorch's logits (max abs difference <= "
        "--atol) with onnxruntime / torch.jit.load, for a batch of 1 and one of 3. The batch axis is free. Label "
        "names, input size, mean, std, interpolation and crop_pct are stored in the file as metadata (ONNX "
        "metadata_props, TorchScript extra file config.json): the graph takes normalised pixels, your code resizes "
        "and normalises with them. ONNX needs pip install 'hubclf[export]'. Exit status: 0 written, 2 error (nothing "
        "written). Example: hubclf export me/flowers-alexnet flowers.onnx --img-size 448 224 --dynamic",
    )
    p.add_argument("model", help="Hub repo id (owner/name), model folder, hf-hub:owner/name or local-dir:PATH")
    p.add_argument("out", help="output file (.onnx or .pt), or a folder (gets model.onnx / model.pt)")
    # Literals, not hubclf.export's constants: importing it (torch, timm) here would slow down every `hubclf --help`.
    p.add_argument("--format", choices=("onnx", "torchscript"), default=None, help="default: from OUT's suffix")
    p.add_argument(
        "--img-size",
        **IMG_SIZE_FLAG,
        default=None,
        help="export input size HEIGHT WIDTH, e.g. 448 224, or one SIZE for a square (default: the model's saved "
        "input size)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="free height and width too, not only the batch (ONNX); also checks a second rectangular size (5/7 of "
        "each side)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="max abs logit difference allowed (default: 1e-4)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from hubclf.export import export_model

    _imports_done()

    with _messages_on_stderr("hubclf.export", "hubclf export: %(message)s", level="INFO"):
        result = export_model(
            args.model,
            args.out,
            format=args.format,
            img_size=args.img_size,
            dynamic=args.dynamic,
            atol=args.atol,
            revision=args.revision,
        )
    print(result.summary())
    return 0


@contextlib.contextmanager
def _messages_on_stderr(logger_name: str, fmt: str, level: str | None = None) -> Iterator[None]:
    """Show a module's log lines (e.g. one per unreadable image) on stderr while a command runs."""
    module_logger = logging.getLogger(logger_name)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    previous_level = module_logger.level
    module_logger.addHandler(handler)
    if level is not None:
        module_logger.setLevel(level)
    try:
        yield
    finally:
        module_logger.removeHandler(handler)
        module_logger.setLevel(previous_level)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = None
    if port is None or not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a number between 1 and 65535, got {text!r}")
    return port


def _versions() -> str:
    """hubclf's version and those of the libraries a bug report needs, read without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    from hubclf._version import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ("torch", "torchvision", "timm", "huggingface_hub", "accelerate", "datasets", "safetensors")
    return f"hubclf {__version__} (" + ", ".join(f"{name} {installed(name)}" for name in libraries) + ")"


class _PrintVersions(argparse.Action):
    """argparse's own "version" action re-wraps the text to the terminal; a bug report wants it on one line."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(_versions())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, with hubclf's errors: one line, named after the command (``hubclf train: error: ...``), a close
    flag suggested for an unknown one, and no usage block (``--help`` has it: dozens of lines for train)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args: list[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:  # reported by the command that was given them, not by the top-level parser
            command = getattr(parsed, "command", None)
            parser = getattr(self, "commands", {}).get(command, self)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{_did_you_mean(parser, unknown)}")
        return parsed


def _did_you_mean(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """``; did you mean --epochs?`` for the first unknown flag that is close to one of ``parser``'s."""
    flags = [flag for action in parser._actions if action.help != argparse.SUPPRESS for flag in action.option_strings]
    for argument in unknown:
        if argument.startswith("-"):
            close = difflib.get_close_matches(argument.split("=", 1)[0], flags, n=2, cutoff=0.6)
            if close:
                return f"; did you mean {' or '.join(close)}?"
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hubclf", description="Turn an image folder into a published, reusable timm classifier.")
    parser.add_argument("--version", action=_PrintVersions, help="print the versions of hubclf and its libraries")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In the order a user meets them: train (and its helpers), check and use the model, publish it, the rest.
    adders = (_add_train, _add_lr_find, _add_compare, _add_predict, _add_eval, _add_push, _add_app, _add_export,
              _add_convert)  # fmt: skip
    for add in adders:
        add(sub)
    parser.commands = sub.choices  # type: ignore[attr-defined]  # name -> the command's own parser
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; an error is ONE line on stderr and exit status 2, never a traceback. One that bad input
    cannot explain (an AssertionError deep in a library, say) is labelled an internal error.

    HUBCLF_DEBUG=1 re-raises it with its traceback instead.

        sys.exit(main(["predict", "me/flowers-alexnet", "rose.jpg"]))
    """
    args = None
    try:
        from hubclf.logs import redacted_logs

        args = build_parser().parse_args(argv)
        with redacted_logs():  # no Hub token or signed storage URL in any log line of any command
            return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C at any moment, imports included: one line, the shell's code for SIGINT
        if os.environ.get("HUBCLF_DEBUG"):
            raise
        print(f"{_prog(args)}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("HUBCLF_DEBUG"):
            raise
        message = _one_line(e)
        if not isinstance(e, _user_errors()):  # a bug of hubclf's or a library's: still one line, and how to report it
            name = type(e).__name__
            message = (
                f"internal error, {message if message.startswith(name) else f'{name}: {message}'} "
                "(HUBCLF_DEBUG=1 shows the traceback; please report it)"
            )
        print(f"{_prog(args)}: error: {message}", file=sys.stderr)
        return 2


_COLLECTOR_OFF_FOR_IMPORTS = False  # set by run(): the garbage collector waits for the command's imports


def run() -> NoReturn:
    """The ``hubclf`` command and ``python -m hubclf.cli``: ``main`` on ``sys.argv``, then exit with its status.

    Two things keep CPython's cyclic garbage collector from walking torch's, timm's and sympy's ~450k objects again
    and again with nothing to find:

    - it is off while the command imports them: the import made 7 full collections (up to 0.2 s each on 2 CPU
      cores, 0.7 s of start-up in all) and found under 100 objects; ``_imports_done`` freezes what the imports
      made and turns it back on;
    - the last collection at exit is skipped the same way (``gc.freeze``): ~1 s to free memory the operating
      system takes back anyway. atexit handlers, ``weakref.finalize`` callbacks, DataLoader workers and logging's
      flush still run, and every file hubclf writes is complete and fsynced before ``main`` returns.

    Only in this function, so that tests and programs calling ``main`` keep their collector as it is.

        $ hubclf predict me/flowers-alexnet rose.jpg
    """
    global _COLLECTOR_OFF_FOR_IMPORTS
    gc.disable()
    _COLLECTOR_OFF_FOR_IMPORTS = True
    status = main()
    gc.freeze()
    sys.exit(status)


def _imports_done() -> None:
    """Each command calls this once its modules are imported, before its work: under ``run``, the objects the
    imports made are frozen (no collection walks them again) and the collector is back on. Elsewhere: nothing."""
    global _COLLECTOR_OFF_FOR_IMPORTS
    if _COLLECTOR_OFF_FOR_IMPORTS:
        _COLLECTOR_OFF_FOR_IMPORTS = False
        gc.freeze()
        gc.enable()


def _prog(args: argparse.Namespace | None) -> str:
    """``hubclf train``, or ``hubclf`` before the command line was read."""
    return f"hubclf {args.command}" if args is not None else "hubclf"


def _user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: a missing file, folder, Hub repo or revision, an unreachable Hub, a broken or hostile
    config.json / model.safetensors (ValueError, UnicodeDecodeError, RecursionError, SafetensorError), no memory.

    Evaluated only when an exception reaches ``main``, so these imports cost nothing on the happy path.
    """
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError

    return ValueError, OSError, RuntimeError, MemoryError, EntryNotFoundError, SafetensorError


def _one_line(error: BaseException, limit: int = 2000) -> str:
    """The error message on one line: tokens and signed URLs redacted, whitespace runs (Hub errors span several
    lines) collapsed, control characters escaped (messages may quote an untrusted file), at most ``limit`` characters.
    """
    from hubclf.logs import redact
    from hubclf.text import printable

    message = _worker_error(str(error))
    message = " ".join(redact(message).split()) or type(error).__name__
    if not type(error).__module__.startswith(("builtins", "hubclf")):
        message = f"{type(error).__name__}: {message}"
    message = printable(message)
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _worker_error(message: str) -> str:
    """An exception re-raised by a DataLoader worker carries the worker's whole traceback as its message ("Caught
    BadImageError in DataLoader worker process 0. Original Traceback ..."): keep its last line, the error itself,
    without the module path, and say a file's path once.

        _worker_error("Caught X in DataLoader worker process 0.\\n...\\nhubclf.data.images.BadImageError: bad")  # 'bad'
    """
    if "Original Traceback" in message:
        message = next((line for line in reversed(message.splitlines()) if line.strip()), message).strip()
        message = re.sub(r"^[\w.]+(Error|Exception|Warning): ", "", message)
    path = re.match(r"cannot read image (.+?): ", message)
    return message.replace(f" '{path.group(1)}'", "") if path else message  # PIL repeats the path: once will do


if __name__ == "__main__":
    sys.exit(main())
