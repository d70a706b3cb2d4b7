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


def on_post_build(config, **kwargs):
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
