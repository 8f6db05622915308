"""``python -m hubclf.cli ...``: the same as the ``hubclf`` command."""

import sys

from hubclf.cli.commands import main

sys.exit(main())
