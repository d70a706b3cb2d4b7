"""The house rules of the package, checked on its source with `ast` (issue 11; the layout is the index chapter's).

- the framework's layers import only layers before them, and never the lab (`needle_nb.apps`);
- one definition each of the array helpers (array module, device of an array, host copy);
- one softmax computation;
- no private name imported across modules;
- every function and class in a framework module's `__all__` has its own docstring.
"""
import ast, importlib, inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'needle_nb'

# Import order of the whole course, as the index chapter declares it: a module may import only the
# modules before it. Modules of chapters still to come are declared so that they slot in without
# touching this test; a module missing from this list fails `test_every_module_is_declared`.
ORDER = [
    'apps.figures',                                            # 00c_figures (lab: imports no needle_nb module; every plotting chapter uses it)
    'backend', 'backend_ndarray', 'backend_selection',         # 00_backend, 00a_ndarray, 00b_backend_selection
    'autograd',                                                # 01_autograd
    'apps.testing',                                            # 01a_testing (lab: torch comparisons)
    'apps.graph',                                              # 01b_graph (lab: draws computation graphs)
    'ops', 'ops_conv', 'ops_norm',                             # 02_ops, 02a_conv_ops, 02b_norm_ops
    'init',                                                    # 03_init
    'apps.init_studies',                                       # 03a_init_studies (lab: imports init and below)
    'nn.module', 'nn.layers', 'nn.conv', 'nn.sequence', 'nn.transformer',   # 04, 04a, 04c, 04d, 04e
    'apps.sequence_studies',                                   # 04f_sequence_studies (lab: imports nn.sequence and below)
    'nn',                                                      # 04b_nn: nn/__init__.py re-exports them
    'optim',                                                   # 05_optim
    'distributed',                                             # 05b_distributed: MPI, DDP, SyncBatchNorm (needle_nb's __init__ never imports it)
    'checkpointing',                                           # 05c_checkpointing: activation checkpointing
    'apps.memory',                                             # 05d_memory_study (lab: memory of training, checkpointing measured)
    'data.basic', 'data.vision', 'data.text',                  # 06_data, 06a_vision_data, 06b_text_data
    'data',                                                    # 06c_data: data/__init__.py re-exports them
    'apps.models', 'apps.simple_ml', 'apps.digits', 'apps.planar', 'apps.activation_stats',  # 07-10 (lab)
    'apps.shakespeare', 'apps.char_lm',                        # 13_shakespeare, 13a_char_lm (lab)
    'apps.glorot', 'apps.he',                                  # 14, 15: the papers chapters (lab)
    '',                                                        # 99_namespace: needle_nb/__init__.py
    'course',                                                  # 98_course: the course edition and grader (imports needle_nb in its grading process)
]
LAB = 'apps'


def module_name(path: Path) -> str:
    "`needle_nb/nn/layers.py` -> 'nn.layers'; a package's `__init__.py` -> the package ('nn', '' for needle_nb)."
    parts = list(path.relative_to(PKG).with_suffix('').parts)
    if parts[-1] == '__init__': parts = parts[:-1]
    return '.'.join(parts)


def source_modules() -> dict:
    "{module name: ast} of every module of the package except nbdev's index and empty files."
    mods = {}
    for path in sorted(PKG.rglob('*.py')):
        if path.name == '_modidx.py' or not path.read_text().strip(): continue
        mods[module_name(path)] = ast.parse(path.read_text())
    return mods


MODULES = source_modules()


def is_lab(mod: str) -> bool: return mod == LAB or mod.startswith(LAB + '.')


def resolve(mod: str, node: ast.ImportFrom | ast.Import, is_pkg: bool) -> list[tuple[str, list[str]]]:
    "The needle_nb modules an import statement reaches, each with the names it takes from it."
    def known(name): return name in MODULES or (PKG/name.replace('.', '/')).is_dir()
    if isinstance(node, ast.Import):
        return [(a.name.removeprefix('needle_nb').lstrip('.'), []) for a in node.names
                if a.name == 'needle_nb' or a.name.startswith('needle_nb.')]
    if node.level == 0:
        if not (node.module == 'needle_nb' or node.module.startswith('needle_nb.')): return []
        base = node.module.removeprefix('needle_nb').lstrip('.')
    else:
        package = mod.split('.') if is_pkg else mod.split('.')[:-1]
        package = package[:len(package) - (node.level - 1)] if node.level > 1 else package
        base = '.'.join(package + ([node.module] if node.module else []))
        base = base.strip('.')
    out, names = [], [a.name for a in node.names]
    # `from needle_nb import nn, optim` imports modules; `from .ops import relu` takes names from one
    submodules = [n for n in names if known(f'{base}.{n}'.strip('.'))]
    out += [(f'{base}.{n}'.strip('.'), []) for n in submodules]
    rest = [n for n in names if n not in submodules]
    if rest or not submodules: out.append((base, rest))
    return out


def imports_of(mod: str) -> list[tuple[str, list[str], int]]:
    "(imported needle_nb module, names taken, line) for every import anywhere in `mod`, functions included."
    tree, is_pkg = MODULES[mod], (PKG/mod.replace('.', '/')/'__init__.py').exists() or mod == ''
    return [(target, names, node.lineno) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for target, names in resolve(mod, node, is_pkg)]


def test_every_module_is_declared():
    undeclared = sorted(set(MODULES) - set(ORDER) - {LAB})
    assert not undeclared, f'declare {undeclared} in ORDER (tests/test_house.py) and in the index chapter layout'


