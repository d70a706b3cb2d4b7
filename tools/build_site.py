"""Build the needle_nb docs site into `_docs/`.

Where Quarto is installed this runs nbdev's standard `nbdev-docs`. Without Quarto (or with
`--offline`) it builds the same site from nbdev's own processed notebooks with mkdocs-jupyter:

1. copy the repo into `_build/site/src/` (so `nbs/` is never modified) and run every notebook copy
   against the installed package with `nbdev-test --save`, once: this is CI's one execution of the
   notebooks (tools/test.sh runs no other), so plots come from today's code, a failing notebook fails
   the build with the notebook and cell named, and `--flags` / `NEEDLE_NB_FULL` reach it;
2. add the API reference: a notebook per module of `needle_nb/_modidx.py`, with a `show_doc` for every
   function and class of its `__all__` and their methods, in chapter order;
3. `nbdev.serve.proc_nbs`: nbdev's doc processors, exactly what Quarto would be given;
4. `tools/nbpages.py` turns Quarto-only conventions into what nbconvert renders, and makes each
   `show_doc` section read well (examples as code blocks, unquoted annotations, source order);
5. copy MathJax 3 from the `django-static-mathjax` wheel (no npm), then `mkdocs build --strict`
   (`tools/mkdocs_hooks.py` writes a search index of plain text, also loadable from disk).

Usage: python tools/build_site.py [--offline] [--n-workers N] [--flags FLAGS]
"""
import argparse, os, re, shutil, subprocess, sys, time
from pathlib import Path

import nbformat, yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
import nbpages

BUILD = ROOT/'_build'/'site'
SITE = ROOT/'_docs'
MATHJAX_PKG = 'django-static-mathjax==3.2.2.1'  # MathJax 3.2.2 as a dependency-free wheel: no npm
# Only what tex-mml-chtml needs at run time (~3 MB of the package).
MATHJAX_PARTS = ['es5/tex-mml-chtml.js', 'es5/output/chtml/fonts/woff-v2', 'es5/input/tex/extensions',
                 'es5/ui', 'es5/a11y', 'es5/adaptors']
# Never copied into the build: VCS data, virtualenvs, outputs of earlier builds.
SKIP = re.compile(r'^(\.git|\.venv.*|_build|_docs|_proc|_site|__pycache__|\.ipynb_checkpoints|node_modules|.*\.egg-info)$')
API_NB = 'api.ipynb'  # the API reference's index page `api.html`; its module pages follow it, last in the navigation


def tool(name):
    "A console script of this Python's environment, found even when the venv is not activated."
    exe = Path(sys.executable).parent/name
    return str(exe) if exe.exists() else name


def log(msg): print(f'[build_site] {msg}', flush=True)
def fail(msg): sys.exit(f'[build_site] FAILED: {msg}')


def copy_repo(dst):
    if dst.exists(): shutil.rmtree(dst)
    shutil.copytree(ROOT, dst, ignore=lambda d, names: [n for n in names if SKIP.match(n)])


