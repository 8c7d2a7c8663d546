"""The package's modules form layers: no module imports, directly or through others, a module that imports it."""

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / 'pdnsr'


def module_name(path):
    parts = list(path.relative_to(REPO_ROOT).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph():
    """{module: {pdnsr modules it imports}} over every import statement, at module level or inside functions.

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module, else of ``a.b``.
    """
    modules = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    base = '.'.join(package.split('.')[: len(package.split('.')) - node.level + 1] + [base]).strip('.')
                targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, ' -> '.join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']


def test_errors_import_nothing_of_pdnsr():
    assert import_graph()['pdnsr.errors'] == set()


def test_package_init_modules_are_in_the_graph():
    graph = import_graph()
    assert 'pdnsr.archs.dcm_arch' in graph['pdnsr.archs'] and Path(PACKAGE / 'errors.py').is_file()


def folder_of(module):
    """The folder a module belongs to: ``pdnsr.archs``, ``pdnsr.tools.export``; a top-level module is its own."""
    parts = module.split('.')
    depth = 3 if parts[1:2] == ['tools'] else 2
    return '.'.join(parts[:depth])


def folder_graph(graph):
    folders = {}
    for module, targets in graph.items():
        edges = folders.setdefault(folder_of(module), set())
        edges |= {folder_of(t) for t in targets} - {folder_of(module)}
    for edges in list(folders.values()):
        for folder in edges:
            folders.setdefault(folder, set())
    return folders


def test_no_import_cycle_between_folders():
    # modules without a cycle, folders with one: what the module-level test cannot see
    modules = {'pdnsr.data.a': {'pdnsr.prompts.b'}, 'pdnsr.prompts.b': {'pdnsr.data.c'}, 'pdnsr.data.c': set()}
    assert find_cycle(modules) is None
    assert find_cycle(folder_graph(modules)) == ['pdnsr.data', 'pdnsr.prompts', 'pdnsr.data']
    cycle = find_cycle(folder_graph(import_graph()))
    assert cycle is None, ' -> '.join(cycle)


def test_the_core_never_imports_a_tool():
    """The core (``pdnsr/`` but ``pdnsr/tools/``) is what a BasicSR user imports; the tools are built on it."""
    wrong = {
        f'{module} -> {target}'
        for module, targets in import_graph().items()
        if not module.startswith('pdnsr.tools')
        for target in targets
        if target.startswith('pdnsr.tools')
    }
    assert not wrong, sorted(wrong)
    assert (
        folder_of('pdnsr.tools.export.onnx') == 'pdnsr.tools.export'
        and folder_of('pdnsr.archs.dcm_arch') == 'pdnsr.archs'
    )
