"""Turn nbdev's processed notebooks (`nbdev.serve.proc_nbs` output) into notebooks that a plain
nbconvert-based renderer (mkdocs-jupyter here, nbconvert's markdown exporter for the README) shows
the way Quarto would show them.

`proc_nbs` already applied nbdev's own processors (hidden cells, exports, `show_doc`, doc links);
what is left are the Quarto-only conventions: YAML front matter, `#|` cell options and Pandoc
attributes in `show_doc` output. Used by `build_site.py` and `make_readme.py`.
"""
import re
from pathlib import Path

import nbformat
import yaml

_re_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
# show_doc writes `[source](url){target="_blank" style="..."}`; Pandoc reads the braces, markdown engines don't.
_re_pandoc_link = re.compile(r'\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}')
_re_heading = re.compile(r'^(#{2,4}) (\S.*)$', re.MULTILINE)


def split_directives(source):
    "The `#|` options of a code cell as a dict, and its source without them."
    opts, body = {}, []
    for line in source.splitlines():
        m = _re_directive.match(line)
        if m: opts[m.group(1)] = m.group(2).strip('"\'')
        else: body.append(line)
    return opts, '\n'.join(body).strip('\n')


def front_matter(nb):
    "The YAML front matter `proc_nbs` puts in a leading raw cell ({} when there is none)."
    for cell in nb.cells:
        src = cell.source.strip()
        if cell.cell_type == 'raw' and src.startswith('---'):
            return yaml.safe_load(src.strip('-')) or {}
    return {}


def page_name(nb, nb_path):
    "The page's file stem: nbdev's `output-file` (e.g. `backend` for `00_backend.ipynb`)."
    out = front_matter(nb).get('output-file')
    return Path(out).stem if out else Path(nb_path).stem


def _pandoc_link(m):
    text, url, attrs = m.groups()
    html_attrs = ' '.join(re.findall(r'\w[\w-]*="[^"]*"', attrs))
    return f'<a href="{url}" {html_attrs}>{text}</a>'


def _anchor_headings(md):
    # nbdev's doc links point at Quarto's ids for members (`#device.array`); the site's own heading
    # ids drop the dot (`devicearray`), so such a show_doc heading gets an anchor with nbdev's id too.
    def _sub(m):
        name = re.sub(r'[`*\\]', '', m.group(2)).strip().lower()
        anchor = f'<a id="{name}"></a>\n\n' if re.search(r'[^\w-]', name) else ''
        return f'{anchor}{m.group(1)} {m.group(2)}'
    return _re_heading.sub(_sub, md)


_re_doctest_directive = re.compile(r'\s*#\s*doctest:.*$')
_re_section = re.compile(r'^(Args|Arguments|Parameters|Returns|Yields|Raises|Shapes?|Examples?|Notes?|Attributes):\s*$')
_re_item = re.compile(r'^([*\w][\w, *.()\[\]`]*):\s+(\S.*)$')
_re_sig = re.compile(r'(```python\n)(.*?)(\n```)', re.DOTALL)


def _sig_annotations(m):
    # `from __future__ import annotations` leaves annotations as strings, which the signature quotes
    sig = re.sub(r"""(:|->)\s*"?'([^'"\n]+)'"?""", r'\1\2', m.group(2))
    return m.group(1) + sig + m.group(3)


