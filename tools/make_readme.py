"""Write README.md from nbs/index.ipynb and its stored outputs (no notebook is run).

nbdev's own `nbdev-readme` needs Quarto; this applies nbdev's doc processors to the notebook, the
same Quarto-to-nbconvert fix-ups as the offline site (tools/nbpages.py), and nbconvert's markdown
exporter. Doc links to the API are left out on purpose: they would make README.md change whenever
another chapter exports a name that the index mentions.

Usage: python tools/make_readme.py          # write README.md
       python tools/make_readme.py --check  # exit 1 if README.md is not what it would write
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
import nbpages


def render():
    "The README text made from the committed nbs/index.ipynb."
    import os
    from fastcore.nbio import read_nb, nb2str
    from nbconvert import MarkdownExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from nbdev.processors import FilterDefaults
    import nbformat

    os.chdir(ROOT)  # nbdev reads its config from the cwd
    nb = read_nb(ROOT/'nbs'/'index.ipynb')
    procs = FilterDefaults()
    # no re-execution (stored outputs only) and no doc links (see the module docstring)
    procs.base_procs = lambda: [p for p in FilterDefaults.base_procs(procs)
                                if p.__name__ not in ('exec_show_docs', 'add_links')]
    procs(nb)
    nb = nbpages.fix_notebook(nbformat.reads(nb2str(nb), as_version=4))
    exporter = MarkdownExporter()
    exporter.register_preprocessor(TagRemovePreprocessor(
        remove_input_tags={'remove_input'}, remove_all_outputs_tags={'remove_output'}), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    header = '<!-- Made from nbs/index.ipynb by `python tools/make_readme.py`: edit the notebook, not this file. -->\n\n'
    return header + body.strip() + '\n'


def main():
    text, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit('README.md is not what nbs/index.ipynb makes: run python tools/make_readme.py')
        return print('README.md is up to date')
    readme.write_text(text)
    print(f'wrote {readme}')


if __name__ == '__main__':
    main()
