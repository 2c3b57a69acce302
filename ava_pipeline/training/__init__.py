"""Training and fine-tuning of AVA action models from movie files, step for step as PySlowFast (``ava-train``).

    from ava_pipeline.training import train
    result = train("SLOWFAST_32x2_R50_SHORT", videos="movies/", annotations="train.csv", out="runs/sit_stand",
                   labelmap="sit_stand_walk.pbtxt", weights="SLOWFAST_32x2_R101_50_50.pkl", epochs=6)
    result.checkpoint, result.config   # RUN/checkpoints/checkpoint_epoch_00006.pyth, RUN/config.yaml

Modules, in the order of the data flow: ``samples`` (annotation rows -> keyframes with boxes and multi-hot labels),
``frames`` (frame store: one decoding pass per video), ``transforms`` (PySlowFast's AVA train transform),
``dataset`` (clips + collate), ``settings`` (TRAIN/SOLVER/BN/DATA/AVA keys), ``init`` (random init, ``--weights``),
``optim`` (parameter groups, SGD, learning-rate policy), ``sampling`` (data order per iteration and process),
``loop`` (the epochs), ``checkpoint`` (PySlowFast layout,
exact resume), ``validation`` (frame-mAP during training), ``metrics`` (metrics.jsonl, curves.png), ``run`` (the
whole run, what ``ava-train`` calls); ``distributed`` (data-parallel training under torchrun) and ``head_only``
(``--head-only``: cached RoI features, only the head trains).
"""
from ava_pipeline.training.run import TrainResult, train
from ava_pipeline.training.settings import (AugmentationSettings, SolverSettings, TrainSettings, load_train_settings,
                                            with_overrides)

__all__ = ["AugmentationSettings", "SolverSettings", "TrainResult", "TrainSettings", "load_train_settings", "train",
           "with_overrides"]
