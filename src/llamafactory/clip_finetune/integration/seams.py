"""Check that LLaMA-Factory still has the structure the patches rely on, and fail with one clear error if not."""

import importlib.metadata
import inspect
from types import ModuleType

import llamafactory_clip_hook


class IncompatibleLlamaFactoryError(RuntimeError):
    pass


def installed_version() -> str:
    try:
        return importlib.metadata.version("llamafactory")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (no `llamafactory` distribution metadata)"


def require(module: ModuleType, problems: list[str]) -> None:
    """Raise the one error users see when a seam moved; ``problems`` says which."""
    if not problems:
        return
    raise IncompatibleLlamaFactoryError(
        f"llamafactory-clip cannot plug into LLaMA-Factory {installed_version()} ({module.__name__}): "
        + "; ".join(problems)
        + f". llamafactory-clip is tested with llamafactory{llamafactory_clip_hook.TESTED_RANGE}: "
        + f"pin it with `pip install 'llamafactory{llamafactory_clip_hook.TESTED_RANGE}'`, "
        + f"or set {llamafactory_clip_hook.DISABLE_ENV}=1 to run LLaMA-Factory without the clip stage."
    )


def check_function(module: ModuleType, name: str, params: list[str], problems: list[str]) -> None:
    func = getattr(module, name, None)
    if not callable(func):
        problems.append(f"`{module.__name__}.{name}` is missing")
        return
    found = list(inspect.signature(func).parameters)
    if found[: len(params)] != params:
        problems.append(f"`{module.__name__}.{name}` takes {found}, expected {params}")


def check_attributes(owner: object, names: list[str], where: str, problems: list[str]) -> None:
    """Class or module attributes the stage uses."""
    problems += [f"`{where}.{name}` is missing" for name in names if not hasattr(owner, name)]


def check_instance_attributes(cls: type, names: list[str], problems: list[str], method: str = "__init__") -> None:
    """Attributes that only instances hold: ``method`` must still assign them."""
    source = inspect.getsource(getattr(cls, method))
    problems += [f"`{cls.__name__}` no longer sets `{name}`" for name in names if f"self.{name}" not in source]
