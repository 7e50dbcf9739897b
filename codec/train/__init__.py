"""Training: config (:mod:`.config`), data (:mod:`.data`), losses (:mod:`.losses`), discriminators
(:mod:`.discriminators`), the trainer (:mod:`.trainer`), export (:mod:`.export`) and the CLI (:mod:`.cli`).

Entry points: ``codec train CONFIG.yaml [key=value ...]``, ``python -m codec.train CONFIG.yaml`` and
``torchrun --nproc_per_node N -m codec.train CONFIG.yaml``.  Heavy modules are imported lazily.
"""
