"""Register our tuners with PEFT.

``peft.utils.register_peft_method`` requires the method's name in the ``PeftType`` enum, which only lists PEFT's
own methods, so a member is added to the enum first (the one place we touch PEFT's internals; checked by a test).
"""

from peft import PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method


def add_peft_type(name: str) -> PeftType:
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    PeftType._member_names_.append(name)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    type.__setattr__(PeftType, name, member)
    return member


def register_all() -> None:
    from .clip_adapter import ClipAdapterConfig, ClipAdapterModel
    from .clip_coop import ClipCoopConfig, ClipCoopModel
    from .clip_vpt import ClipVptConfig, ClipVptModel

    for name, config_cls, model_cls in (
        ("clip_adapter", ClipAdapterConfig, ClipAdapterModel),
        ("clip_coop", ClipCoopConfig, ClipCoopModel),
        ("clip_vpt", ClipVptConfig, ClipVptModel),
    ):
        if add_peft_type(name.upper()) not in PEFT_TYPE_TO_CONFIG_MAPPING:
            register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls)
