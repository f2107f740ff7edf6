"""Add the CLIP tab to LLaMA Board's ``create_ui``.

``create_ui`` builds the tabs, then the footer, and only then wires the language switch and ``resume`` over every
component the engine's manager knows. So the tab must be built in the same tab group and registered before those
handlers: wrapping ``create_train_tab`` captures the engine, and wrapping ``create_footer`` builds the tab just
before the footer (right after the last tab, hence in the same group).
"""

import functools
from types import ModuleType

from .seams import check_attributes, check_function, check_instance_attributes, require


def check_webui_internals(problems: list[str]) -> None:
    """What the tab uses beyond ``create_ui``: the engine's manager, runner and demo flag, the manager's element
    registry, the runner's busy flag, ``LOCALES``' name -> language -> entry shape, the saved config's reader, and
    gradio's root block (where the tab registers its page-load handler)."""
    from gradio.context import Context
    from llamafactory.webui import common, engine, manager, runner
    from llamafactory.webui.locales import LOCALES

    check_instance_attributes(engine.Engine, ["manager", "runner", "demo_mode"], problems)
    check_instance_attributes(runner.Runner, ["running"], problems)
    check_attributes(manager.Manager, ["add_elems", "get_elem_by_id", "get_elem_list"], "Manager", problems)
    check_attributes(common, ["load_config"], "llamafactory.webui.common", problems)
    check_attributes(Context, ["root_block"], "gradio.context.Context", problems)
    entry = LOCALES.get("lang") if isinstance(LOCALES, dict) else None
    if not (isinstance(entry, dict) and isinstance(entry.get("en"), dict)):
        problems.append("`LOCALES` is no longer a mapping of element name -> language -> labels")


def patch_interface(interface: ModuleType) -> None:
    problems: list[str] = []
    check_function(interface, "create_ui", ["demo_mode"], problems)
    check_function(interface, "create_train_tab", ["engine"], problems)
    check_function(interface, "create_footer", [], problems)
    check_webui_internals(problems)
    require(interface, problems)
    if getattr(interface.create_footer, "__clip_tab_original__", None) is not None:
        return

    from llamafactory.webui.locales import LOCALES

    from ..webui.locales import register_locales

    register_locales(LOCALES)
    engines = []
    create_train_tab, create_footer = interface.create_train_tab, interface.create_footer

    @functools.wraps(create_train_tab)
    def create_train_tab_capturing_engine(engine):
        engines.append(engine)
        return create_train_tab(engine)

    @functools.wraps(create_footer)
    def create_footer_after_clip_tab():
        if engines:
            import gradio as gr

            from ..webui.components import create_clip_tab

            engine = engines.pop()
            with gr.Tab("CLIP"):
                engine.manager.add_elems("clip", create_clip_tab(engine))
        return create_footer()

    create_train_tab_capturing_engine.__clip_tab_original__ = create_train_tab
    create_footer_after_clip_tab.__clip_tab_original__ = create_footer
    interface.create_train_tab = create_train_tab_capturing_engine
    interface.create_footer = create_footer_after_clip_tab
