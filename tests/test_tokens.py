import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from decoding.core.tokens import (
    RunningText,
    bytes_to_text,
    escape_controls,
    escape_unshown,
    is_unshown,
    json_escaped,
    one_line,
    token_label,
)


def test_partial_utf8_bytes_show_as_hex():
    euro = "€".encode()  # three bytes: E2 82 AC
    assert bytes_to_text(euro[:1]) == "<0xE2>"
    assert bytes_to_text(euro[1:]) == "<0x82><0xAC>"
    assert bytes_to_text(b" caf" + "é".encode()) == " café"


def test_whitespace_is_made_visible():
    assert token_label(" the") == "␣the"
    assert token_label("\n\n") == "↵↵"
    assert token_label("\tx") == "⇥x"
    assert one_line(" most\n") == " most↵"


def test_control_characters_are_escaped_never_raw():
    assert token_label("\x1b[31m") == "\\x1b[31m"
    assert token_label("\r") == "\\x0d"
    assert escape_controls("a\x07b\nc\u202e") == "a\\x07b\nc\\u202e"


def test_markup_like_text_is_left_literal():
    assert token_label("[bold]x[/]") == "[bold]x[/]"


@given(st.text())
def test_no_control_character_survives_a_label(text):
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in token_label(text))


@given(st.binary(max_size=12))
def test_any_bytes_decode_to_text_without_replacement_characters(raw):
    shown = bytes_to_text(raw)
    assert "\ufffd" not in shown or "\ufffd".encode() in raw


def test_a_character_split_over_tokens_belongs_to_the_token_that_completes_it():
    euro = "€".encode()
    text = RunningText()
    assert [text.push(raw) for raw in (b" a", euro[:1], euro[1:2])] == [" a", "", ""]
    assert text.unfinished() == "\ufffd"  # cut short so far: shown as a replacement mark
    text.pop()  # undo the middle byte...
    assert text.push(euro[1:]) == "€"  # ...and complete the character instead
    assert text.push(b"!") == "!" and text.unfinished() == ""


@given(st.text(st.one_of(st.characters(), st.characters(categories=["Cs", "Cc", "Cf"])), max_size=200))
def test_escaping_checks_every_character_that_is_not_printable_ascii(text):
    one_by_one = "".join(json_escaped(ch) if is_unshown(ch) or ch in "\u2028\u2029" else ch for ch in text)
    assert escape_unshown(text, json_escaped, also="\u2028\u2029") == one_by_one
