"""``python -m idaa_transforms.trainers``: the trainers' command line."""

from idaa_transforms.trainers.cli import main

if __name__ == "__main__":
    main()
