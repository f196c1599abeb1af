"""`python -m tunestep.server`: the same as `tunestep serve`."""

import sys

from tunestep.server.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
