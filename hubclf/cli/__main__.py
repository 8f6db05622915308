"""``python -m hubclf.cli ...``: the same as the ``hubclf`` command."""

from hubclf.cli.commands import run

run()
