"""The docs site as a reader sees it: built offline (tools/build_site.py) and opened in headless
Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium).

Uses the site in `$NEEDLE_SITE_DIR` when set (tools/test.sh builds it once), else builds `_docs/`.
Skips when Chromium is missing, except under CI (`CI=true`), where .ci/run installs it.
Checks for the init, nn and optim chapters skip while those notebooks don't exist yet.
"""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
IN_CI = os.environ.get('CI', '').lower() == 'true'
SCREENSHOTS = ROOT/'_build'/'screenshots'


def _nbdev_page(nb):
    "The page nbdev names for notebook `nb` (`00_backend.ipynb` -> `backend.html`)."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower()).removesuffix('.ipynb') + '.html'


def notebooks():
    return sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))


def page_of(nb, _pages={}):
    """The page of notebook `nb`: nbdev's name (`00_backend.ipynb` -> `backend.html`), except that of two
    notebooks nbdev names alike (06_data, 06c_data) a later one is named after its file (`06c_data.html`)."""
    if not _pages:
        for p in notebooks():
            name = _nbdev_page(p)
            _pages[p.name] = p.stem.lower() + '.html' if name in _pages.values() else name
    return _pages.get(nb.name) or _nbdev_page(nb)


def chapter(pattern):
    "The notebook matching `pattern`, or skip: that chapter is not written yet."
    found = sorted(NBS.glob(pattern))
    if not found: pytest.skip(f'no chapter notebook nbs/{pattern} yet')
    return found[0]


def expected_pages():
    "Home, the chapters in notebook order, then the API reference: the order of the navigation."
    chapters = [page_of(p) for p in notebooks() if p.name != 'index.ipynb']
    return ['index.html', *chapters, 'api.html']


def needs(what):
    if IN_CI: pytest.fail(f'{what} is required under CI (.ci/run installs it)')
    pytest.skip(f'{what} not installed')


@pytest.fixture(scope='session')
def site():
    if os.environ.get('NEEDLE_SITE_DIR'): path = Path(os.environ['NEEDLE_SITE_DIR']).resolve()
    else:
        try: import mkdocs, mkdocs_jupyter  # noqa: F401
        except ImportError: needs('the docs extra (pip install -e ".[docs]")')
        subprocess.run([sys.executable, str(ROOT/'tools'/'build_site.py'), '--offline'], check=True)
        path = ROOT/'_docs'
    assert (path/'index.html').exists(), f'no site at {path}: run python tools/build_site.py'
    return path


@pytest.fixture(scope='session')
def server(site):
    # http, not file://: the search worker and MathJax's font loading need a real origin
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_port}/'
    srv.shutdown()


@pytest.fixture(scope='session')
def browser():
    chromium, driver_bin = shutil.which('chromium'), shutil.which('chromedriver')
    if not (chromium and driver_bin): needs('Chromium (apt-get install chromium chromium-driver)')
    try: from selenium import webdriver
    except ImportError: needs('selenium (pip install -e ".[docs]")')
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium  # else Selenium Manager tries to download a browser
    for flag in ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                 '--disable-background-networking', '--disable-component-update', '--no-first-run',
                 '--window-size=1400,1600', f'--user-data-dir={ROOT/"_build"/"chromium-profile"}',
                 # any fetch off this machine fails at once and shows as a console error
                 '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1']:
        opts.add_argument(flag)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    shutil.rmtree(ROOT/'_build'/'chromium-profile', ignore_errors=True)
    drv = webdriver.Chrome(service=Service(driver_bin), options=opts)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(60)
    yield drv
    drv.quit()


