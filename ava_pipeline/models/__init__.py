"""Action models: SlowFast / Slow-only backbones (``slowfast``), the AVA RoI head (``roi_head``) and the
config-reading builder (``builder.build_action_model``)."""
from ava_pipeline.models.builder import build_action_model
from ava_pipeline.models.roi_head import RoIHead
from ava_pipeline.models.slowfast import SlowFast

__all__ = ["RoIHead", "SlowFast", "build_action_model"]
