"""The course edition (nbs/98_course.ipynb, issue #25): markers, the learner's edition, the grader.

Every test that runs learner code goes through the grader's subprocess with a timeout, so none can hang.
"""
import json, os, shutil, socket, subprocess, sys, time, urllib.request, uuid
from pathlib import Path

import nbformat
import pytest

import needle_nb
from needle_nb import course

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
ALL = [e for p in sorted(NBS.glob("*.ipynb")) for e in course.find_exercises(p)]

# For every exercise, small wrong changes of its reference lines (a constant, an argument, a shape):
# each must fail the exercise's checks. A new exercise needs its mutants here (checked below).
MUTANTS = {
    "init.xavier_uniform": [("xavier_std(fan_in, fan_out, gain)", "xavier_std(fan_in, fan_in, gain)"),
                            ("rand(*shape,", "rand(*shape[::-1],"),
                            ("low=-bound", "low=0")],
    "init.xavier_normal": [("std=std", "std=1.01 * std"), ("mean=0", "mean=0.001")],
    "init.kaiming_uniform": [("kaiming_std(fan, gain)", "kaiming_std(fan, 1.0)"),
                             ("high=bound", "high=2 * bound")],
    "init.kaiming_normal": [("std=std", "std=std / 2"), ("kaiming_std(fan, gain)", "kaiming_std(fan_in, gain)")],
}
# Further chapters keep their mutants in tests/course_mutants_<part>.py, each a dict MUTANTS of the same form.
for _f in sorted(Path(__file__).parent.glob("course_mutants_*.py")):
    _ns = {}
    exec(compile(_f.read_text(), str(_f), "exec"), _ns)
    assert not set(_ns["MUTANTS"]) & set(MUTANTS), f"{_f.name}: exercises listed twice"
    MUTANTS.update(_ns["MUTANTS"])


def fill(dest, replace=None):
    "Write the reference lines into every region of the edition in `dest` (`replace`: id -> lines instead)."
    replace = replace or {}
    by_nb = {}
    for e in ALL: by_nb.setdefault(e.notebook, []).append(e)
    for name, exs in by_nb.items():
        path = Path(dest) / name
        if not path.exists(): continue
        nb = json.loads(path.read_text())
        for e in exs:
            cell = next(c for c in nb["cells"] if c["id"] == e.cell_id)
            src = "".join(cell["source"])
            stub = f'{e.indent}raise NotImplementedError("exercise {e.id}")'
            assert src.count(stub) == 1, (e.id, src)
            cell["source"] = src.replace(stub, "\n".join(replace.get(e.id, e.reference)))
        path.write_text(json.dumps(nb))


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    dest = tmp_path_factory.mktemp("edition") / "book"
    course.make_edition(dest)
    return dest


@pytest.fixture
def filled(edition, tmp_path):
    dest = tmp_path / "filled"
    shutil.copytree(edition, dest)
    fill(dest)
    return dest


def test_the_book_has_exercises_and_each_has_checks_and_mutants():
    ids = [e.id for e in ALL]
    assert len(ids) == len(set(ids)) and ids
    assert set(ids) == set(MUTANTS), "every exercise needs mutants in MUTANTS (and only exercises have them)"
    for e in ALL: assert course.CHECKS.get(e.id), f"{e.id} has no check"


def test_the_package_carries_no_markers_and_holds_the_reference():
    pkg = Path(needle_nb.__file__).parent
    for py in pkg.rglob("*.py"):
        text = py.read_text()
        assert "### BEGIN SOLUTION\n" not in text and not any(
            l.strip().startswith(("### BEGIN SOLUTION", "### END SOLUTION")) for l in text.splitlines()), py
    for e in ALL:
        text = course._module_file(pkg, e.module).read_text().splitlines()
        assert any(text[i:i + len(e.reference)] == e.reference for i in range(len(text))), e.id