# Everything a check needs from one page, read once in the browser after MathJax has typeset.
_COLLECT = """
const done = arguments[arguments.length - 1];
const mj = window.MathJax && MathJax.startup && MathJax.startup.promise;
(mj || Promise.resolve()).then(() => new Promise(r => setTimeout(r, 200))).then(() => done({
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  math: document.querySelectorAll('mjx-container').length,
  math_errors: document.querySelectorAll('mjx-merror').length,
  images: [...document.querySelectorAll('.md-content img')].map(
    i => ({src: i.src.slice(0, 60), w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width,
           png: i.src.startsWith('data:image/png;base64,') ? i.src.slice(22) : null})),
  // each top-level entry's page; for a section (the API reference), its first page
  nav: [...document.querySelectorAll('nav.md-nav--primary > ul > li')].map(
    li => { const a = li.querySelector('a.md-nav__link[href]'); return a && a.getAttribute('href'); }),
  // a heading's name, without the course's exercise badge beside it
  parts: [...document.querySelectorAll('nav.md-nav--primary > ul > li.md-nav__item--nested > label.md-nav__link')].map(
    l => l.textContent.trim()),
  headings: [...document.querySelectorAll('.md-content h3')].map(h => {
    const c = h.cloneNode(true); c.querySelectorAll('.exercise-badge').forEach(b => b.remove());
    return c.textContent.replace('¶', '').trim(); }),
  text: document.querySelector('.md-content') ? document.querySelector('.md-content').innerText : '',
  // the page's text outside code blocks, for what must not show in prose
  prose: [...document.querySelectorAll('.md-content p, .md-content li')].filter(e => !e.closest('pre'))
           .map(e => e.innerText).join('\\n'),
  code: [...document.querySelectorAll('.md-content pre')].map(e => e.innerText).join('\\n'),
  hidden_code: [...document.querySelectorAll('.md-content pre')].filter(e => e.scrollWidth > e.clientWidth + 1).length,
}), e => done({error: String(e)}));
"""


@pytest.fixture(scope='session')
def pages(browser, site, server):  # browser first: no Chromium means skip before a costly build
    "{page: what the browser saw} for every page of the site."
    seen = {}
    browser.get_log('browser')
    for html in sorted(site.glob('*.html')):
        if html.name == '404.html': continue
        browser.get(server + html.name)
        info = browser.execute_async_script(_COLLECT)
        time.sleep(0.5)  # let requests made after load (e.g. a theme's API calls) fail and log
        # the log is never dropped: an error later still than this shows up on the next page
        info['console_errors'] = [e['message'] for e in browser.get_log('browser') if e['level'] == 'SEVERE']
        seen[html.name] = info
        # each page as a first visit: themes cache (even failed) fetches in storage
        browser.execute_script('sessionStorage.clear(); localStorage.clear();')
    return seen


@pytest.mark.parametrize('name', expected_pages())
def test_page_loads_cleanly(pages, name):
    "Every chapter's page (and the API reference) exists, has content, no console error, no broken image."
    page = pages.get(name)
    assert page is not None, f'no page {name} in the site'
    assert 'error' not in page, page.get('error')
    assert not page['console_errors'], f'{name} console errors: {page["console_errors"]}'
    assert page['text'].strip(), f'{name} is empty'
    bad = [i for i in page['images'] if not (i['w'] and i['h'])]
    assert not bad, f'{name} has images that did not load: {bad}'


def test_every_page_loads_cleanly(pages):
    "The API module pages too: no console error, no image that failed to load."
    bad = {n: p['console_errors'] or [i['src'] for i in p['images'] if not (i['w'] and i['h'])]
           for n, p in pages.items() if p['console_errors'] or any(not (i['w'] and i['h']) for i in p['images'])}
    assert not bad, bad


def book_parts():
    "nbs/sidebar.yml's contents: notebook names (top-level pages) and `(part, [notebooks])`."
    import yaml
    items = yaml.safe_load((NBS/'sidebar.yml').read_text())['website']['sidebar']['contents']
    return [i if isinstance(i, str) else (i['section'], i['contents']) for i in items]


