"""ARR-COC: query-adaptive visual token allocation as a native Transformers model.

Importing the package registers it with the Auto classes (AutoConfig, AutoModel,
AutoModelForImageTextToText, AutoProcessor), and marks the classes for `trust_remote_code` export so a saved
checkpoint also loads in a process that never imported this package.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_arrcoc import ArrCocConfig
from .modeling_arrcoc import ArrCocForConditionalGeneration, ArrCocModel, ArrCocPreTrainedModel
from .processing_arrcoc import ArrCocImageProcessor, ArrCocProcessor


def _register():
    AutoConfig.register("arrcoc", ArrCocConfig, exist_ok=True)
    AutoModel.register(ArrCocConfig, ArrCocModel, exist_ok=True)
    AutoModelForImageTextToText.register(ArrCocConfig, ArrCocForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(ArrCocConfig, slow_image_processor_class=ArrCocImageProcessor, exist_ok=True)
    AutoProcessor.register(ArrCocConfig, ArrCocProcessor, exist_ok=True)
    ArrCocConfig.register_for_auto_class()
    ArrCocModel.register_for_auto_class("AutoModel")
    ArrCocForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    ArrCocImageProcessor.register_for_auto_class("AutoImageProcessor")
    ArrCocProcessor.register_for_auto_class("AutoProcessor")


_register()

__all__ = [
    "ArrCocConfig",
    "ArrCocForConditionalGeneration",
    "ArrCocImageProcessor",
    "ArrCocModel",
    "ArrCocPreTrainedModel",
    "ArrCocProcessor",
]
