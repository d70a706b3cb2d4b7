"""nbdev export processor of needle_nb: every notebook's definitions reach nbdev's symbol index.

nbdev's `_get_modidx` (which writes `needle_nb/_modidx.py`, the index behind the API reference and
every backticked doc link) skips any exported cell whose notebook path *contains* "auto":
`if 'auto' in cell.nb: continue`. The test is meant for nbdev's own `# %% auto #0` cell (the
`__all__` it writes), but it also drops every cell of `../nbs/01_autograd.ipynb`, and would drop an
autoencoder chapter the same way. The cell's notebook path is exactly "auto" for nbdev's own cell,
so the fix is to compare instead of search (`_iter_py_cells` already skips that cell by `nb=='auto'`).

`pyproject.toml` names this module in `[tool.nbdev] export_procs`, so a plain `nbdev-export` imports it
before it writes anything: importing it rebuilds `nbdev.doclinks._get_modidx` from nbdev's own source
with that one condition changed. When nbdev fixes the line upstream there is nothing to replace and
nbdev's function is kept as it is. This is a top-level module (not inside `needle_nb`) so that it
imports even while the package itself is broken mid-edit, and `nbdev-export` can still repair it.
"""
import inspect

import nbdev.doclinks

__all__ = ["index_every_notebook", "strip_solution_markers"]

_BUG = "if 'auto' in cell.nb: continue"
_FIX = "if cell.nb == 'auto': continue"


def _fixed_get_modidx():
    "nbdev's `_get_modidx`, recompiled from its source with the 'auto' test made exact (None if nothing to fix)."
    src = inspect.getsource(nbdev.doclinks._get_modidx)
    if src.count(_BUG) != 1: return None
    ns = {}
    exec(compile(src.replace(_BUG, _FIX), nbdev.doclinks.__file__, 'exec'), vars(nbdev.doclinks), ns)
    fixed = ns['_get_modidx']
    fixed.__doc__ = (fixed.__doc__ or '') + " (needle_nb: only nbdev's own `auto` cell is skipped)"
    return fixed


_fixed = _fixed_get_modidx()
if _fixed is not None: nbdev.doclinks._get_modidx = _fixed


def index_every_notebook(cell):
    """The export processor `[tool.nbdev] export_procs` names: it changes no cell.

    Its work is done when nbdev imports this module, before any notebook is exported and before
    `_build_modidx` indexes the package.
    """
    return None


# The course edition's solution markers (nbs/98_course.ipynb): comment lines that say where a learner's
# part of a function begins and ends. The package carries none of them. `needle_nb.course` has the same
# two patterns; they are repeated here because this module must import while the package is broken.
import re as _re
_re_marker = _re.compile(r"^\s*### (BEGIN|END) SOLUTION\b.*$")


def strip_solution_markers(cell):
    "The export processor that drops `### BEGIN SOLUTION` / `### END SOLUTION` lines from exported code."
    if cell.cell_type != 'code' or 'SOLUTION' not in cell.source: return
    out = ''.join(l for l in cell.source.splitlines(True) if not _re_marker.match(l))
    # a marker on the cell's last line leaves the line before it ending in a newline the cell did not have
    cell.source = out if cell.source.endswith('\n') else out.rstrip('\n')