def test_navigation_follows_the_books_parts(pages):
    """The sidebar shows the parts of nbs/sidebar.yml (arrays and devices, autograd, ... lab), each opening
    on its first chapter, then the API reference; inside each part its chapters in that order."""
    by_name = {p.name: p for p in notebooks()}
    expected = [page_of(by_name[i if isinstance(i, str) else i[1][0]]) for i in book_parts()] + ['api.html']
    assert pages['index.html']['nav'] == expected, f"navigation {pages['index.html']['nav']} != parts {expected}"
    links = [urlparse(u).path.rsplit('/', 1)[-1] for u in pages['index.html']['links']]
    for item in book_parts():
        if isinstance(item, str): continue
        shown = [l for l in dict.fromkeys(links) if l in {page_of(by_name[n]) for n in item[1]}]
        assert shown == [page_of(by_name[n]) for n in item[1]], f'part {item[0]}: {shown}'
    parts = [i[0] for i in book_parts() if not isinstance(i, str)] + ['API reference']
    assert pages['index.html']['parts'] == parts, f"sidebar parts {pages['index.html']['parts']} != {parts}"


def test_no_broken_internal_links(pages, server):
    broken = []
    for name, page in pages.items():
        for link in page['links']:
            if not link.startswith(server): continue  # external (GitHub source links) are not ours
            url, frag = urldefrag(link)
            target = urlparse(url).path.lstrip('/') or 'index.html'
            if target.endswith('.html') and target not in pages: broken.append(f'{name} -> {link}')
            # nbdev links backticked private names (`_helper`) too but documents none: page is enough
            elif frag and target in pages and frag not in pages[target]['ids'] and not frag.startswith('_'):
                broken.append(f'{name} -> {link} (no such anchor)')
    assert not broken, 'broken internal links:\n' + '\n'.join(broken)


def _has_math(nb):
    src = [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'markdown']
    return any(re.search(r'\$[^$\n]+\$', s) for s in src)


@pytest.mark.parametrize('nb', [p for p in notebooks() if _has_math(p)], ids=lambda p: p.name)
def test_math_is_typeset(pages, nb):
    page = pages[page_of(nb)]
    assert page['math'] > 0, f'{page_of(nb)}: its notebook has $...$ math but the page has no typeset math'
    assert page['math_errors'] == 0, f'{page_of(nb)}: {page["math_errors"]} formulas failed to typeset'


def framework_modules():
    "The framework's modules in layer order (tests/test_house.py ORDER) that exist, without the lab."
    sys.path.insert(0, str(ROOT/'tests'))
    from test_house import ORDER, MODULES, is_lab
    return [m for m in ORDER if m and not is_lab(m) and m in MODULES]


def defined_api(mod):
    "The functions and classes of `needle_nb.<mod>.__all__` defined in that module (not re-exported)."
    import importlib, inspect
    module = importlib.import_module(f'needle_nb.{mod}')
    return [n for n in getattr(module, '__all__', []) if (inspect.isclass(getattr(module, n)) or inspect.isfunction(
        getattr(module, n))) and getattr(module, n).__module__ == module.__name__]


def api_page(mod): return 'api_' + mod.replace('.', '_') + '.html'


def test_every_module_is_in_nbdevs_index():
    """Every module that defines something has entries in `_modidx` (the API reference and every doc link
    come from it): nbdev once skipped every notebook with "auto" in its path, so 01_autograd vanished."""
    import ast
    from needle_nb._modidx import d
    pkg = ROOT/'needle_nb'
    missing = []
    for path in sorted(pkg.rglob('*.py')):
        if path.name.startswith('_') and path.name != '__init__.py': continue
        tree = ast.parse(path.read_text())
        if not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body): continue
        mod = '.'.join(['needle_nb', *path.relative_to(pkg).with_suffix('').parts]).removesuffix('.__init__')
        if not d['syms'].get(mod): missing.append(mod)
    assert not missing, f'no entries in needle_nb/_modidx.py for {missing}: run nbdev-export (pyproject export_procs)'
    assert 'needle_nb.autograd.Tensor.backward' in d['syms']['needle_nb.autograd']