def test_the_edition_stubs_every_region_and_is_valid_nbformat(edition):
    manifest = json.loads((edition / "exercises.json").read_text())
    assert [x["id"] for x in manifest["exercises"]] == [e.id for e in ALL]
    for x in manifest["exercises"]: assert x["checks"] and x["points"] >= 1
    for path in edition.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        text = path.read_text()
        assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
    for e in ALL:
        nb = json.loads((edition / e.notebook).read_text())
        src = "".join(next(c for c in nb["cells"] if c["id"] == e.cell_id)["source"])
        regions = course.learner_regions(src)
        k = [x.id for x in ALL if x.cell_id == e.cell_id].index(e.id)
        assert regions[k] == [f'{e.indent}raise NotImplementedError("exercise {e.id}")'], e.id
        assert not any(l in src.splitlines() for l in e.reference if l.strip()), f"{e.id}: the solution leaks into the edition"


def test_the_grader_fails_every_stub(edition):
    results = course.grade(edition, timeout=120)
    assert [r["id"] for r in results] == [e.id for e in ALL]
    for r in results:
        assert r["result"] == "fail" and f"NotImplementedError: exercise {r['id']}" in r["message"], r
    assert json.loads((edition / "grades.json").read_text()) == results


def test_the_grader_passes_every_reference_solution_alone_and_together(filled):
    for together in (False, True):
        results = course.grade(filled, together=together, timeout=120)
        assert all(r["result"] == "pass" for r in results), results
        assert sum(r["points"] for r in results) == sum(x["points"] for x in json.loads((filled / "exercises.json").read_text())["exercises"])


ROUNDS = max(len(m) for m in MUTANTS.values())


def test_every_mutant_is_a_change_of_one_place_in_its_region():
    for eid, mutants in MUTANTS.items():
        text = "\n".join(next(e for e in ALL if e.id == eid).reference)
        for find, repl in mutants:
            assert text.count(find) == 1 and repl != find, (eid, find)


@pytest.mark.parametrize("k", range(ROUNDS))
def test_every_mutant_fails_its_exercise(edition, tmp_path, k):
    "Round k: one edition where every exercise holds its k-th mutant, graded in one call (each exercise alone)."
    round_k = {eid: m[k] for eid, m in MUTANTS.items() if len(m) > k}
    lines = {}
    for eid, (find, repl) in round_k.items():
        text = "\n".join(next(e for e in ALL if e.id == eid).reference)
        lines[eid] = text.replace(find, repl).split("\n")
    dest = tmp_path / f"round{k}"
    shutil.copytree(edition, dest)
    fill(dest, lines)
    results = course.grade(dest, sorted(round_k), timeout=120)
    assert sorted(r["id"] for r in results) == sorted(round_k)
    survivors = [f"{r['id']}: {round_k[r['id']][0]!r} -> {round_k[r['id']][1]!r}" for r in results if r["result"] != "fail"]
    assert not survivors, "the checks cannot tell these mutants from the solution:\n" + "\n".join(survivors)


def sample(e):
    """`e` and, to show that its failure stays its own, its neighbours: the other exercises of its cell and
    module, and the first exercise of every other chapter."""
    near = [x.id for x in ALL if x.module == e.module and x.id != e.id][:4]
    firsts = [next(x.id for x in ALL if x.notebook == nb) for nb in dict.fromkeys(x.notebook for x in ALL) if nb != e.notebook]
    return [e.id] + near + firsts


def test_one_unfinished_exercise_fails_alone(edition, tmp_path):
    dest = tmp_path / "partial"
    shutil.copytree(edition, dest)
    first = ALL[0]
    fill(dest, {first.id: [f'{first.indent}raise NotImplementedError("exercise {first.id}")']})
    results = {r["id"]: r["result"] for r in course.grade(dest, sample(first), timeout=120)}
    assert results.pop(first.id) == "fail" and set(results.values()) == {"pass"} and len(results) >= 2


def learner_edition(edition, dest, lines):
    "A copy of `edition` in `dest`, filled with the reference but for `lines` (id -> the learner's lines)."
    shutil.copytree(edition, dest)
    fill(dest, lines)
    return dest


def test_an_infinite_loop_meets_the_timeout_and_fails_alone(edition, tmp_path):
    e = ALL[0]
    dest = learner_edition(edition, tmp_path / "loop", {e.id: [f"{e.indent}while True: pass"]})
    t = time.perf_counter()
    results = course.grade(dest, sample(e), timeout=8)
    assert time.perf_counter() - t < 120
    by_id = {r["id"]: r for r in results}
    assert by_id[e.id]["result"] == "fail" and "timeout" in by_id[e.id]["message"]
    assert all(r["result"] == "pass" for i, r in by_id.items() if i != e.id)