def execute_notebooks(src, n_workers=None, flags=None):
    "Run every notebook copy once; its outputs are saved into the copy (the pages are built from them)."
    n = str(n_workers or min(os.cpu_count() or 1, 4))
    extra = ['--flags', flags] if flags else []
    r = subprocess.run([tool('nbdev-test'), 'nbs', '--save', '--n-workers', n, '--do-print', *extra],
                       cwd=src, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(r.stderr)
    if r.returncode:
        # nbdev-test reports "<Error> in <path>:" then "While Executing Cell #N:" for each failure
        where = re.findall(r' in \S*/(nbs/[^/\s]+\.ipynb):\n=+\n\nWhile Executing Cell #(\d+)', r.stderr)
        named = ', '.join(f'{nb} (cell #{cell})' for nb, cell in where) or 'see the traceback above'
        fail(f'a notebook failed to execute, so its page cannot be built: {named}. '
             'Reproduce with: nbdev-test nbs/<notebook>.ipynb')


def api_modules(chapters):
    """[(module, names, members, patched)] for every module of nbdev's index, in chapter order.

    `names`: the functions and classes of the module's `__all__` defined in it; `members`: {class: its
    public methods and operators in nbdev's index}; `patched`: {class: methods this module adds to a
    class defined elsewhere with `@patch`} (the `Tensor` operators of `ops`).
    """
    import importlib, inspect
    import needle_nb._modidx as modidx
    out = []
    for mod, syms in modidx.d['syms'].items():
        module = importlib.import_module(mod)
        names = [n for n in getattr(module, '__all__', [])
                 if (inspect.isclass(getattr(module, n, None)) or inspect.isfunction(getattr(module, n, None)))
                 and getattr(getattr(module, n), '__module__', None) == mod]
        members, patched = {}, {}
        for sym in syms:
            owner, _, member = sym[len(mod)+1:].partition('.')
            if not member or '.' in member or member in SKIP_MEMBERS or not _documented_member(member): continue
            if member.startswith('__') and not getattr(getattr(getattr(module, owner, None), member, None), '__doc__', None):
                continue  # a protocol method (`__enter__`) with nothing to say of its own
            if owner in names: members.setdefault(owner, []).append(member)
            elif not owner.startswith('_') and hasattr(module, owner): patched.setdefault(owner, []).append(member)
        if names or patched: out.append((mod, names, members, patched))
    # chapter order: the notebook each module is exported from (modules nbdev knows no notebook of, last)
    return sorted(out, key=lambda m: (chapters.get(m[0].split('.', 1)[1], ('~', ''))[0], m[0]))


def bare_classes():
    "Names of the package's classes that take no arguments (nbdev shows them with object's `*args, **kwargs`)."
    import importlib, inspect
    import needle_nb._modidx as modidx
    out = set()
    for mod in modidx.d['syms']:
        module = importlib.import_module(mod)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == mod:
                try: params = inspect.signature(obj).parameters
                except (TypeError, ValueError): continue
                if not params: out.add(name)
    return frozenset(out)


SKIP_MEMBERS = {'__init__', '__repr__', '__str__', '__hash__', '__len__', '__array__', '__iter__',
                '__getstate__', '__setstate__', '__deepcopy__', '__copy__', '__post_init__'}
def _documented_member(m): return not m.startswith('_') or (m.startswith('__') and m.endswith('__'))


def book_parts(nbs, notebooks):
    """The book's table of contents from `nbs/sidebar.yml` (Quarto's sidebar format): a list of notebook
    names (top-level pages) and `(part title, [notebooks])`. Fails naming any notebook of `notebooks` it
    lists twice, leaves out, or lists without the notebook existing."""
    items = yaml.safe_load((nbs/'sidebar.yml').read_text())['website']['sidebar']['contents']
    out, seen = [], []
    for item in items:
        if isinstance(item, str): out.append(item); seen.append(item)
        else: out.append((item['section'], list(item['contents']))); seen += item['contents']
    twice = sorted({n for n in seen if seen.count(n) > 1})
    missing, unknown = sorted(set(notebooks) - set(seen)), sorted(set(seen) - set(notebooks))
    if twice or missing or unknown: fail(f'nbs/sidebar.yml: listed twice {twice}, not listed {missing}, '
                                         f'no such notebook {unknown}')
    return out


def api_page(mod): return 'api_' + mod.split('.', 1)[1].replace('.', '_')


def api_notebooks(nbs, chapters):
    """The API reference: an index page and one page per module, each a notebook of `show_doc` calls
    that nbdev renders like any chapter. Returns the mkdocs nav section."""
    import importlib
    mods = api_modules(chapters)
    index = ['# API reference\n\n> Every function and class that needle_nb exports, one page per module, '
             'in the order of the chapters that build them.\n',
             '| module | chapter | names |\n|---|---|---|']
    nav = [API_NB]
    for mod, names, members, patched in mods:
        page = api_page(mod)
        nb_name, chapter = chapters.get(mod.split('.', 1)[1], (None, None))
        link = f'[{chapter}]({chapter}.html)' if chapter else ''
        n = len(names) + sum(map(len, members.values())) + sum(map(len, patched.values()))
        index.append(f'| [`{mod}`]({page}.html) | {link} | {n} |')
        cells = [nbformat.v4.new_markdown_cell(
            f'# `{mod}`\n\n> The API of `{mod}`' + (f', built in the {link} chapter' if chapter else '')
            + ': every function and class of its `__all__`, with its methods.')]
        # imports in a cell of their own (nbdev re-runs it for show_doc); hidden: not part of the reference
        cells.append(nbformat.v4.new_code_cell(f'#| hide\nimport {mod}'))
        module = importlib.import_module(mod)
        for name in names:
            real = getattr(module, name).__name__
            if real != name:  # an alias (`L2Loss = MSELoss`): a heading of its own that points to the class
                cells.append(nbformat.v4.new_markdown_cell(f'---\n\n### {name}\n\n`{name}` is another name for [`{real}`](#{real.lower()}).'))
                continue
            cells.append(nbformat.v4.new_code_cell(f'show_doc({mod}.{name})'))
            cells += [nbformat.v4.new_code_cell(f'show_doc({mod}.{name}.{m})') for m in members.get(name, [])]
        for owner, ms in patched.items():
            cells.append(nbformat.v4.new_markdown_cell(f'## Methods added to `{owner}`\n\n'
                                                       f'Attached with `@patch` in this module.'))
            cells += [nbformat.v4.new_code_cell(f'show_doc({mod}.{owner}.{m})') for m in ms]
        nbformat.write(nbformat.v4.new_notebook(cells=cells), nbs/f'{page}.ipynb')
        nav.append({mod: f'{page}.ipynb'})
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('\n'.join(index))]), nbs/API_NB)
    return nav


