"""What a run's networks are built for: the data's classes and the input they read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataInfo:
    """The class names of the data (from its manifest) and the image size and channels
    the model reads (configured, else the model's own); checkpoints record it."""

    class_names: list[str]
    image_size: int
    channels: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