def test_a_syntax_error_fails_that_exercise_alone(edition, tmp_path):
    e = ALL[1]
    dest = learner_edition(edition, tmp_path / "syntax", {e.id: [f"{e.indent}return ((("]})
    by_id = {r["id"]: r for r in course.grade(dest, sample(e), timeout=120)}
    assert by_id[e.id]["result"] == "fail" and "SyntaxError" in by_id[e.id]["message"]
    assert all(r["result"] == "pass" for i, r in by_id.items() if i != e.id)


def test_editing_the_check_cells_cannot_make_a_stub_pass(edition, tmp_path):
    "The checks come from the reference package: a learner who empties every other cell gains nothing."
    dest = tmp_path / "cheat"
    shutil.copytree(edition, dest)
    region_cells = {e.cell_id for e in ALL}
    for path in dest.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        for c in nb["cells"]:
            if c["cell_type"] == "code" and c["id"] not in region_cells:
                c["source"] = "import needle_nb.course as c\nc.CHECKS.clear()\nassert True"
        path.write_text(json.dumps(nb))
    results = course.grade(dest, [e.id for e in ALL[::3]], timeout=120)
    assert {r["result"] for r in results} == {"fail"} and len(results) == len(ALL[::3])


def test_deleted_markers_fail_that_exercise_saying_so(filled):
    e = ALL[0]
    path = filled / e.notebook
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["id"] == e.cell_id)
    lines = "".join(cell["source"]).splitlines()
    cell["source"] = "\n".join(l for l in lines if "YOUR SOLUTION" not in l)
    path.write_text(json.dumps(nb))
    (r,) = course.grade(filled, [e.id], timeout=120)
    assert r["result"] == "fail" and "keep the marker lines" in r["message"]


def test_a_learners_work_is_never_overwritten(edition, tmp_path):
    other = tmp_path / "notes"
    other.mkdir(); (other / "mine.py").write_text("x = 1")
    with pytest.raises(FileExistsError, match="not a needle_nb course edition"): course.make_edition(other)
    assert (other / "mine.py").read_text() == "x = 1" and not (other / "exercises.json").exists()
    dest = tmp_path / "again"
    shutil.copytree(edition, dest)
    nb_path = dest / ALL[0].notebook
    nb_path.write_text(nb_path.read_text().replace("raise NotImplementedError", "raise  NotImplementedError"))
    before = nb_path.read_text()
    manifest = course.make_edition(dest)
    assert nb_path.read_text() == before and ALL[0].notebook in manifest["kept"]


def test_bad_requests_name_what_is_wrong(edition):
    with pytest.raises(ValueError, match="no exercises in chapter"): course.make_edition(edition, ["00_nope"])
    with pytest.raises(ValueError, match="unknown exercise"): course.grade(edition, ["init.nope"])


