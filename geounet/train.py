"""Training a binary U-Net on rasters (GeoTIFF, PNG, JPEG) with raster or vector labels.

The public names of training, in one place; the parts live in :mod:`geounet.training`, one
role per module (settings, data, losses, validation, sampler, state, loop)::

    from geounet.train import TrainConfig, train_model
    result = train_model(TrainConfig.load("run.yaml"), "model.safetensors")
"""

from geounet.training.config import TrainConfig
from geounet.training.loop import TrainResult, train_model
from geounet.training.state import last_paths

__all__ = ["TrainConfig", "TrainResult", "last_paths", "train_model"]
