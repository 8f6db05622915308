"""The ``hubclf`` command line: ``main`` runs one sub-command, ``build_parser`` describes them all, ``run`` is the
``hubclf`` command itself (``main``, then a quick exit).

    from hubclf.cli import main
    main(["predict", "me/flowers-alexnet", "rose.jpg"])
"""

from hubclf.cli.commands import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
