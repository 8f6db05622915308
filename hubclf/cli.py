"""The ``hubclf`` command line.

Each sub-command lives in the module that implements it; this file only wires argparse to them,
importing lazily so ``hubclf --help`` stays fast.

    hubclf convert alexnet-owt-7be5be79.pth out/model.safetensors --model hubclf_alexnet
"""

from __future__ import annotations

import argparse
import sys


# ---- convert ---------------------------------------------------------------------------------------------
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="Convert a torchvision .pth state dict into hubclf's model.safetensors")
    p.add_argument("src", help="torchvision state dict (.pth), loaded with torch.load(weights_only=True)")
    p.add_argument("dst", help="output .safetensors file (or a directory, which gets model.safetensors)")
    p.add_argument("--model", default=None, help="hubclf architecture (default: detected from the keys)")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from hubclf.convert import convert_torchvision_checkpoint

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
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing; default: main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip re-downloading and comparing the logits"
    )
    p.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    import logging

    from hubclf.hub import push_to_hub

    # push_to_hub reports the upload and the verification through its logger: show those lines on stderr.
    hub_logger = logging.getLogger("hubclf.hub")
    handler = logging.StreamHandler()
    hub_logger.addHandler(handler)
    previous_level = hub_logger.level
    hub_logger.setLevel(logging.INFO)
    try:
        url = push_to_hub(
            args.model_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            commit_message=args.message,
            verify=args.verify,
        )
    finally:
        hub_logger.removeHandler(handler)
        hub_logger.setLevel(previous_level)
    print(url)
    return 0


# ---- train ---------------------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    from hubclf.train.config import add_train_arguments

    p = sub.add_parser(
        "train",
        help="Fine-tune or feature-extract a classifier on your images (also under `accelerate launch`)",
        description="Train a timm/hubclf classifier on an image folder, a Hub dataset or a saved dataset. "
        "Example: hubclf train --model hubclf_alexnet --data photos/ --img-size 448 224 --freeze backbone "
        "--epochs 5 --output-dir out/",
    )
    add_train_arguments(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import logging

    from hubclf.train import TrainingInterrupted, train
    from hubclf.train.config import config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint is ours to print
    config = config_from_args(args)
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


# ---- predict / eval -------------------------------------------------------------------------------------------
def _add_predict(sub: argparse._SubParsersAction) -> None:
    pass  # owned by the predict/eval work


def _add_eval(sub: argparse._SubParsersAction) -> None:
    pass  # owned by the predict/eval work


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubclf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_convert, _add_push, _add_train, _add_predict, _add_eval):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # User-facing errors get one clear line, not a traceback; HUBCLF_DEBUG=1 shows the traceback.
        import os

        if os.environ.get("HUBCLF_DEBUG"):
            raise
        print(f"hubclf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
