"""Build the needle_nb docs site into `_docs/`.

Where Quarto is installed this runs nbdev's standard `nbdev-docs`. Without Quarto (or with
`--offline`) it builds the same site from nbdev's own processed notebooks with mkdocs-jupyter:

1. copy the repo into `_build/site/src/` (so `nbs/` is never modified) and run every notebook copy
   against the installed package with `nbdev-test --save`, once: this is CI's one execution of the
   notebooks (tools/test.sh runs no other), so plots come from today's code, a failing notebook fails
   the build with the notebook and cell named, and `--flags` / `NEEDLE_NB_FULL` reach it;
2. add an API reference notebook: one `show_doc` per exported name in `needle_nb/_modidx.py`;
3. `nbdev.serve.proc_nbs`: nbdev's doc processors, exactly what Quarto would be given;
4. `tools/nbpages.py` turns Quarto-only conventions into what nbconvert renders;
5. vendor MathJax 3 from npm (cached in `_build/cache/`), then `mkdocs build --strict`.

Usage: python tools/build_site.py [--offline] [--n-workers N] [--flags FLAGS]
"""
import argparse, os, re, shutil, subprocess, sys, tarfile, time
from pathlib import Path

import nbformat, yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
import nbpages

BUILD = ROOT/'_build'/'site'
CACHE = ROOT/'_build'/'cache'
SITE = ROOT/'_docs'
MATHJAX = 'mathjax@3.2.2'
# Only what tex-mml-chtml needs at run time (~3 MB of the 40 MB package).
MATHJAX_PARTS = ['es5/tex-mml-chtml.js', 'es5/output/chtml/fonts/woff-v2', 'es5/input/tex/extensions',
                 'es5/ui', 'es5/a11y', 'es5/adaptors']
# Never copied into the build: VCS data, virtualenvs, outputs of earlier builds.
SKIP = re.compile(r'^(\.git|\.venv.*|_build|_docs|_proc|_site|__pycache__|\.ipynb_checkpoints|node_modules|.*\.egg-info)$')
API_NB = 'api.ipynb'  # the page `api.html`, last in the navigation


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


def exported_names():
    "{module: [public top-level names]} from nbdev's index of the installed package."
    import needle_nb._modidx as modidx
    res = {}
    for mod, syms in modidx.d['syms'].items():
        names = [s[len(mod)+1:] for s in syms]
        res[mod] = {'top': [n for n in names if '.' not in n and not n.startswith('_')],
                    'members': [n for n in names if '.' in n and not n.split('.')[-1].startswith('_')]}
    return res


def api_notebook(path, nb_pages):
    "A notebook with a `show_doc` for every exported name, rendered by nbdev like any chapter."
    cells = [nbformat.v4.new_markdown_cell(
        '# API reference\n\n> Every exported name of needle_nb, as `show_doc` renders it.')]
    for mod, names in exported_names().items():
        if not names['top']: continue
        page = nb_pages.get(mod.split('.', 1)[1])
        where = f' (chapter: [{page}]({page}.html))' if page else ''
        cells.append(nbformat.v4.new_markdown_cell(f'## `{mod}`{where}'))
        cells.append(nbformat.v4.new_code_cell(f'import {mod}'))  # imports in a cell of their own: nbdev re-runs it
        for name in names['top']:
            src = [f'show_doc({mod}.{name})']
            src += [f'show_doc({mod}.{m})' for m in names['members'] if m.split('.')[0] == name]
            cells += [nbformat.v4.new_code_cell(s) for s in src]
    nb = nbformat.v4.new_notebook(cells=cells)
    nbformat.write(nb, path)


def vendor_mathjax(dest):
    "Copy MathJax's run-time files from the npm tarball (fetched once, then cached)."
    CACHE.mkdir(parents=True, exist_ok=True)
    tgz = CACHE/f"{MATHJAX.replace('@', '-')}.tgz"
    if not tgz.exists():
        log(f'fetching {MATHJAX} from npm (once; cached in {CACHE.relative_to(ROOT)})')
        r = subprocess.run(['npm', 'pack', MATHJAX, '--pack-destination', str(CACHE), '--silent'],
                           capture_output=True, text=True)
        if r.returncode or not tgz.exists(): fail(f'npm pack {MATHJAX} failed: {r.stderr.strip()}')
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and any(
            m.name.removeprefix('package/').startswith(p) for p in MATHJAX_PARTS)]
        for m in members:
            m.name = m.name.removeprefix('package/')
            tf.extract(m, dest, filter='data')
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
    modules = {}  # module -> its chapter's page, for the API reference's headings
    for p in sorted((src/'nbs').glob('[!_.]*.ipynb')):
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', p.read_text(), re.MULTILINE)
        if m: modules[m.group(1)] = nbpath2html(p).stem
    if (src/'nbs'/API_NB).exists(): fail(f'nbs/{API_NB} would clash with the generated API reference page')
    api_notebook(src/'nbs'/API_NB, modules)

    log("processing notebooks with nbdev's doc processors (proc_nbs)")
    from nbdev.serve import proc_nbs
    os.chdir(src)  # proc_nbs anchors on the config found from the cwd, and skips absolute paths with dot-parts
    proc = Path(proc_nbs('nbs', n_workers=1, force=True))

    if docs.exists(): shutil.rmtree(docs)
    docs.mkdir(parents=True)
    pages = []  # mkdocs nav entries {title: file}
    procd = {p.name: nbformat.read(p, as_version=4) for p in sorted(proc.glob('*.ipynb'))}
    names = {n: nbpages.page_name(nb, n) for n, nb in procd.items()}  # nbdev's output-file
    links = {site_url: ''}  # nbdev's doc links point at the published site: make them relative
    links.update({f'({n})': f'({names[n]}.html)' for n in names})  # author links to other notebooks
    links.update({f'({n}#': f'({names[n]}.html#' for n in names})
    # home first, chapters in notebook order, the API reference last (as the test expects)
    for n in sorted(procd, key=lambda n: (n != 'index.ipynb', n == API_NB, n)):
        nb = procd[n]
        title = nbpages.front_matter(nb).get('title', names[n])
        out = nbpages.fix_notebook(nb, links)
        nbformat.write(out, docs/f'{names[n]}.ipynb')
        pages.append({title: f'{names[n]}.ipynb'})
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
