"""No import cycles anywhere in the product or the dev tools (the layers are import-linter's job,
run by `make lint`; a cycle inside one layer would slip through it)."""

from __future__ import annotations

import grimp


def test_no_module_imports_itself_through_another() -> None:
    graph = grimp.build_graph("stream", "portrait_dev")
    cycles = sorted(
        (module, dep)
        for module in graph.modules
        for dep in graph.find_modules_directly_imported_by(module)
        if dep != module and graph.chain_exists(importer=dep, imported=module)
    )
    assert cycles == []
