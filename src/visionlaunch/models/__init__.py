"""Hand-built image classifiers, looked up by name: ``build_model("cnn", (3, 32, 32), 10, {"channels": [32, 64]})``.

Every model exposes its final linear layer as ``.classifier`` and its input size as ``.feature_dim``.
"""

# Importing the model modules registers their builders.
from visionlaunch.models import cnn, fcn, resnet, resnet9  # noqa: F401
from visionlaunch.models.inspection import capture_features, count_parameters, layer_names, model_summary
from visionlaunch.models.registry import build_model, model_args, model_names, register, validate_model_args

__all__ = ["build_model", "capture_features", "count_parameters", "layer_names", "model_args", "model_names",
           "model_summary", "register", "validate_model_args"]