def vendor_mathjax(dest):
    "Copy MathJax 3's run-time files from the `django-static-mathjax` wheel (the docs extra installs it)."
    import importlib.util
    spec = importlib.util.find_spec('mathjax')
    root = Path(spec.origin).parent/'static'/'mathjax' if spec and spec.origin else None
    if not (root and (root/'es5'/'tex-mml-chtml.js').exists()):
        fail(f'MathJax 3 not found: install the docs extra ({MATHJAX_PKG}; pip install -e ".[docs]")')
    for part in MATHJAX_PARTS:
        src, dst = root/part, dest/part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir(): shutil.copytree(src, dst, dirs_exist_ok=True)
        else: shutil.copy2(src, dst)
    (dest.parent/'mathjax-config.js').write_text("""\
// $...$ as in the notebooks; textmacros so that \\text{fan\\_in} shows fan_in.
window.MathJax = {
  loader: {load: ['[tex]/textmacros']},
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], processEscapes: true, packages: {'[+]': ['textmacros']}},
};
""")


def build_offline(n_workers=None, flags=None):
    t0 = time.time()
    src, docs = BUILD/'src', BUILD/'docs'
    log(f'copying the repo to {src.relative_to(ROOT)}')
    copy_repo(src)
    log('executing every notebook against the installed package')
    execute_notebooks(src, n_workers, flags)

    from nbdev.config import get_config, nbpath2html
    cfg = get_config(ROOT)
    site_url = f'{cfg.doc_host}{cfg.doc_baseurl}'.rstrip('/') + '/'
    chapters = {}  # module -> (its notebook, its chapter's page), for the API reference's order and links
    for p in sorted((src/'nbs').glob('[!_.]*.ipynb')):
        m = re.search(r'#\|\s*default_exp\s+([\w.]+)', p.read_text())
        if m: chapters[m.group(1).removesuffix('.__init__')] = (p.name, nbpath2html(p).stem)
    clash = sorted(p.name for p in (src/'nbs').glob('api*.ipynb'))
    if clash: fail(f'{clash} would clash with the generated API reference pages (api*.ipynb)')
    api_nav = api_notebooks(src/'nbs', chapters)

    log("processing notebooks with nbdev's doc processors (proc_nbs)")
    from nbdev.serve import proc_nbs
    os.chdir(src)  # proc_nbs anchors on the config found from the cwd, and skips absolute paths with dot-parts
    proc = Path(proc_nbs('nbs', n_workers=1, force=True))

    if docs.exists(): shutil.rmtree(docs)
    docs.mkdir(parents=True)
    procd = {p.name: nbformat.read(p, as_version=4) for p in sorted(proc.glob('*.ipynb'))}
    names = {}  # notebook -> its page: nbdev's output-file (`data` for 06_data.ipynb)
    for n in sorted(procd):
        # two notebooks nbdev names alike (06_data, 06c_data -> data): the first keeps the name nbdev's
        # doc links use, a later one is named after its file, instead of overwriting the first page
        name = nbpages.page_name(procd[n], n)
        names[n] = Path(n).stem.lower() if name in names.values() else name
    links = {site_url: ''}  # nbdev's doc links point at the published site: make them relative
    links.update({f'({n})': f'({names[n]}.html)' for n in names})  # author links to other notebooks
    links.update({f'({n}#': f'({names[n]}.html#' for n in names})
    api = {p if isinstance(p, str) else next(iter(p.values())) for p in api_nav}
    bare = bare_classes()
    from needle_nb.course import find_exercises   # the course's exercises get a badge in the API sections
    exercises = frozenset(e.function for p in sorted((src/'nbs').glob('*.ipynb')) for e in find_exercises(p))
    entries = {}  # notebook -> its nav entry {title: file}
    for n in sorted(procd, key=lambda n: (n in api, n)):
        nb = procd[n]
        title = nbpages.front_matter(nb).get('title', names[n])
        out = nbpages.fix_notebook(nb, links, bare, exercises)
        nbformat.write(out, docs/f'{names[n]}.ipynb')
        if n not in api: entries[n] = {title: f'{names[n]}.ipynb'}
    # the chapters in the book's parts (nbs/sidebar.yml, which Quarto reads too), the API reference last
    pages = [entries[item] if isinstance(item, str) else {item[0]: [entries[c] for c in item[1]]}
             for item in book_parts(src/'nbs', set(entries))]
    pages.append({'API reference': [f'{names[API_NB]}.ipynb'] + [
        {mod: f'{names[p]}.ipynb'} for entry in api_nav[1:] for mod, p in entry.items()]})
    (docs/'assets').mkdir(exist_ok=True)
    shutil.copy2(ROOT/'tools'/'site.css', docs/'assets'/'site.css')
    vendor_mathjax(docs/'assets'/'mathjax')

    mk = yaml.safe_load((ROOT/'tools'/'mkdocs.yml').read_text())
    mk.update(docs_dir=str(docs), site_dir=str(SITE), nav=pages,
              hooks=[str(ROOT/'tools'/h) for h in mk.get('hooks', [])])
    (BUILD/'mkdocs.yml').write_text(yaml.safe_dump(mk, sort_keys=False))
    log(f'rendering {len(pages)} pages with mkdocs')
    r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--quiet',
                        '-f', str(BUILD/'mkdocs.yml')], cwd=BUILD, env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    if r.returncode: fail('mkdocs build failed (see above)')
    log(f'done in {time.time()-t0:.0f}s. Open {SITE/"index.html"}')
    log(f'or serve it (search needs http): python -m http.server -d {SITE.relative_to(ROOT)} 8000 '
        '→ http://localhost:8000')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--offline', action='store_true', help='build without Quarto even if it is installed')
    ap.add_argument('--n-workers', type=int, help='notebooks executed in parallel (default: CPUs, at most 4)')
    ap.add_argument('--flags', help="nbdev-test flags to run, e.g. 'slow' (tst_flags cells are skipped otherwise)")
    args = ap.parse_args()
    os.chdir(ROOT)
    if shutil.which('quarto') and not args.offline:
        log("Quarto found: running nbdev's standard `nbdev-docs`")
        sys.exit(subprocess.run([tool('nbdev-docs')]).returncode)
    build_offline(args.n_workers, args.flags)


if __name__ == '__main__':
    main()
