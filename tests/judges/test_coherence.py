import pytest

from panacea.judges.coherence import is_degenerate, is_incoherent, words


def test_words_follow_the_papers_tokenisation():
    assert words("Don't  STOP-me 42 now!") == ["don", "t", "stop", "me", "now"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the the the the", True),
        ("the the the", False),
        ("no! no! no! no!", True),  # punctuation-separated repeats
        ("No, no. NO; no", True),  # case-insensitive
        ("a b a b a b a b", False),  # alternation is not a run
        ("I I I I think so", True),
        ("1 1 1 1 1", False),  # digits are not letters: no words at all
        ("This is a perfectly ordinary sentence.", False),
        ("", False),
    ],
)
def test_incoherence_rule(text, expected):
    assert is_incoherent(text) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("positive", True),  # < 2 distinct words
        ("negative negative", True),
        ("", True),
        ("!!!! ???", True),
        ("#$%& (*) ]]] :: {{ }} ab cd", True),  # > 50 % symbols
        ("go go go go home", True),  # incoherent
        ("Sure, here is how.", False),
        ("The movie was great and the acting was superb.", False),
        ("x = f(a, b) + g(c)", False),  # a little code is fine
    ],
)
def test_degenerate(text, expected):
    assert is_degenerate(text) is expected
