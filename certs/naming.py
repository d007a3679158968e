"""The naming rule for device ids and operator names.

A device id or operator name ends up in a certificate (CN and SAN URI), in file
names under the PKI directory, in storage keys, in admin API paths and in log
lines. One rule, kept here, makes all of those safe: a short run of ASCII
letters, digits, '.', '_' and '-', other than '.' and '..'. It has no path
separators, whitespace, control characters or characters that need escaping in
a URI, and no dot segment, which HTTP clients remove from a URL path
(RFC 3986, section 5.2.4). The CLIs, the device simulator and the service all
import it.
"""

from __future__ import annotations

import re

DEVICE_ID_RULE = "1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', other than '.' and '..'"

DEVICE_URI_PREFIX = "urn:petvault:device:"
OPERATOR_URI_PREFIX = "urn:petvault:operator:"

MAX_NAME_LENGTH = 64

# An explicit ASCII class with fullmatch: `\w` would admit Unicode letters, and
# `$` would accept a trailing newline. The lookahead rejects the dot segments.
_NAME_PATTERN = re.compile(rf"(?!\.{{1,2}}\Z)[A-Za-z0-9._-]{{1,{MAX_NAME_LENGTH}}}")

# Longer rejected values are cut in error messages so that a hostile input
# cannot flood a log line or a terminal.
_MAX_SHOWN_CHARACTERS = 40


class InvalidNameError(ValueError):
    """Raised when a device id or operator name breaks `DEVICE_ID_RULE`.

    `str(error)` shows the rejected value, for a person who typed it. An API response
    must use `rule_message` instead, which states the rule without the value, because
    the value came from an untrusted client.
    """

    def __init__(self, message: str, *, rule_message: str) -> None:
        super().__init__(message)
        self.rule_message = rule_message


def validate_device_id(value: str) -> str:
    """Check a device id against `DEVICE_ID_RULE`.

    Args:
        value: The candidate id, for example ``"toy-42"`` or ``"kitchen.cam_2"``.

    Returns:
        The value unchanged, so callers can validate and assign in one step.

    Raises:
        InvalidNameError: The value is not a string or breaks the rule. The
            message shows the value (via ``repr``, shortened) and the rule.
    """
    return _validate_name(value, "device id")


def validate_operator_name(value: str) -> str:
    """Check an operator name against `DEVICE_ID_RULE`.

    Operator names follow the same rule as device ids because they take the
    same paths: certificate CN, SAN URI and a file name under the PKI directory.

    Returns:
        The value unchanged.

    Raises:
        InvalidNameError: The value is not a string or breaks the rule.
    """
    return _validate_name(value, "operator name")


def _validate_name(value: object, kind: str) -> str:
    rule_message = f"{kind} must be {DEVICE_ID_RULE}"
    if not isinstance(value, str):
        raise InvalidNameError(
            f"invalid {kind}: expected a string, got {type(value).__name__}",
            rule_message=rule_message,
        )

    if _NAME_PATTERN.fullmatch(value) is None:
        raise InvalidNameError(
            f"invalid {kind} {_shorten_for_message(value)}: must be {DEVICE_ID_RULE}",
            rule_message=rule_message,
        )

    return value


def _shorten_for_message(value: str) -> str:
    if len(value) <= _MAX_SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:_MAX_SHOWN_CHARACTERS]!r}... ({len(value)} characters)"
