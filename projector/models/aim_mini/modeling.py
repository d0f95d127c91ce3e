"""EfficientNet-Lite0 as a transformers vision tower: aim-mini is a plain ``LlavaForConditionalGeneration``.

Llava builds its tower with ``AutoModel.from_config(config.vision_config)`` and reads
``vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states[layer]``.
This tower's last hidden state is ``[B, 49 + caption_length, hidden_size]``:

- 49 spatial tokens: the 7x7x1280 map after the head conv (row-major over the grid), followed by a
  constant 1 (the connector's bias for spatial tokens) and zeros;
- ``caption_length`` caption tokens (``caption.py``): zeros in the first 1281 features and a one-hot
  over the caption's word vocabulary in the rest (all zeros for padding).

With ``vision_feature_layer=-1`` and ``vision_feature_select_strategy="full"`` Llava takes them all;
the processor counts the caption tokens as ``num_additional_image_tokens``. With
``caption_length=0`` the tower is the plain 49-token feature extractor.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .caption import NAME_THRESHOLD, caption_words, image_statistics
from .efficientnet_lite import HEAD_CHANNELS, EfficientNetLite0
from .faces import has_face

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
    # The caption (0: none). Shapes of the caption tables; their contents are buffers in the weights.
    caption_length: int = 0
    caption_vocab_size: int = 0
    caption_names: int = 0
    caption_name_length: int = 0
    caption_colours: int = 0
    caption_colour_length: int = 0
    caption_name_threshold: float = NAME_THRESHOLD


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
        captions = config.caption_length > 0
        self.encoder = EfficientNetLite0(
            num_classes=1000 if captions else 0, bn_eps=config.batch_norm_eps, padding=config.padding
        )
        if captions:
            if config.hidden_size != HEAD_CHANNELS + 1 + config.caption_vocab_size:
                raise ValueError("hidden_size must be 1280 + 1 + caption_vocab_size when captions are on")
            long = {"dtype": torch.long}
            self.register_buffer("caption_class_name", torch.zeros(1000, **long))
            self.register_buffer(
                "caption_name_words",
                torch.full((config.caption_names, config.caption_name_length), -1, **long),
            )
            self.register_buffer(
                "caption_colour_words",
                torch.full((config.caption_colours, config.caption_colour_length), -1, **long),
            )
            self.register_buffer("caption_palette", torch.zeros(config.caption_colours, 3))
            self.register_buffer("caption_word_token_ids", torch.zeros(config.caption_vocab_size, **long))
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
        spatial = self._flat(x)
        pooled = spatial.mean(dim=1)
        last = (
            spatial if self.config.caption_length == 0 else self._with_caption(spatial, pooled, pixel_values)
        )
        if hidden is not None:
            hidden.append(last)
        hidden_states = tuple(hidden) if hidden is not None else None
        if return_dict is False:
            return tuple(v for v in (last, pooled, hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states
        )

    def _with_caption(
        self, spatial: torch.Tensor, pooled: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """Spatial tokens [B, 49, 1280] -> [B, 49 + L, hidden]: spatial features with the bias feature,
        then the caption's one-hot word tokens."""
        cfg = self.config
        probs = self.encoder.classifier(pooled.float()).softmax(dim=-1)
        # The processor normalised with mean = std = 0.5: back to [0, 1] for colour and faces.
        pixels = pixel_values.float() * 0.5 + 0.5
        colour, flat = image_statistics(pixels, self.caption_palette)
        face = torch.zeros_like(flat)
        if not flat.all():  # a drawing or rendered shape is nobody's portrait: only photos are searched
            face[~flat] = has_face(pixels[~flat])
        words = caption_words(
            probs,
            colour,
            flat,
            face,
            self.caption_class_name,
            self.caption_name_words,
            self.caption_colour_words,
            cfg.caption_name_threshold,
        )
        b, n, c = spatial.shape
        out = spatial.new_zeros(b, n + words.shape[1], cfg.hidden_size)
        out[:, :n, :c] = spatial
        out[:, :n, c] = 1.0
        rows, cols = (words >= 0).nonzero(as_tuple=True)
        out[rows, n + cols, c + 1 + words[rows, cols]] = 1.0
        return out
