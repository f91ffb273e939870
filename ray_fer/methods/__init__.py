"""Every method ray_fer trains, one unit each, registered by name.

A method module holds its network(s), its steps and losses, its options dataclass and
packaged config, and declares what the rest of ray_fer needs to know (task, metric and
mode, Grad-CAM layer, worker limit, figures, whether its checkpoints hold an inference
network) by registering itself (:mod:`ray_fer.methods.registry`). The training loop,
tune, evaluate, explain, predict and export ask the registry; none names a method.

Importing this package imports every method module below, each of which registers its own
on import; adding a method is one module and one line here. Shared pieces live beside them:
:mod:`.classify` (the classification steps and :func:`~.classify.register_classifier`),
:mod:`.va` (V/A validation), :mod:`.optim`, :mod:`.metrics`, :mod:`.base`, and the
building blocks of networks in :mod:`ray_fer.models.layers`.
"""

from ray_fer.methods import (  # noqa: F401  (each module registers its methods on import)
    caf,
    deep_emotion,
    dense_head,
    ensemble,
    face_ae,
    resnet,
    vgg,
)