@pytest.mark.parametrize('mod', sorted(MODULES), ids=lambda m: m or '__init__')
def test_imports_follow_the_layers(mod):
    rank = {m: i for i, m in enumerate(ORDER)}
    bad = []
    for target, _, line in imports_of(mod):
        if target == mod: continue
        if not is_lab(mod) and is_lab(target):
            bad.append(f'line {line}: the framework never imports the lab ({target})')
        elif target not in rank or rank[target] >= rank[mod]:
            bad.append(f'line {line}: imports {target or "needle_nb"}, which is not before {mod or "needle_nb"} in the layout')
    assert not bad, f'needle_nb.{mod}: ' + '; '.join(bad)


@pytest.mark.parametrize('mod', sorted(MODULES), ids=lambda m: m or '__init__')
def test_no_private_name_crosses_modules(mod):
    private = [(target, n, line) for target, names, line in imports_of(mod) for n in names
               if n.startswith('_') and target != mod]
    assert not private, f'needle_nb.{mod} imports private names {private}: make them public or keep them home'


def functions() -> list[tuple[str, str, ast.AST]]:
    "(module, qualified name, node) of every function and method in the package."
    out = []
    def visit(mod, node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((mod, prefix + child.name, child)); visit(mod, child, prefix + child.name + '.')
            elif isinstance(child, ast.ClassDef): visit(mod, child, prefix + child.name + '.')
    for mod, tree in MODULES.items(): visit(mod, tree, '')
    return out


def calls(node) -> set[str]:
    "Names of the functions and methods a function calls (`xp.exp(...)` -> 'exp')."
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', ''))
    return names


def where(found): return [f'{m}.{q}' for m, q, _ in found]


def test_one_array_module_helper():
    "Finding numpy-or-cupy from an array's type lives in `backend.array_module` only."
    found = [(m, q, f) for m, q, f in functions()
             if q.split('.')[-1] in ('_xp', 'xp_of', 'array_module')
             or any(isinstance(n, ast.Call) and getattr(n.func, 'id', '') == '__import__' for n in ast.walk(f))]
    assert where(found) == ['backend.array_module'], where(found)


def test_one_device_of_helper():
    found = [(m, q, f) for m, q, f in functions() if q.split('.')[-1].lstrip('_') == 'device_of']
    assert where(found) == ['backend.device_of'], where(found)


def test_one_host_copy_helper():
    "Only `backend.to_host` reaches for cupy's `.get()` or is named after host copies."
    def gets(f): return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == 'get'
                            and not n.args and not n.keywords for n in ast.walk(f))
    found = [(m, q, f) for m, q, f in functions() if 'host' in q.split('.')[-1] or gets(f)]
    assert where(found) == ['backend.to_host'], where(found)


SUMS = {'sum', '_sum', 'summation', 'logsumexp', 'logsoftmax', 'LogSumExp', 'LogSoftmax'}   # _sum: ops' own reduction helper


def test_one_softmax_computation():
    """Exponentials normalised by a sum are computed in `ops.Softmax.compute` only (`LogSumExp.compute`
    takes the log of the sum, not a softmax); every other softmax calls the op."""
    # the course's checks (needle_nb.course) are independent references in numpy: they must not call the op
    # a learner is writing, so they are exempt
    found = [(m, q, f) for m, q, f in functions() if 'exp' in calls(f) and calls(f) & SUMS and m != 'course']
    assert sorted(where(found)) == ['ops.LogSumExp.compute', 'ops.Softmax.compute'], where(found)
    helpers = [(m, q, f) for m, q, f in functions() if q.split('.')[-1] == 'softmax' and (m, q) != ('ops', 'softmax')]
    for m, q, f in helpers + [(m, q, f) for m, q, f in functions() if q == 'Softmax.forward' and m != 'ops']:
        assert calls(f) & {'softmax', 'Softmax'}, f'{m}.{q} computes its own softmax instead of calling ops.softmax'


FRAMEWORK = [m for m in ORDER if m and not is_lab(m) and m in MODULES and m != 'nn']


@pytest.mark.parametrize('mod', FRAMEWORK)
def test_exported_names_have_their_own_docstrings(mod):
    module = importlib.import_module(f'needle_nb.{mod}')
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj): doc = vars(obj).get('__doc__')
        elif inspect.isfunction(obj): doc = obj.__doc__
        else: continue   # constants such as LAZY_MODE
        if not (doc and doc.strip()): missing.append(name)
    assert not missing, f'needle_nb.{mod}: no docstring of their own: {missing}'


def test_tensor_methods_are_documented_functions():
    "`help(t.sum)` shows a docstring, not `<lambda>`."
    from needle_nb import Tensor
    for name in ['sum', 'max', 'amax', 'reshape', 'transpose', 'broadcast_to', 'matmul', 'exp', 'log', 'relu',
                 'tanh', 'sigmoid', '__add__', '__mul__', '__sub__', '__truediv__', '__matmul__', '__neg__', '__getitem__']:
        method = getattr(Tensor, name)
        assert method.__name__ == name and method.__doc__, name


def test_methods_are_attached_one_way():
    "After a class, methods are added with fastcore's `@patch`: no `Class.name = ...` assignments."
    bad = []
    for mod, tree in MODULES.items():
        classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)} | {'Tensor', 'Module', 'Value'}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in classes:
                        bad.append(f'{mod}: line {node.lineno}: {t.value.id}.{t.attr} = ...')
    assert not bad, bad


def test_import_needle_nb_loads_no_lab_module():
    "`import needle_nb` loads the framework only: no lab module, nothing that plots, draws progress bars or loads data."
    import subprocess, sys
    probe = ("import sys, needle_nb; print(sorted(m for m in sys.modules if m.startswith("
             "('needle_nb.apps', 'matplotlib', 'fastprogress', 'sklearn'))))")
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == '[]', out.stdout
