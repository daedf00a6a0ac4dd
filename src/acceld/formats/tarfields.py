"""Tar header fields decoded the way Go's `archive/tar` reader decodes them.

The reference writers and readers of eStargz and zstd:chunked are Go programs, so both writers
interpret headers with these rules: numbers in octal or base-256, the checksum as the unsigned
or the historic signed byte sum, PAX records `"<len> <key>=<value>\\n"`.
"""

from __future__ import annotations

import zlib

from acceld.formats.driver import FormatError

_HIGH_BYTES = bytes(range(128, 256))
_SPACES_SUM = 8 * ord(" ")  # the checksum field as the sum counts it


def decode(raw: bytes) -> str:
    """Names and values as text; bytes that are not UTF-8 survive a round trip."""
    return raw.decode("utf-8", "surrogateescape")


def cstring(raw: bytes) -> bytes:
    """A NUL-terminated field without its terminator and padding."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


# the values of the fields headers repeat (modes, owners, device numbers), by their bytes
NUMBERS: dict[bytes, int] = {}
_MAX_NUMBERS = 4096


def parse_repeated_number(raw: bytes, what: str) -> int:
    """`parse_number` of a field most headers share a few values of (not sizes, times, checksums),
    its value kept in NUMBERS, where callers may look it up first."""
    value = NUMBERS.get(raw)
    if value is None:
        value = parse_number(raw, what)
        if len(NUMBERS) >= _MAX_NUMBERS:
            NUMBERS.clear()
        NUMBERS[bytes(raw)] = value
    return value


def parse_number(raw: bytes, what: str) -> int:
    """A numeric header field: octal text, or base-256 (two's complement) when the top bit is set."""
    raw = bytes(raw)  # bytes() of bytes is the same object, no copy
    text = raw.strip(b" \0")
    if text.isdigit():  # the usual field: digits between spaces and NULs (8 or 9 fail below)
        try:
            return int(text, 8)
        except ValueError:
            pass
    if raw and raw[0] & 0x80:
        negative = bool(raw[0] & 0x40)
        value = 0
        for index, byte in enumerate(raw):
            if negative:
                byte ^= 0xFF
            if index == 0:
                byte &= 0x7F
            value = value << 8 | byte
        if value >> 63:
            raise FormatError(f"bad tar header: {what} field overflows")
        return ~value if negative else value
    if b"\0" in text:
        text = cstring(text).strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FormatError(f"bad tar header: {what} field {raw!r} is not a number") from None


def checksum_ok(block: bytes) -> bool:
    """Go accepts the unsigned and the signed byte sum, with the checksum field counted as spaces.

    A checksum field that is not a number raises FormatError naming it (`chksum`, as Go does).
    """
    field = block[148:156]
    stored = parse_number(field, "chksum")
    if block.isascii():
        # at most 127 * 512 < 65521: Adler-32's low half is 1 + the byte sum, exactly; no byte
        # counts differently in the signed sum
        return stored == (zlib.adler32(block) & 0xFFFF) - 1 - sum(field) + _SPACES_SUM
    # the sum of the block's bytes: Adler-32's low half is 1 + the byte sum modulo 65521, exact
    # for 256 bytes (at most 65 280): two C calls instead of a Python loop over 512 ints
    byte_sum = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    if stored == byte_sum - sum(field) + _SPACES_SUM:
        return True
    patched = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(patched)
    high_bytes = len(patched) - len(patched.translate(None, _HIGH_BYTES))
    return stored == unsigned - 256 * high_bytes


def parse_pax_records(payload: bytes) -> dict[str, bytes]:
    """The records of a PAX extended header (`x` or `g`), later keys overriding earlier ones."""
    return dict(pax_record_list(payload))


def pax_record_list(payload: bytes) -> list[tuple[str, bytes]]:
    """The records of a PAX extended header in their order, repeated keys included."""
    records: list[tuple[str, bytes]] = []
    position = 0
    while position < len(payload):
        space = payload.find(b" ", position)
        if space < 0:
            raise FormatError("bad tar header: malformed PAX record")
        try:
            length = int(payload[position:space], 10)
        except ValueError:
            raise FormatError("bad tar header: malformed PAX record length") from None
        end = position + length
        if length <= space - position + 1 or end > len(payload) or payload[end - 1 : end] != b"\n":
            raise FormatError("bad tar header: malformed PAX record")
        key, equals, value = payload[space + 1 : end - 1].partition(b"=")
        if not equals or not key or b"\0" in key:
            raise FormatError("bad tar header: malformed PAX record")
        records.append((key.decode("utf-8", "surrogateescape"), value))
        position = end
    return records
