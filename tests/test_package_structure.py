"""Structure rules of the package, checked on the source tree.

* One checkpoint layer: only ``dino_mm/engine/checkpoint.py`` calls ``torch.load`` /
  ``torch.save`` (everything else goes through its safe loader and atomic writers), in
  the package and in ``tools/``.
* The import graph of ``dino_mm`` (module-level imports, the ones that run when a module
  is imported) has no cycle.
"""
import ast
import os
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CHECKPOINT_LAYER = osp.join('dino_mm', 'engine', 'checkpoint.py')


def _python_files(*folders):
    for folder in folders:
        for dirpath, _, files in os.walk(osp.join(ROOT, folder)):
            for name in files:
                if name.endswith('.py'):
                    yield osp.join(dirpath, name)


def _torch_io_calls(path):
    tree = ast.parse(open(path, encoding='utf-8').read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ('load', 'save') and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == 'torch':
            yield node.lineno, f'torch.{node.func.attr}'


def test_only_the_checkpoint_layer_calls_torch_load_and_save():
    offenders = [f'{osp.relpath(p, ROOT)}:{line}: {call}'
                 for p in _python_files('dino_mm', 'tools') if osp.relpath(p, ROOT) != CHECKPOINT_LAYER
                 for line, call in _torch_io_calls(p)]
    assert not offenders, ('torch.load / torch.save outside the checkpoint layer (use '
                           'dino_mm.engine.checkpoint.safe_torch_load / atomic_torch_save / '
                           'save_state_dict_file):\n' + '\n'.join(offenders))


def test_the_checker_sees_a_raw_call(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('import torch\n\ndef f(p):\n    return torch.load(p)\n')
    assert list(_torch_io_calls(str(bad))) == [(4, 'torch.load')]


def _module_name(path):
    rel = osp.relpath(path, ROOT)[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _module_level_imports(path, name, modules):
    """dino_mm modules imported when ``name`` is imported (not inside functions)."""
    tree = ast.parse(open(path, encoding='utf-8').read(), filename=path)
    is_pkg = path.endswith('__init__.py')
    package = name if is_pkg else name.rpartition('.')[0]
    found = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split('.')
                    base = base[:len(base) - node.level + 1]
                    mod = '.'.join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ''
                found.add(mod)
                found.update(f'{mod}.{a.name}' for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):  # module-level guards still run
                visit(node.body)
                for h in getattr(node, 'handlers', []):
                    visit(h.body)
                visit(getattr(node, 'orelse', []))
                visit(getattr(node, 'finalbody', []))
    visit(tree.body)
    return {m for m in found if m in modules and m != name}


def _find_cycle(graph):
    state, stack = {}, []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def _import_graph():
    paths = {_module_name(p): p for p in _python_files('dino_mm')}
    graph = {}
    for name, path in paths.items():
        deps = _module_level_imports(path, name, paths)
        # importing a.b.c imports the packages a and a.b first
        graph[name] = {d for d in deps}
    return graph


def test_dino_mm_import_graph_has_no_cycle():
    # A package importing its own submodules (``__init__`` re-exports) is not a cycle;
    # a submodule importing the package that is still being initialised, and that package
    # importing it back, is.
    graph = _import_graph()
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + '.')}
    cycle = _find_cycle(graph)
    assert cycle is None, 'import cycle in dino_mm: ' + ' -> '.join(cycle)


def test_the_cycle_finder_finds_one():
    assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _find_cycle({'a': {'b'}, 'b': set()}) is None


def _readme_layout_entries():
    text = open(osp.join(ROOT, 'README.md'), encoding='utf-8').read()
    start = text.index('## Package layout')
    block = text[start:].split('```')[1]
    entries = set()
    for line in block.splitlines():
        if line.startswith('  ') and not line.startswith('   '):
            entries.add(line.split()[0])
    return entries


def test_readme_package_layout_matches_the_tree():
    listed = _readme_layout_entries()
    pkg = osp.join(ROOT, 'dino_mm')
    present = {f'{n}/' for n in os.listdir(pkg)
               if osp.isdir(osp.join(pkg, n)) and osp.isfile(osp.join(pkg, n, '__init__.py'))}
    present |= {n for n in os.listdir(pkg) if n.endswith('.py') and n != '__init__.py'}
    assert listed == present, ('README "Package layout" differs from dino_mm/: missing '
                               f'{sorted(present - listed)}, stale {sorted(listed - present)}')
