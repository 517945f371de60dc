"""The operator API token file: what bootd makes and what it refuses to start with (issue 11, 3.7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootd.keys import SecretError, api_token

MIN_API_TOKEN = 32  # issue 11, 3.7: the daemon refuses shorter operator tokens


def test_made_token_is_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "state" / "api-token"
    token = api_token(path)
    assert len(token) >= MIN_API_TOKEN
    assert path.read_text().strip() == token
    assert path.stat().st_mode & 0o777 == 0o600
    assert api_token(path) == token


@pytest.mark.parametrize(("content", "why"), [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"   \t \n", "is empty"),
    (b"short-token\n", "has 11 characters"),
    (b"x" * (MIN_API_TOKEN - 1), f"has {MIN_API_TOKEN - 1} characters"),
    (b"two words but more than thirty-two characters", "spaces, control or non-ASCII"),
    ("überlang-".encode() * 5, "spaces, control or non-ASCII"),
    (b"\xff" * 40, "spaces, control or non-ASCII"),
])
def test_unusable_token_file_is_refused(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "api-token"
    path.write_bytes(content)
    with pytest.raises(SecretError) as err:
        api_token(path)
    assert str(path) in str(err.value) and why in str(err.value)
    assert path.read_bytes() == content  # an operator's file is never rewritten


def test_operator_written_token_is_used(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("  " + "k" * MIN_API_TOKEN + "\n")
    assert api_token(path) == "k" * MIN_API_TOKEN
