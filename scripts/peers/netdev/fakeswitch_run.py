"""Run fake-switches 1.5.0 (same arguments as the `fake-switches` command) with WARNING logging.

fake_switches.cmd.main sets the root logger to DEBUG at import time and then logs every line
of every session; this wrapper lowers it before starting the Twisted reactor.
"""
import logging
import sys

from fake_switches.cmd import main as fs_main

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.argv[0] = "fake-switches"
    sys.exit(fs_main.main())
