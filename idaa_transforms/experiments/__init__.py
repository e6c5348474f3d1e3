"""Controlled comparisons of IDAA against baselines and controls (see :mod:`idaa_transforms.experiments.compare`)."""
