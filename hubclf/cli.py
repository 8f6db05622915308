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
    pass  # owned by the Hub I/O work (hubclf/hub.py)


# ---- train ---------------------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    pass  # owned by the training work (hubclf/train/)


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
