"""AVA frame-mAP evaluation: the official ActivityNet evaluator's number, exactly and fast, plus the protocols of
other tools on request. Never imports torch.

    from ava_pipeline.evaluation import evaluate
    result = evaluate("ava_val_v2.2.csv", "detections.csv", "v2.2-eval",
                      exclusions="ava_val_excluded_timestamps_v2.2.csv")
    result.mAP, result.per_class[12], result.to_official_dict()
"""
from .frame_map import EvaluationResult, evaluate
from .io import AvaRows, InputFormatWarning, key_2019, key_2020, read_ava_csv, read_exclusions
from .legacy_argsort import legacy_argsort
from .persons import person_detection_ap
from .protocols import PROTOCOLS, Protocol, get_protocol

__all__ = [
    "AvaRows", "EvaluationResult", "InputFormatWarning", "PROTOCOLS", "Protocol", "evaluate", "get_protocol",
    "key_2019", "key_2020", "legacy_argsort", "person_detection_ap", "read_ava_csv", "read_exclusions",
]
