"""Entry point of the frozen app (PyInstaller runs this script; `python -m app` is the same from source)."""

import multiprocessing
import sys

from app.__main__ import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
