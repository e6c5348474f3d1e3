"""Self-supervised trainers (SimCLR, BYOL) with and without IDAA, single- or multi-GPU.

Example:
    >>> from idaa_transforms.trainers import TrainConfig
    >>> TrainConfig(dataset="photos", arch="small_cnn", epochs=2).lr
    0.0003
"""

from idaa_transforms.trainers.cli import build_parser, main, parse_args
from idaa_transforms.trainers.config import TrainConfig, add_train_arguments, config_from_args
from idaa_transforms.trainers.engine import EpochMetrics, TrainResult, read_run, train
from idaa_transforms.trainers.evaluation import extract_features, knn_accuracy, knn_predict, linear_probe
from idaa_transforms.trainers.methods import BYOL, SimCLR, build_method
from idaa_transforms.trainers.models import build_encoder, cifar_resnet18, small_cnn

__all__ = [
    "TrainConfig",
    "TrainResult",
    "EpochMetrics",
    "train",
    "read_run",
    "main",
    "parse_args",
    "build_parser",
    "add_train_arguments",
    "config_from_args",
    "SimCLR",
    "BYOL",
    "build_method",
    "build_encoder",
    "cifar_resnet18",
    "small_cnn",
    "extract_features",
    "knn_predict",
    "knn_accuracy",
    "linear_probe",
]
