"""Builds the action model from a ``ModelConfig``: the one place where model configuration is read."""
from ava_pipeline.config import ModelConfig, check_model_config
from ava_pipeline.models.slowfast import SlowFast


def build_action_model(model_cfg: ModelConfig) -> SlowFast:
    """A randomly initialised SlowFast / Slow-only AVA model for ``model_cfg``, in eval mode.

    Its state-dict keys and shapes are PySlowFast's for the same config, so a PySlowFast checkpoint loads
    with ``load_state_dict(strict=True)``. Raises ``ConfigError`` for options the model does not implement.
    """
    check_model_config(model_cfg)
    model = SlowFast(
        arch=model_cfg.arch, depth=model_cfg.depth, alpha=model_cfg.alpha, beta_inv=model_cfg.beta_inv,
        fusion_conv_channel_ratio=model_cfg.fusion_conv_channel_ratio,
        fusion_kernel_size=model_cfg.fusion_kernel_size, width_per_group=model_cfg.width_per_group,
        num_groups=model_cfg.num_groups, num_block_temp_kernel=model_cfg.num_block_temp_kernel,
        spatial_strides=model_cfg.spatial_strides, spatial_dilations=model_cfg.spatial_dilations,
        nonlocal_location=model_cfg.nonlocal_location, nonlocal_pool=model_cfg.nonlocal_pool,
        nonlocal_instantiation=model_cfg.nonlocal_instantiation, num_classes=model_cfg.num_classes,
        dropout_rate=model_cfg.dropout_rate, roi_resolution=model_cfg.roi_resolution,
        spatial_scale_factor=model_cfg.spatial_scale_factor, aligned=model_cfg.aligned)
    return model.eval()
