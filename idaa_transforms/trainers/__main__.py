"""``python -m idaa_transforms.trainers`` (the ``idaa-train`` console script): the trainers' command line."""

import sys

from idaa_transforms.trainers.cli import main

if __name__ == "__main__":
    sys.argv[0] = "python -m idaa_transforms.trainers"
    sys.exit(main())