def test_the_command_line(edition, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-c", "import sys; from needle_nb.course import main; sys.exit(main(sys.argv[1:]))", *a], capture_output=True, text=True,
                                    timeout=300, cwd=tmp_path)
    dest = tmp_path / "cli"
    out = run("exercises", str(dest), "--chapters", ALL[0].notebook[:-6])
    assert out.returncode == 0 and "exercises into" in out.stdout, out.stderr
    out = run("grade", str(dest), ALL[0].id)
    assert out.returncode == 1 and ALL[0].id in out.stdout and "fail" in out.stdout
    fill(dest)
    out = run("grade", str(dest), ALL[0].id)
    assert out.returncode == 0 and "1/1 exercises pass" in out.stdout, out.stdout + out.stderr
    out = run("grade", str(dest), "init.nope")
    assert out.returncode == 2 and "unknown exercise" in out.stderr
    script = shutil.which("needle-nb", path=str(Path(sys.executable).parent))
    if os.environ.get("CI") or script:
        assert script, "the needle-nb console script is not installed (pip install -e .)"
        assert subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60).returncode == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_jupyter_lab_serves_the_edition_and_its_kernel_imports_needle_nb(edition):
    "Start `jupyter lab --no-browser` on 127.0.0.1 and check, through its HTTP API, a chapter and a kernel."
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent))
    if jupyter is None:
        if os.environ.get("CI"): pytest.fail("jupyter lab is not installed: the dev extra installs it")
        pytest.skip("jupyter lab is not installed (pip install -e '.[dev]')")
    websocket = pytest.importorskip("websocket")
    port, token = _free_port(), uuid.uuid4().hex
    proc = subprocess.Popen([jupyter, "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={edition}",
                             "--ServerApp.open_browser=False", "--allow-root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    def api(path, method="GET", body=None):
        req = urllib.request.Request(base + path, method=method, headers=auth,
                                     data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as r: return json.loads(r.read())
    try:
        deadline = time.time() + 90
        while True:
            try: api("/api/status"); break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("jupyter lab did not start: " + (proc.stdout.read(4000).decode() if proc.poll() is not None else "timeout"))
                time.sleep(0.5)
        nb = api(f"/api/contents/{ALL[0].notebook}")
        assert nb["type"] == "notebook" and any("NotImplementedError" in "".join(c["source"]) for c in nb["content"]["cells"])
        kernel = api("/api/kernels", "POST", {"name": "python3"})
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}", timeout=60)
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": "s",
                                       "version": "5.3", "date": ""},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": "import needle_nb; print('needle_nb', needle_nb.__version__)",
                                        "silent": False, "store_history": False, "user_expressions": {},
                                        "allow_stdin": False}}))
        printed, deadline = "", time.time() + 60
        while time.time() < deadline:
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id: continue
            if m["msg_type"] == "stream": printed += m["content"]["text"]
            if m["msg_type"] == "error": pytest.fail(f"the kernel could not import needle_nb: {m['content']['evalue']}")
            if m["msg_type"] == "execute_reply": break
        ws.close()
        assert f"needle_nb {needle_nb.__version__}" in printed
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()


def test_every_op_documents_its_forward_and_its_adjoints():
    "Issue #25: each op's `compute` and `gradient` say what they compute (not the generic `Op` docstring)."
    from needle_nb import autograd, ops, ops_conv, ops_norm
    base = {"compute": autograd.Op.compute, "gradient": autograd.Op.gradient}
    prefix = {"compute": "Forward", "gradient": "Adjoint"}
    seen = []
    for mod in (ops, ops_conv, ops_norm):
        for name, cls in vars(mod).items():
            if not (isinstance(cls, type) and issubclass(cls, autograd.Op) and cls.__module__ == mod.__name__): continue
            methods = {m: getattr(cls, m) for m in base}
            if name.startswith("_") and all(methods[m] is base[m] for m in base): continue   # a shared base (`_Pool`)
            for m, fn in methods.items():
                doc = fn.__doc__ or ""   # not inspect.getdoc: that falls back to the base class's
                assert fn is not base[m] and doc.strip() and doc != base[m].__doc__, f"{mod.__name__}.{name}.{m} has no docstring"
                assert doc.startswith(prefix[m]), f"{mod.__name__}.{name}.{m}: {doc[:60]!r} should start with {prefix[m]!r}"
            seen.append(name)
    assert {"EWiseMul", "MatMul", "Summation", "Conv", "MaxPool", "BatchNorm"} <= set(seen) and len(seen) >= 45, seen


def test_the_grader_without_fork_gives_the_same_results(edition, tmp_path, monkeypatch):
    "Where the grader cannot fork (not Linux, or NEEDLE_NB_GRADE_FORK=0), one Python per package: same results."
    loop, broken = ALL[0], ALL[1]
    dest = learner_edition(edition, tmp_path / "nofork", {loop.id: [f"{loop.indent}while True: pass"],
                                                          broken.id: [f"{broken.indent}return ((("]})
    ids = list(dict.fromkeys(sample(loop) + sample(broken)))
    forked = course.grade(dest, ids, timeout=3)
    monkeypatch.setenv("NEEDLE_NB_GRADE_FORK", "0")
    assert not course._can_fork()
    plain = course.grade(dest, ids, timeout=3, workers=1)
    assert plain == forked
    by_id = {r["id"]: r for r in plain}
    assert "timeout" in by_id[loop.id]["message"] and "SyntaxError" in by_id[broken.id]["message"]
    assert all(r["result"] == "pass" for i, r in by_id.items() if i not in (loop.id, broken.id)) and len(by_id) >= 4
