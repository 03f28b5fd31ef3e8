"""experiments.corpus: the State of the Union addresses load, verified, from the installed package."""

import shutil

import pytest

import fnn.config
from experiments import corpus


def test_the_installed_corpus_loads_in_date_order():
    speeches = corpus.speeches()
    assert len(speeches) == 237
    assert speeches[0].fileid == "1790-Washington-1" and speeches[0].year == 1790
    assert speeches[0].text.startswith("Fellow-Citizens of the Senate and House of Representatives")
    assert [s.year for s in speeches] == sorted(s.year for s in speeches)
    assert sum(len(s.text) for s in speeches) > 10_000_000
    assert {s.party for s in speeches} >= {"Democratic", "Republican", "Whig"}
    assert {s.delivery for s in speeches} == {"spoken", "written"}
    assert len(corpus.speeches(addresses_only=False)) == 249


def test_split_holds_out_every_nth_item():
    kept, held = corpus.split(list(range(25)), 5)
    assert held == [4, 9, 14, 19, 24]
    assert sorted(kept + held) == list(range(25))
    assert corpus.split(list(range(25)), 25)[1] == [24]
    # more than there are: nothing held out (an IndexError after the vocabulary before)
    with pytest.raises(fnn.config.ConfigError, match="held_out_every: 26 would hold out none of the 25 "
                                                      "addresses of 1861; at most 25"):
        corpus.split(list(range(25)), 26, "addresses of 1861")


@pytest.fixture
def copy_of_corpus(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(corpus.data_dir(), root)
    return root


def test_a_corrupt_file_is_detected(copy_of_corpus):
    path = copy_of_corpus / "speeches" / "1800-Adams-1.txt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(corpus.CorpusError, match=r"1800-Adams-1.txt is corrupt: its SHA-256 differs from line \d+"):
        corpus.speeches(copy_of_corpus)


def test_a_missing_file_or_table_is_a_clear_error(copy_of_corpus):
    (copy_of_corpus / "speeches" / "1790-Washington-2.txt").unlink()
    with pytest.raises(corpus.CorpusError, match=r"1790-Washington-2.txt \(listed on line 3 of .*\) cannot be read"):
        corpus.speeches(copy_of_corpus)
    (copy_of_corpus / "metadata.csv").write_text("a,b\n1,2\n")
    with pytest.raises(corpus.CorpusError, match="is not the corpus metadata: it needs columns"):
        corpus.speeches(copy_of_corpus)
    (copy_of_corpus / "metadata.csv").unlink()
    with pytest.raises(corpus.CorpusError, match="cannot read the corpus metadata"):
        corpus.speeches(copy_of_corpus)
