#!/usr/bin/env bash
# placeholder: the Hub test-server work installs olah 0.5.4 into .venv-olah here.
exit 0
