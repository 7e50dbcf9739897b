"""Evaluation: objective metrics (``metrics``), reference codecs (``baselines``) and the ``codec eval``
harness that scores a model against them on a folder or manifest of audio (``harness``)."""
