"""Training one run: its plan (:mod:`.plan`), its driver (:mod:`.driver`), the worker loop
(:mod:`.worker`, :mod:`.epoch`, :mod:`.collectives`), the seam to Ray (:mod:`.runtime`) and
its TensorBoard (:mod:`.tensorboard`). Methods plug in through
:mod:`ray_fer.methods.registry`; nothing here names one."""