def test_api_reference_lists_every_exported_name(pages):
    "A page per framework module, each with a heading for every function and class of its `__all__`."
    missing = {}
    for mod in framework_modules():
        names = defined_api(mod)
        if not names: continue   # a package __init__ that only re-exports
        page = pages.get(api_page(mod))
        assert page is not None, f'no API page {api_page(mod)} for needle_nb.{mod}'
        lost = sorted(set(names) - set(page['headings']))
        if lost: missing[mod] = lost
    assert not missing, f'API reference lacks: {missing}'


def test_api_pages_follow_the_chapters(pages):
    "The API reference's navigation lists the module pages in the chapters' (layer) order."
    order = [api_page(m) for m in framework_modules() if defined_api(m)]
    nav = pages['api.html']['links']
    seen = [urlparse(u).path.rsplit('/', 1)[-1] for u in nav]
    shown = [p for p in dict.fromkeys(seen) if p in order]
    assert shown == order, f'API pages in the navigation {shown} != chapter order {order}'


def test_tensor_methods_are_documented_one_by_one(pages):
    autograd, ops = pages[api_page('autograd')]['headings'], pages[api_page('ops')]['headings']
    for name in ['Tensor', 'Tensor.backward', 'Tensor.detach', 'Tensor.numpy', 'no_grad', 'Op', 'Value']:
        assert name in autograd, f'{name} has no entry on {api_page("autograd")}'
    for name in ['Tensor.sum', 'Tensor.reshape', 'Tensor.__add__', 'Tensor.__matmul__']:
        assert name in ops, f'{name} has no entry on {api_page("ops")}'


def test_show_doc_sections_read_well(pages):
    """No empty or mangled heading (a module's `__getattr__` showed as "getattr"); docstring examples are
    code blocks without doctest directives; annotations unquoted; signatures not hidden behind a scrollbar."""
    bad = []
    for name, page in pages.items():
        if 'getattr' in page['headings']: bad.append(f'{name}: a "getattr" heading')
        if '>>>' in page['prose']: bad.append(f'{name}: a docstring example outside a code block')
        if 'doctest:' in page['text']: bad.append(f'{name}: a doctest directive shows')
        if re.search(r'(->|:)"?\'[\w.]+', page['code']) and re.search(r'(->|:)"\'', page['code']):
            bad.append(f'{name}: a quoted annotation')
        if page['hidden_code']: bad.append(f'{name}: {page["hidden_code"]} code blocks scroll sideways')
        if any(link.endswith('#LNone') for link in page['links']): bad.append(f'{name}: a source link to no line')
    assert not bad, '\n'.join(bad)


def test_classes_without_arguments_show_none(pages):
    "A class without its own `__init__` takes no arguments; nbdev showed object's `*args, **kwargs`."
    assert 'def CPUDevice():' in pages[api_page('backend')]['code']


def test_show_doc_sections_in_source_order(pages):
    "Definitions of one cell are documented in the order they are written (Op before TensorTupleOp)."
    heads = pages['autograd.html']['headings']
    assert heads.index('Op') < heads.index('TensorOp') < heads.index('TensorTupleOp'), heads


def test_training_chapters_show_a_table_not_a_glyph(pages):
    for name, page in pages.items():
        assert '█' not in page['text'], f'{name}: a progress bar shows as a lone glyph'
    assert re.search(r'^epoch\s+train_err\s+train_loss', pages['simple_ml.html']['text'], re.MULTILINE)


MIN_TEXT_CSS_PX = 9


