"""`python -m imgsearch ...` is the `imgsearch` command."""
import sys

from .cli import main

sys.exit(main())
