"""EfficientNet-Lite0 as a transformers vision tower: aim-mini is a plain ``LlavaForConditionalGeneration``.

Llava builds its tower with ``AutoModel.from_config(config.vision_config)`` and reads
``vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states[layer]``.
This tower's last hidden state is the 7x7x1280 map after the head conv, flattened to
``[B, 49, 1280]`` (row-major over the 7x7 grid): with ``vision_feature_layer=-1`` and
``vision_feature_select_strategy="full"`` Llava gets 49 image tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .efficientnet_lite import HEAD_CHANNELS, EfficientNetLite0

MODEL_TYPE = "aim_efficientnet_lite"


class AimEfficientNetLiteConfig(PreTrainedConfig):
    """Config of the EfficientNet-Lite0 vision tower (architecture fixed; these are the knobs that matter).

    ``patch_size`` is the network's total stride (32): a 224 px image gives (224/32)^2 = 49 tokens,
    which is what ``LlavaProcessor`` uses to count image tokens.
    """

    model_type = MODEL_TYPE
    base_config_key = "vision_config"

    hidden_size: int = HEAD_CHANNELS
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    padding: str = "same"
    batch_norm_eps: float = 1e-3
    initializer_range: float = 0.02


class AimEfficientNetLitePreTrainedModel(PreTrainedModel):
    config: AimEfficientNetLiteConfig
    config_class = AimEfficientNetLiteConfig
    base_model_prefix = "efficientnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # No attention inside: any attention implementation chosen for the composite model is fine here.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)


class AimEfficientNetLiteVisionModel(AimEfficientNetLitePreTrainedModel):
    """EfficientNet-Lite0 feature extractor (no classifier). Hidden states are ``[B, H*W, C]`` maps:
    after the stem, after each of the 7 stages, and (last) after the 1280-channel head."""

    def __init__(self, config: AimEfficientNetLiteConfig):
        super().__init__(config)
        self.encoder = EfficientNetLite0(num_classes=0, bn_eps=config.batch_norm_eps, padding=config.padding)
        self.post_init()

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.conv_stem

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        enc = self.encoder
        x = pixel_values.to(enc.conv_stem.weight.dtype)
        x = torch.nn.functional.relu6(enc.bn1(enc.conv_stem(x)))
        hidden = [self._flat(x)] if output_hidden_states else None
        for stage in enc.blocks:
            x = stage(x)
            if hidden is not None:
                hidden.append(self._flat(x))
        x = torch.nn.functional.relu6(enc.bn2(enc.conv_head(x)))
        last = self._flat(x)
        if hidden is not None:
            hidden.append(last)
        pooled = last.mean(dim=1)
        hidden_states = tuple(hidden) if hidden is not None else None
        if return_dict is False:
            return tuple(v for v in (last, pooled, hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states
        )
