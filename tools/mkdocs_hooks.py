"""mkdocs hook for notebook pages: give each heading the id its table-of-contents entry links to.

mkdocs-jupyter builds the page's table of contents with Python-Markdown (which drops code spans
from slugs and numbers duplicates `negate`, `negate_1`) but ids the headings with its own slugify
(which does neither), so TOC links like `#negate_1` or `#operators-on` went nowhere. Both come from
the same headings in the same order, so the TOC's ids are copied onto the headings in order.
"""
import logging
import re

log = logging.getLogger('mkdocs.hooks.needle_nb')
_re_heading = re.compile(r'<h([1-6])\b([^>]*?)\bid="([^"]*)"(.*?)</h\1>', re.DOTALL)


def _toc_ids(items):
    for item in items:
        yield item.id
        yield from _toc_ids(item.children)


def on_page_content(html, page, **kwargs):
    if not page.file.src_uri.endswith('.ipynb'): return html
    ids, heads = list(_toc_ids(page.toc)), list(_re_heading.finditer(html))
    if len(ids) != len(heads):  # e.g. an output with its own <h2>: leave the page as it is
        log.warning(f'{page.file.src_uri}: {len(heads)} headings but {len(ids)} TOC entries; ids left as they are')
        return html
    out, pos = [], 0
    for m, new in zip(heads, ids):
        level, before, old, rest = m.groups()
        rest = rest.replace(f'href="#{old}"', f'href="#{new}"')  # the heading's own ¶ link
        out += [html[pos:m.start()], f'<h{level}{before}id="{new}"{rest}</h{level}>']
        pos = m.end()
    return ''.join(out) + html[pos:]


# nbdev links every backticked name it knows (`Module.__init__`, `Sequential.modules`) to an anchor
# named after it, but only names with a `show_doc` get a heading with that id. A member without its
# own heading is documented under its class, so its links go to the class's heading instead.
_re_id = re.compile(r'\bid="([^"]+)"')
_re_member_link = re.compile(r'href="([\w.-]*\.html)?#([\w-]+)\.([\w.]+)"')


def _retarget_member_links(config):
    from pathlib import Path
    site = Path(config['site_dir'])
    pages = {p.name: p for p in site.glob('*.html')}
    ids = {name: set(_re_id.findall(p.read_text(encoding='utf-8'))) for name, p in pages.items()}
    for name, path in pages.items():
        html = path.read_text(encoding='utf-8')
        def retarget(m):
            target, owner, member = m.group(1) or name, m.group(2), m.group(3)
            anchors = ids.get(target, set())
            if f'{owner}.{member}' in anchors or owner not in anchors: return m.group(0)
            return f'href="{m.group(1) or ""}#{owner}"'
        new = _re_member_link.sub(retarget, html)
        if new != html: path.write_text(new, encoding='utf-8')


# Search: result snippets are the page's text, where math is still TeX source (`$\sqrt 2$`) because
# MathJax typesets it in the browser. The index gets a plain-text reading of each formula instead.
_TEX_SYMBOLS = {
    'alpha': 'α', 'beta': 'β', 'gamma': 'γ', 'delta': 'δ', 'epsilon': 'ε', 'varepsilon': 'ε', 'eta': 'η',
    'theta': 'θ', 'lambda': 'λ', 'mu': 'μ', 'nu': 'ν', 'pi': 'π', 'rho': 'ρ', 'sigma': 'σ', 'tau': 'τ',
    'phi': 'φ', 'psi': 'ψ', 'omega': 'ω', 'Sigma': 'Σ', 'Delta': 'Δ', 'Omega': 'Ω', 'nabla': '∇',
    'partial': '∂', 'sum': '∑', 'prod': '∏', 'int': '∫', 'infty': '∞', 'cdot': '·', 'times': '×',
    'approx': '≈', 'le': '≤', 'leq': '≤', 'ge': '≥', 'geq': '≥', 'ne': '≠', 'neq': '≠', 'pm': '±',
    'to': '→', 'rightarrow': '→', 'leftarrow': '←', 'mapsto': '↦', 'in': '∈', 'sim': '∼', 'odot': '⊙',
    'otimes': '⊗', 'ldots': '…', 'dots': '…', 'cdots': '⋯', 'sqrt': '√', 'top': 'ᵀ', 'log': 'log',
    'exp': 'exp', 'max': 'max', 'min': 'min', 'sup': 'sup', 'tanh': 'tanh', 'mathcal': '', 'mathbb': '',
    'mathrm': '', 'mathbf': '', 'text': '', 'operatorname': '', 'left': '', 'right': '', 'big': '',
    'Big': '', 'quad': ' ', 'qquad': ' ', ',': ' ', ';': ' ', '!': '', 'lVert': '‖', 'rVert': '‖',
    '|': '‖', '{': '{', '}': '}', '_': '_', '%': '%', '$': '$',
}
_re_math = re.compile(r'\$\$(.+?)\$\$|\$([^$\n]+?)\$|\\\((.+?)\\\)', re.DOTALL)


def tex_to_text(tex):
    r"Plain text for a TeX formula, good enough for a search snippet: `\sqrt 2` -> `√2`, `\frac{a}{b}` -> `a/b`."
    t = re.sub(r'\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}', r'(\1)/(\2)', tex)
    t = re.sub(r'\\([A-Za-z]+|.)', lambda m: _TEX_SYMBOLS.get(m.group(1), m.group(1)), t)
    t = re.sub(r'[{}]', '', t)
    return re.sub(r'\s+', ' ', t).strip()


def text_without_tex(text):
    return _re_math.sub(lambda m: tex_to_text(next(g for g in m.groups() if g is not None)), text)


def on_post_build(config, **kwargs):  # noqa: F811 (runs after the search plugin has written its index)
    _retarget_member_links(config)
    import json
    from pathlib import Path
    search = Path(config['site_dir'])/'search'
    index = search/'search_index.json'
    if not index.exists(): return
    data = json.loads(index.read_text(encoding='utf-8'))
    for doc in data.get('docs', []):
        for key in ('title', 'text'): doc[key] = text_without_tex(doc.get(key, ''))
    index.write_text(json.dumps(data, separators=(',', ':')), encoding='utf-8')
    # Opened from disk (file://), the theme loads the index as this script instead of fetching the JSON.
    (search/'search_index.js').write_text('var __index = ' + json.dumps(data, separators=(',', ':')) + ';',
                                          encoding='utf-8')
