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
