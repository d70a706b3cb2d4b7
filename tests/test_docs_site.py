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


def page_of(nb):
    "The page nbdev names for notebook `nb` (`00_backend.ipynb` -> `backend.html`)."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower()).removesuffix('.ipynb') + '.html'


def notebooks():
    return sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))


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
                 '--window-size=1280,1600', f'--user-data-dir={ROOT/"_build"/"chromium-profile"}',
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
    i => ({src: i.src.slice(0, 60), w: i.naturalWidth, h: i.naturalHeight})),
  nav: [...document.querySelectorAll('nav.md-nav--primary > ul > li > a.md-nav__link')].map(
    a => a.getAttribute('href')),
  headings: [...document.querySelectorAll('.md-content h3')].map(h => h.textContent.replace('¶', '').trim()),
  text: document.querySelector('.md-content') ? document.querySelector('.md-content').innerText : '',
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


def test_navigation_lists_every_chapter_in_order(pages):
    nav = pages['index.html']['nav']
    assert nav == expected_pages(), f'navigation {nav} != notebooks in order {expected_pages()}'


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


def test_api_reference_lists_every_exported_name(pages):
    from needle_nb._modidx import d
    names = [s[len(mod)+1:] for mod, syms in d['syms'].items() for s in syms]
    exported = {n for n in names if '.' not in n and not n.startswith('_')}
    missing = exported - set(pages['api.html']['headings'])
    assert exported and not missing, f'API reference lacks: {sorted(missing)}'


@pytest.mark.parametrize('pattern,name', [('*init*.ipynb', 'xavier_uniform'), ('[0-9]*_nn*.ipynb', 'Linear'),
                                          ('*optim*.ipynb', 'Adam')])
def test_api_reference_has_chapter_names(pages, pattern, name):
    chapter(pattern)
    assert name in pages['api.html']['headings'], f'API reference lacks {name}'


def test_init_page_shows_plots_and_math(pages, server, browser):
    nb = chapter('*init*.ipynb')
    page = pages[page_of(nb)]
    assert page['images'] and all(i['w'] > 0 and i['h'] > 0 for i in page['images']), \
        f'{page_of(nb)}: plots missing or not loaded: {page["images"]}'
    assert page['math'] > 0, f'{page_of(nb)}: no typeset formulas'


def test_search_finds_an_exported_name(pages, server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    name = pages['api.html']['headings'][0]
    browser.get(server + 'index.html')
    box = browser.find_element(By.CSS_SELECTOR, 'input.md-search__input')  # in the header at this width
    box.click()
    box.send_keys(name)
    hits = WebDriverWait(browser, 15).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '.md-search-result__item'))
    assert hits, f'search for {name!r} found nothing'


def test_screenshot(pages, server, browser, request):
    "Save a picture of the init page (the home page until that chapter exists) for a human to look at."
    inits = sorted(NBS.glob('*init*.ipynb'))
    target = page_of(inits[0]) if inits else 'index.html'
    browser.get(server + target)
    browser.execute_async_script(_COLLECT)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS/target.replace('.html', '.png')
    assert browser.save_screenshot(str(path))
    with request.config.pluginmanager.get_plugin('capturemanager').global_and_fixture_disabled():
        print(f'\nscreenshot of {target}: {path}')
