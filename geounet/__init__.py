"""geounet: streaming tiled U-Net segmentation of large GeoTIFFs."""

__version__ = "0.1.0"
