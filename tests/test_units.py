"""engine.units: one byte convention (binary) for the CLI and the window."""

import pytest

from engine.units import format_bytes, parse_size


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (120_000_000, "114.4 MiB"), (50 * 2**30, "50.0 GiB"),
    (3 * 2**40, "3.0 TiB"), (2**60, "1048576.0 TiB"),
])
def test_format_bytes_uses_binary_units(count, text):
    assert format_bytes(count) == text


def test_parse_size_reads_what_format_bytes_writes():
    for count in (2**20, 50 * 2**30):
        assert parse_size(format_bytes(count)) == count
    assert parse_size("50GiB") == 50 * 2**30 and parse_size("500 MB") == 500 * 10**6 and parse_size("12") == 12
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
