"""`python -m pix2pix_fast ...` is `pix2pix-fast ...` (the form torchrun launches)."""
import sys

from pix2pix_fast.cli import main

sys.exit(main())
