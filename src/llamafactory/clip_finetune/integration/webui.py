"""Add the CLIP tab to LLaMA Board's ``create_ui``.

``create_ui`` builds the tabs, then the footer, and only then wires the language switch and ``resume`` over every
component the engine's manager knows. So the tab must be built in the same tab group and registered before those
handlers: wrapping ``create_train_tab`` captures the engine, and wrapping ``create_footer`` builds the tab just
before the footer (right after the last tab, hence in the same group).
"""

import functools
from types import ModuleType

from .seams import check_function, require


def patch_interface(interface: ModuleType) -> None:
    problems: list[str] = []
    check_function(interface, "create_ui", ["demo_mode"], problems)
    check_function(interface, "create_train_tab", ["engine"], problems)
    check_function(interface, "create_footer", [], problems)
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