def _docstring_md(text):
    """A Google-style docstring (as show_doc pastes it) as markdown: `>>>` examples become python code
    blocks (without doctest directives), `Args:`-style sections become bold labels and lists."""
    lines, out, i = text.split('\n'), [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith('>>>'):
            indent = len(line) - len(line.lstrip())
            block = []
            while i < len(lines) and lines[i].strip() and (len(lines[i]) - len(lines[i].lstrip())) >= indent:
                block.append(_re_doctest_directive.sub('', lines[i][indent:]))
                i += 1
            out += ['', '```python', *block, '```', '']
            continue
        m = _re_section.match(line.strip()) if line == line.lstrip() else None
        if m:
            out += ['', f'**{m.group(1)}**', '']
            i += 1
            items = []
            while i < len(lines) and (lines[i].startswith((' ', '\t')) or not lines[i].strip()):
                sub = lines[i].strip()
                if lines[i].lstrip().startswith('>>>'): break
                if not sub:
                    if i + 1 < len(lines) and lines[i + 1].startswith((' ', '\t')): i += 1; continue
                    break
                depth = len(lines[i]) - len(lines[i].lstrip())
                item = _re_item.match(sub)
                if item and (not items or depth <= items[-1][0]): items.append([depth, f'- `{item.group(1)}`: {item.group(2)}'])
                elif items: items[-1][1] += ' ' + sub
                else: items.append([depth, sub])
                i += 1
            out += [t for _, t in items] + ['']
            continue
        out.append(line)
        i += 1
    return re.sub(r'\n{3,}', '\n\n', '\n'.join(out))


def fix_show_doc(md, bare=frozenset()):
    """A `show_doc` section as a reader should see it: a heading whose dunders stay dunders, a
    signature without quoted annotations, and the docstring's examples and sections formatted.
    `bare`: names of classes that take no arguments (nbdev shows them `(*args, **kwargs)`)."""
    md = _bare_class_signature(_class_lines(md), bare)
    md = re.sub(r'^(#{2,4}) (.*)$', lambda m: m.group(1) + ' ' + re.sub(r'(?<!\\)_', r'\\_', m.group(2)) if '__' in m.group(2) else m.group(0),
                md, count=1, flags=re.MULTILINE)
    md = _re_sig.sub(_sig_annotations, md, count=1)
    head, sep, doc = md.partition('\n```\n')
    return head + sep + _docstring_md(doc) if sep else md


_ROOT = Path(__file__).resolve().parents[1]
_re_no_line = re.compile(r'(/blob/[^/\s"]+/(\S+?\.py))#LNone')


def _class_lines(md):
    """nbdev finds no line for a class (`...backend.py#LNone`): look its definition up in the source,
    so the source link points at it and the section can be put in source order."""
    name = show_doc_name(md)
    def sub(m):
        path = _ROOT/m.group(2)
        if name and path.exists():
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if re.match(rf'class {re.escape(name.split(".")[-1])}\b', line): return f'{m.group(1)}#L{i}'
        return m.group(1)
    return _re_no_line.sub(sub, md)


def _bare_class_signature(md, bare):
    # a class without its own `__init__` shows object's `(*args, **kwargs)`; it takes no arguments
    name = show_doc_name(md)
    if name not in bare: return md
    return re.sub(r'```python\ndef (\w+)\(\n\s*\*args, \*\*kwargs\n\):\n```', r'```python\ndef \1():\n```', md, count=1)


def show_doc_name(md):
    "The documented name of a `show_doc` section (its first heading), unescaped."
    m = re.search(r'^#{2,4} (.*)$', md, re.MULTILINE)
    return re.sub(r'[`*\\]', '', m.group(1)).strip() if m else None


def source_line(md):
    "(file, line) of a `show_doc` section's source link, to put sections in source order."
    m = re.search(r'/blob/[^/]+/(\S+?)#L(\d+)', md)
    return (m.group(1), int(m.group(2))) if m else None


def fix_markdown(md, links):
    "Pandoc link attributes to HTML; site-absolute and `.ipynb` links to the offline pages."
    md = _re_pandoc_link.sub(_pandoc_link, md)
    for old, new in links.items(): md = md.replace(old, new)
    return md


def _md_text(out):
    md = out.get('data', {}).get('text/markdown', '')
    return ''.join(md) if isinstance(md, list) else md


def _source_order(cells):
    """nbdev inserts the `show_doc`s of a cell's definitions in reverse (`TensorTupleOp` before `Op`):
    put each run of consecutive `show_doc` sections from one file back in source order."""
    out, run = [], []
    def flush():
        files = {c.metadata['show_doc'][0] for c in run if c.metadata['show_doc']}
        if len(files) == 1 and all(c.metadata['show_doc'] for c in run): run.sort(key=lambda c: c.metadata['show_doc'][1])
        out.extend(run); run.clear()
    for c in cells:
        if 'show_doc' in c.get('metadata', {}): run.append(c); continue
        flush(); out.append(c)
    flush()
    for c in out: c.metadata.pop('show_doc', None)
    return out


_re_marker = re.compile(r'^\s*### (BEGIN|END) SOLUTION\b.*$\n?', re.MULTILINE)
BADGE = ' <span class="exercise-badge" title="a course exercise: needle-nb exercises writes it as a stub">exercise</span>'


def add_badge(md, name):
    """A `show_doc` section with the course's *exercise* badge after its first heading. The badge joins
    the heading's text, so the heading's own id changes (`xavier_uniform-exercise`): an anchor with the
    name's id (`xavier_uniform`, `ewisemul.gradient`, as nbdev's doc links write it) keeps links working."""
    anchor = f'<a id="{name.lower()}"></a>'
    md = re.sub(r'^(#{2,4} .*)$', lambda m: m.group(1) + BADGE, md, count=1, flags=re.MULTILINE)
    return md if anchor in md else f'{anchor}\n\n{md}'


def fix_notebook(nb, links=None, bare=frozenset(), exercises=frozenset()):
    """Make a `proc_nbs` notebook render without Quarto; returns a new notebook.

    `links` maps URL prefixes/targets to their replacement (e.g. the published site's URL to '');
    `bare`: names of classes that take no arguments (see `fix_show_doc`); `exercises`: names of the
    functions that hold a course exercise (`xavier_uniform`, `EWiseMul.gradient`): their sections get
    a badge, and the solution markers are dropped from every code cell (the site shows none).
    """
    links = links or {}
    fm = front_matter(nb)
    cells = []
    if fm.get('title'):
        desc = f"\n\n> {fm['description']}" if fm.get('description') else ''
        cells.append(nbformat.v4.new_markdown_cell(f"# {fm['title']}{desc}"))
    for cell in nb.cells:
        cell.get('metadata', {}).pop('execution', None)  # a float here fails nbformat validation
        src = cell.get('source', '')
        if cell.cell_type == 'raw' and src.strip().startswith('---'): continue
        if cell.cell_type == 'markdown':
            if src.startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            if src.strip(): cells.append(nbformat.v4.new_markdown_cell(fix_markdown(src, links)))
            continue
        if cell.cell_type != 'code' or not src.strip() and not cell.get('outputs'): continue
        opts, body = split_directives(_re_marker.sub('', src))
        if opts.get('include') == 'false': continue
        if opts.get('output') == 'asis':
            # show_doc output: a markdown cell, so its headings join the page's table of contents
            md = '\n\n'.join(_md_text(o) for o in cell.get('outputs', []) if _md_text(o))
            name = show_doc_name(md) if md else None
            if name and name.startswith('_') and '.' not in name: continue  # a module's `__getattr__`: no API
            if md:
                md = fix_show_doc(md, bare)
                md = _anchor_headings(fix_markdown(md, links))
                if name in exercises: md = add_badge(md, name)
                new = nbformat.v4.new_markdown_cell(md)
                new.metadata['show_doc'] = source_line(md) or ()
                cells.append(new)
            continue
        new = nbformat.v4.new_code_cell(body)
        new.outputs = cell.get('outputs', [])
        for out in new.outputs:
            if 'text/markdown' in out.get('data', {}):
                out['data']['text/markdown'] = fix_markdown(_md_text(out), links)
        tags = []
        if opts.get('echo') == 'false' or not body: tags.append('remove_input')
        if opts.get('output') == 'false': tags.append('remove_output')
        if tags: new.metadata['tags'] = tags
        cells.append(new)
    out = nbformat.v4.new_notebook(cells=_source_order(cells))
    out.metadata = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                    'language_info': {'name': 'python'}}
    nbformat.validate(out)
    return out
