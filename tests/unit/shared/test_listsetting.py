"""A list setting (openlines.listsetting): inline JSON or a .json/.toml file, errors that name where and never the content."""

from __future__ import annotations

from pathlib import Path

import pytest

from openlines.listsetting import read_list_setting

VAR = "OPENLINES_EXAMPLE_ACCOUNTS"
SECRET = "s3cr3t-Kq7Zt9Wm3xRv"


class ExampleError(ValueError):
    pass


def test_inline_json_a_json_file_and_a_toml_file_read_alike(tmp_path: Path) -> None:
    inline = read_list_setting(f'  {{"bots": [{{"account": "a", "secret": "{SECRET}"}}]}}\n', VAR, ExampleError)
    json_file = tmp_path / "bots.json"
    json_file.write_text(f'{{"bots": [{{"account": "a", "secret": "{SECRET}"}}]}}')
    toml_file = tmp_path / "bots.TOML"  # the suffix in any case
    toml_file.write_text(f'[[bots]]\naccount = "a"\nsecret = "{SECRET}"\n')
    assert read_list_setting(str(json_file), VAR, ExampleError) == inline == read_list_setting(str(toml_file), VAR, ExampleError)
    assert read_list_setting("[1, 2]", VAR, ExampleError) == [1, 2]


def test_a_file_of_another_suffix_is_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "bots.conf"
    path.write_text("[]")
    assert read_list_setting(str(path), VAR, ExampleError) == []


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b'{"secret": "' + SECRET.encode() + b'"', "x.json", "x.json: not valid JSON"),
        (b'secret = "' + SECRET.encode(), "x.toml", "x.toml: not valid TOML"),
        (b"\xff\xfe", "x.toml", "x.toml: not valid TOML"),  # not UTF-8
    ],
)
def test_an_undecodable_file_is_named_without_its_content(tmp_path: Path, content: bytes, name: str, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ExampleError, match=message) as err:
        read_list_setting(str(tmp_path / name), VAR, ExampleError)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", f"{VAR} is empty: give inline JSON or the path of a .json/.toml file"),
        (" \n", f"{VAR} is empty"),
        ('[{"secret": "' + SECRET + '"', f"{VAR} is not valid JSON"),
        ("/nonexistent/bots.toml", f"{VAR}: cannot read /nonexistent/bots.toml: No such file or directory"),
    ],
)
def test_an_empty_unreadable_or_broken_value_is_the_callers_error_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ExampleError) as err:
        read_list_setting(value, VAR, ExampleError)
    assert str(err.value).startswith(message) and SECRET not in str(err.value)
