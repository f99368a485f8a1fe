"""Training a U-Net, binary or multi-class, on rasters (GeoTIFF, PNG, JPEG) with labels.

The public entry points are in :mod:`geounet.train` (``TrainConfig``, ``train_model``,
``TrainResult``, ``last_paths``). This package holds the parts, one role per module, each
depending only on those listed before it:

- :mod:`~geounet.training.config`: the run's settings (YAML keys and CLI flags) and its
  (image, label) pairs.
- :mod:`~geounet.training.data`: scenes (an image with its target, in memory or read by
  window), the validation hold-out, band statistics, the windows a scene is scored in.
- :mod:`~geounet.training.losses`: the training losses by name.
- :mod:`~geounet.training.validation`: scoring the model on windows of scenes.
- :mod:`~geounet.training.sampler`: random training windows, their augmentation and the
  mining of hard pixels they may be centred on.
- :mod:`~geounet.training.state`: the last checkpoint and the optimizer/RNG state beside it,
  written every epoch and checked before a run resumes from it.
- :mod:`~geounet.training.loop`: the epochs: learning-rate schedule, steps, validation,
  checkpoints, stopping.

On the CPU, the same seed and thread count give the same weights.
"""