def test_figure_text_is_legible(pages):
    """Every figure was saved by needle_nb.apps.figures (its PNG records dpi and smallest font size), and
    its smallest text, as Chromium shows the image at 1400 px, is at least 9 CSS px tall."""
    import base64, io
    from PIL import Image
    small, unmarked, n = [], [], 0
    for name, page in pages.items():
        for img in page['images']:
            if not img['png']: continue
            n += 1
            meta = Image.open(io.BytesIO(base64.b64decode(img['png']))).text
            if 'needle_nb:dpi' not in meta: unmarked.append(f'{name}: {img["w"]}x{img["h"]}'); continue
            px = float(meta['needle_nb:min_font_pt']) * float(meta['needle_nb:dpi']) / 72 * img['shown'] / img['w']
            if px < MIN_TEXT_CSS_PX: small.append(f'{name}: {img["w"]} px image shown {img["shown"]:.0f} px wide: text {px:.1f} px')
    assert n, 'no figures on the site'
    assert not unmarked, 'figures not saved through needle_nb.apps.figures (figures.use()):\n' + '\n'.join(unmarked)
    assert not small, f'figure text under {MIN_TEXT_CSS_PX} CSS px:\n' + '\n'.join(small)


def test_search_snippets_are_text_and_work_from_disk(site):
    "The search index holds text, not TeX source; pages opened from disk load it as a script."
    index = json.loads((site/'search'/'search_index.json').read_text())
    tex = [d['location'] for d in index['docs'] if re.search(r'\$[^$\n]*\\[A-Za-z]+[^$\n]*\$', d['text'])]
    assert not tex, f'TeX source in search snippets of {tex[:5]}'
    assert (site/'search'/'search_index.js').read_text().startswith('var __index = ')


def test_init_page_shows_plots_and_math(pages, server, browser):
    nb = chapter('*init*.ipynb')
    page = pages[page_of(nb)]
    assert page['images'] and all(i['w'] > 0 and i['h'] > 0 for i in page['images']), \
        f'{page_of(nb)}: plots missing or not loaded: {page["images"]}'
    assert page['math'] > 0, f'{page_of(nb)}: no typeset formulas'


def test_search_finds_an_exported_name(pages, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    name = pages[api_page('autograd')]['headings'][0]
    browser.get(server + 'index.html')
    box = browser.find_element(By.CSS_SELECTOR, 'input.md-search__input')  # in the header at this width
    box.click()
    box.send_keys(name)
    hits = WebDriverWait(browser, 15).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '.md-search-result__item'))
    assert hits, f'search for {name!r} found nothing'


def test_screenshot(pages, server, browser, request):
    """Save full-page pictures, at 1400 px, of the initializer pages (the home page until they exist) for a
    human to look at: every figure's title and legend should be readable there."""
    targets = [page_of(p) for p in sorted(NBS.glob('*init*.ipynb'))] or ['index.html']
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = browser.get_window_size()
    try:
        for target in targets:
            browser.set_window_size(1400, size['height'])
            browser.get(server + target)
            browser.execute_async_script(_COLLECT)
            height = browser.execute_script('return document.documentElement.scrollHeight')
            browser.set_window_size(1400, min(height, 16000))
            path = SCREENSHOTS/target.replace('.html', '.png')
            assert browser.save_screenshot(str(path))
            with request.config.pluginmanager.get_plugin('capturemanager').global_and_fixture_disabled():
                print(f'\nscreenshot of {target} (1400 px wide, whole page): {path}')
    finally:
        browser.set_window_size(size['width'], size['height'])


def test_course_exercises_show_a_badge_and_no_markers(pages, site):
    "The site shows the course's exercise badge beside each function holding one, and no solution marker."
    for name, info in pages.items():
        if name == 'course.html': continue   # the chapter on the markers writes them in its examples' strings
        assert '### BEGIN SOLUTION' not in info['code'] and '### END SOLUTION' not in info['code'], name
    init_html = (site / 'init.html').read_text()
    assert init_html.count('class="exercise-badge"') >= 4, 'the initializers are exercises: each gets a badge'
    assert 'xavier_uniform' in pages['init.html']['text'] and 'exercise' in pages['init.html']['text']
    assert 'course.html' in pages, 'the course chapter is on the site'
