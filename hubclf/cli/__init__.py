"""The ``hubclf`` command line: ``main`` runs one sub-command, ``build_parser`` describes them all.

    from hubclf.cli import main
    main(["predict", "me/flowers-alexnet", "rose.jpg"])
"""

from hubclf.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
