"""Finding PII and secrets in text: one combined regular expression for candidates, then validation.

Every built-in detector has a name (the ``[REDACTED_<NAME>]`` label):

========================  ===========================================================
``EMAIL``                 addresses with a dotted domain
``PHONE``                 phone-shaped digit groups that ``phonenumbers`` finds *possible*
                          in one of the configured regions (or internationally with ``+``)
``SSN``                   US social security numbers with separators, invalid areas,
                          groups and serials rejected
``CREDIT_CARD``           13 to 19 digits, optionally grouped, passing the Luhn check
``IP_ADDRESS``            IPv4 and IPv6, validated with ``ipaddress``
``IBAN``                  country code, check digits and account, mod-97 checked
``API_KEY``               OpenAI, Anthropic, AWS access keys, GitHub, Slack tokens and
                          webhooks, Google API keys, Hugging Face, Stripe
``JWT``                   three base64url parts, the first two JSON objects
``PRIVATE_KEY``           PEM private key blocks
========================  ===========================================================

Pattern names are case-insensitive, so the TypeScript seed's ``['email', 'phone',
'ssn', 'credit_card']`` chooses the same detectors as ``["EMAIL", "PHONE", ...]``; the
labels are the seed's too (``[REDACTED_EMAIL]``, ``[REDACTED_API_KEY]`` ...).

Candidates that are obviously placeholders (``xxxx``, ``abc123``, a run of one
character) are not secrets.  Overlapping findings keep the earliest, longest one;
a custom detector wins over a built-in one where both match, since its
replacement is what the user asked for.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from collections.abc import Iterable

import phonenumbers

from vibekit_telemetry import ConfigError

#: names of the built-in detectors, in priority order when two findings overlap
BUILTIN = ("PRIVATE_KEY", "JWT", "API_KEY", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE")
#: other spellings of built-in names (Presidio's entity names among them), compared after upper-casing
ALIASES = {"IP": "IP_ADDRESS", "CREDITCARD": "CREDIT_CARD", "APIKEY": "API_KEY", "EMAIL_ADDRESS": "EMAIL",
           "PHONE_NUMBER": "PHONE", "US_SSN": "SSN", "IBAN_CODE": "IBAN"}
_JS_LITERAL = re.compile(r"/(?P<body>.+)/(?P<flags>[dgimsuy]+)", re.S)
_JS_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


def canonical_pattern(name: str) -> str:
    """The built-in detector a pattern name means: ``"credit_card"``, ``"Credit-Card"`` are ``CREDIT_CARD``.

    Raises :class:`ConfigError` listing the built-in names for a name that is none of them.
    """
    if not isinstance(name, str):
        raise ConfigError(f"patterns: expected pattern names, got {name!r}")
    key = re.sub(r"[\s\-]+", "_", name.strip()).upper()
    key = ALIASES.get(key, key)
    if key not in BUILTIN:
        raise ConfigError(f"patterns: unknown PII patterns [{name!r}]; built in (any case): "
                          f"{', '.join(n.lower() for n in BUILTIN)}")
    return key


def compile_detector(name: str, pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """A custom detector's pattern, compiled.

    A compiled ``re.Pattern`` is used as it is (its flags kept).  A string written
    like a JavaScript literal with flags, ``"/sk-[a-zA-Z0-9]{48}/g"`` as in the seed,
    is read as one (``i``, ``m`` and ``s`` kept; ``g`` is what scanning does anyway),
    so a ported pattern does not silently look for the slashes.
    """
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise ConfigError(f"custom_detectors: {name!r}: the pattern must match text (str), not bytes")
        return pattern
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"custom_detectors: {name!r}: pattern must be a regular expression (a string or "
                          f"re.compile(...)), got {pattern!r}")
    flags = 0
    literal = _JS_LITERAL.fullmatch(pattern)
    if literal:
        pattern = literal.group("body")
        for flag in literal.group("flags"):
            flags |= _JS_FLAGS.get(flag, 0)
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ConfigError(f"custom_detectors: {name!r}: invalid pattern: {exc}") from None

_SECRET_PATTERNS = [
    r"sk-ant-(?:api|admin|sid)\d{2}-[A-Za-z0-9_\-]{93}AA(?![A-Za-z0-9_\-])",  # Anthropic
    r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}",                        # OpenAI project / service keys
    r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}",                            # OpenAI legacy keys
    r"sk-[A-Za-z0-9]{40,64}(?![A-Za-z0-9])",                                 # OpenAI other keys
    r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])",           # AWS access key ids
    r"ABSK[A-Za-z0-9+/]{109,269}={0,2}",                                     # AWS Bedrock long-lived keys
    r"bedrock-api-key-[A-Za-z0-9+/=]{100,}",                                 # AWS Bedrock short-lived keys
    r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}",                           # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{82}",                                          # GitHub fine-grained tokens
    r"xox[abposre]-(?:\d-)?\d{6,}(?:-\d+)*-[A-Za-z0-9]{8,}",                 # Slack bot/user/legacy tokens
    r"xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+",                                      # Slack app tokens
    r"xoxe(?:\.xox[bp])?-\d-[A-Za-z0-9]{140,}",                              # Slack config tokens
    r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56}",  # Slack webhooks
    r"AIza[0-9A-Za-z_\-]{35}",                                               # Google API keys
    r"hf_[A-Za-z]{34}(?![A-Za-z])",                                          # Hugging Face access tokens
    r"api_org_[A-Za-z]{34}(?![A-Za-z])",                                     # Hugging Face organisation tokens
    r"(?:sk|rk)_(?:test|live|prod)_[A-Za-z0-9]{10,99}",                      # Stripe
]

_PARTS = {
    "PRIVATE_KEY": r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----[\s\S]{1,20000}?(?:-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----|$)",
    "JWT": r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
    "API_KEY": r"(?<![A-Za-z0-9_\-])(?:" + "|".join(_SECRET_PATTERNS) + ")",
    "EMAIL": r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9\-]{1,63}\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])",
    "IBAN": r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]{4}){2,7}(?:[ \-]?[A-Za-z0-9]{1,3})?(?![A-Za-z0-9])",
    "CREDIT_CARD": r"(?<![\d\-.])\d{4}(?:[ \-]?\d){8,15}(?![\d\-])",
    "SSN": r"(?<![\d\-.])\d{3}(?P<ssn_sep>[\- .])\d{2}(?P=ssn_sep)\d{4}(?![\d\-])",
    "IP_ADDRESS": r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])|(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])",
    "PHONE": r"(?<![\w+\-.])(?:\+\d{1,3}[ \-.]?)?(?:\(\d{1,4}\)[ \-.]?)?\d{1,12}(?:[ \-.]?\(0\)[ \-.]?\d{1,5})?"
             r"(?:[ \-.]\d{1,8}){0,5}(?:[ ]?(?:x|ext\.?)[ ]?\d{1,6})?(?!\w|-\d)",
}

_SECRET_PREFIXES = ("sk-", "sk_", "rk_", "AKIA", "ASIA", "ABIA", "ACCA", "A3T", "ABSK", "bedrock-api-key-", "ghp_", "gho_",
                    "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "xapp-", "hooks.slack.com", "AIza", "hf_", "api_org_")
_NOT_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)
_DIGIT_RUN = re.compile(r"\d[\d ()\-.]{5,}\d")
_HEX_COLON = re.compile(r"[0-9A-Fa-f]{0,4}::?[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*")
_PLACEHOLDER = re.compile(r"(x{6,}|X{6,}|\*{4,}|abc123|123456|your[_-]?|example|dummy|placeholder|fake|sample|"
                          r"(.)\2{7,})", re.IGNORECASE)
_SSN_INVALID_AREAS = {0, 666}


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        n = ord(char) - 48
        if index % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def _iban_ok(text: str) -> bool:
    compact = re.sub(r"[ \-]", "", text).upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return int(digits) % 97 == 1


def _ssn_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    area, group, serial = int(digits[:3]), int(digits[3:5]), int(digits[5:])
    if area in _SSN_INVALID_AREAS or area >= 900 or group == 0 or serial == 0:
        return False
    return len(set(digits)) > 1 and digits not in ("123456789", "078051120", "219099999")


def _ip_ok(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return False  # 127.0.0.1 and :: say nothing about anyone
    return address.version == 4 or sum(1 for group in text.split(":") if group) >= 3


def _jwt_ok(text: str) -> bool:
    try:
        header = text.split(".", 1)[0]
        return base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)).lstrip().startswith(b"{")
    except ValueError:
        return False


def _entropy(text: str) -> float:
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _secret_ok(text: str) -> bool:
    if text.startswith(("https://hooks.slack", "hooks.slack", "http://hooks.slack", "xox", "xapp-", "sk-ant-")):
        return "xxxx" not in text.lower()  # these formats are strict enough without an entropy test
    body = text.split("_", 2)[-1] if text.startswith(("hf_", "api_org_", "sk_", "rk_")) else text
    if _PLACEHOLDER.search(body):
        return False
    return _entropy(body) >= 3.0


_EXTENSION = re.compile(r"[ ]?(?:x|ext\.?)[ ]?\d{1,6}$")
_DATE = re.compile(r"(?:19|20)\d\d[-.]\d\d[-.]\d\d|\d\d[-.]\d\d[-.](?:19|20)\d\d")
_STREET = re.compile(r"[ \t]+(?:[A-Z][\w.'-]*[ \t]+){0,3}(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|Boulevard|Blvd|"
                     r"Way|Court|Ct|Place|Pl|Square|Sq|Highway|Hwy|Parkway|Pkwy|Terrace|Circle|Trail|Crescent|Close|"
                     r"Row|Alley|Plaza|Suite)\b|[ \t]+(?:rue|str\.?|strasse|straße|calle|via|avenida|rua|vej|veien|"
                     r"gade|gatan|weg|laan)\b|[ \t]+(?!(?:office|fax|mobile|desk|home|work|cell|tel|phone|ext)\b)"
                     r"(?-i:[A-Z][a-zà-ÿ]+)", re.IGNORECASE)
_NOT_PHONE_BEFORE = re.compile(r"(?:apt\.?|suite|unit|zip(?: code)?|postal(?: code)?|postcode|licen[cs]e(?: number)?|"
                               r"passport(?: number)?|account(?: number)?|order(?: number)?|invoice(?: number)?|id)"
                               r"\W{0,3}(?:is\W{0,3})?$", re.IGNORECASE)
_POSTAL = re.compile(r"\d{4,5}-\d{3}")
_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")  # shaped like an SSN (an invalid one, or it would have been found)


class PhoneFinder:
    """Decide whether a phone-shaped candidate is a possible number in one of ``regions``."""

    def __init__(self, regions: Iterable[str]) -> None:
        self.regions = tuple(regions)

    def __call__(self, text: str, context_after: str = "", context_before: str = "") -> bool:
        if _POSTAL.fullmatch(text) or _SSN_SHAPE.fullmatch(text) or _NOT_PHONE_BEFORE.search(context_before):
            return False
        text = _EXTENSION.sub("", text)
        digits = sum(c.isdigit() for c in text)
        if digits < 7 or digits > 15:
            return False
        if not any(c in text for c in " -.()+") and digits != 10:  # a bare run of digits is rarely a phone number
            return False
        if _DATE.match(text):
            return False
        if not any(c in text for c in "-.()+") and _STREET.match(context_after):
            return False  # "224 4966 Bond Street": a house number, not a phone number
        text = text.replace("(0)", "")
        regions = (None,) if text.startswith("+") else self.regions
        for region in regions:
            try:
                number = phonenumbers.parse(text, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_possible_number(number):
                return True
        return False


def _private_key_ok(text: str) -> bool:
    body = re.sub(r"-----[A-Z0-9 _-]+-----|\s", "", text)
    return len(body) >= 64 and not _PLACEHOLDER.search(body)


def _card_prefix(value: str) -> int:
    """The length of the longest card number (13 to 19 digits, Luhn) at the start of ``value`` that ends
    where a group of digits ends; 0 when there is none."""
    best = 0
    for boundary in re.finditer(r"\d(?=[ \-]|$)", value):
        end = boundary.end()
        digits = re.sub(r"\D", "", value[:end])
        if 13 <= len(digits) <= 19 and _luhn(digits) and len(set(digits)) > 1:
            best = end
    return best


_VALIDATORS = {
    "PRIVATE_KEY": _private_key_ok,
    "IBAN": _iban_ok, "SSN": _ssn_ok, "IP_ADDRESS": _ip_ok, "JWT": _jwt_ok, "API_KEY": _secret_ok,
    "CREDIT_CARD": lambda text: 12 <= len(d := re.sub(r"\D", "", text)) <= 19 and _luhn(d) and len(set(d)) > 1,
}


class Scanner:
    """Find PII in text with the chosen built-in detectors plus custom ``(name, pattern)`` ones."""

    def __init__(self, enabled: Iterable[str] = BUILTIN,
                 custom: Iterable[tuple[str, str | re.Pattern[str], str | None]] = (),
                 phone_regions: Iterable[str] = ("US", "GB", "DE", "FR", "AU", "BR", "IN", "IL", "CA", "NL", "ES", "IT", "ZA")) -> None:
        wanted = {canonical_pattern(name) for name in enabled}
        chosen = [name for name in BUILTIN if name in wanted]
        custom = list(custom)
        # labels and counts are upper-case like the built-in ones: the seed's detector "api_key" is [REDACTED_API_KEY]
        self._custom = [(name.upper(), compile_detector(name, pattern)) for name, pattern, _ in custom]
        self.names = [*chosen, *(name for name, _ in self._custom)]
        self.replacements = {name.upper(): replacement for name, _, replacement in custom if replacement}
        parts = [f"(?P<{name}>{_PARTS[name]})" for name in chosen]
        self._regex = re.compile("|".join(parts)) if parts else None
        self._validators = dict(_VALIDATORS)
        self._phone = PhoneFinder(phone_regions)
        # Where to look: Python's regular expressions are slow when tried at every position of a long text, so
        # cheap searches (plain substrings, one digit-run pattern) find the few regions worth the full pattern.
        self._literals: list[tuple[str, int, int]] = []
        if "EMAIL" in chosen:
            self._literals.append(("@", 70, 260))
        if "PRIVATE_KEY" in chosen:
            self._literals.append(("-----BEGIN", 0, 1 << 30))
        if "JWT" in chosen:
            self._literals.append(("eyJ", 1, 16_384))
        if "API_KEY" in chosen:
            self._literals += [(p, 12, 320) for p in _SECRET_PREFIXES if not ("_" in p or "-" in p)]
            self._underscored = [(p, 12, 320) for p in _SECRET_PREFIXES if "_" in p]
            self._dashed = [(p, 12, 320) for p in _SECRET_PREFIXES if "-" in p and "_" not in p]
        else:
            self._underscored = self._dashed = []
        self._short_literals = [item for item in self._literals if item[0] == "@"]
        self._digits = any(name in chosen for name in ("IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE"))
        self._ipv6 = "IP_ADDRESS" in chosen

    def _regions(self, text: str) -> list[tuple[int, int]]:
        regions = []
        find = text.find
        # every key, token and JWT pattern needs 20 characters: a shorter text is only searched for the rest
        if len(text) >= 20:
            literals = list(self._literals)
            if "_" in text:  # most key prefixes carry '_' or '-': test those only when the text has one
                literals += self._underscored
            if "-" in text:
                literals += self._dashed
        else:
            literals = self._short_literals
        for literal, before, after in literals:
            at = find(literal)
            while at != -1:
                regions.append((max(0, at - before), at + after))
                at = find(literal, at + 1)
        if self._digits and len(text.encode("utf-8", "ignore").translate(None, _NOT_DIGITS)) >= 4:
            # (an IPv4 address has at least 4 digits, everything else more: counting digits in C is cheap)
            regions += [(max(0, m.start() - 40), m.end() + 40) for m in _DIGIT_RUN.finditer(text)]
        if self._ipv6 and ":" in text:
            regions += [(max(0, m.start() - 40), m.end() + 48) for m in _HEX_COLON.finditer(text)]
        if not regions:
            return regions
        regions.sort()
        merged = [regions[0]]
        for lo, hi in regions[1:]:
            if lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, name)`` of every finding, in order, without overlaps."""
        found: list[tuple[int, int, str]] = []
        if self._regex is not None and len(text) >= 6:  # nothing we look for is shorter than "a@b.co"
            for lo, hi in self._regions(text):
                self._scan(text, lo, min(hi, len(text)), found)
        if self._custom:
            # each custom pattern runs on its own, so a compiled pattern keeps its flags; the first detector
            # listed wins among custom ones, and custom findings replace the built-in ones they overlap
            custom: list[tuple[int, int, str]] = []
            for name, regex in self._custom:
                for match in regex.finditer(text):
                    start, end = match.span()
                    if start < end and not any(a < end and start < b for a, b, _ in custom):
                        custom.append((start, end, name))
            if custom:
                found = [f for f in found if not any(a < f[1] and f[0] < b for a, b, _ in custom)] + custom
                found.sort()
        return found

    def _scan(self, text: str, lo: int, hi: int, found: list[tuple[int, int, str]]) -> None:
        for match in self._regex.finditer(text, lo, hi):  # type: ignore[union-attr]
            group = match.lastgroup
            if group is None or group == "ssn_sep":
                group = next((g for g, v in match.groupdict().items() if v is not None and g != "ssn_sep"), None)
                if group is None:
                    continue
            name = group
            value = match.group(group)
            if not value:
                continue
            check = self._validators.get(name)
            if name == "PHONE":
                start, end = match.start(group), match.end(group)
                if self._phone(value, text[end:end + 60], text[max(0, start - 30):start]):
                    found.append((match.start(group), match.end(group), name))
                continue
            if check is not None and not check(value):
                if name in ("PHONE", "IP_ADDRESS"):
                    continue
                if name == "CREDIT_CARD":
                    # more digits may follow a card ("4111 1111 1111 1111 203"): the card is the longest
                    # prefix that ends at a group boundary and passes the check
                    card = _card_prefix(value)
                    if card:
                        found.append((match.start(group), match.start(group) + card, name))
                        continue
                # a failed stronger pattern may hide a weaker one (a non-Luhn number that is a phone number)
                inner = self._weaker(value, name)
                if inner is not None:
                    found.append((match.start() + inner[0], match.start() + inner[1], inner[2]))
                continue
            found.append((match.start(group), match.end(group), name))

    def _weaker(self, value: str, failed: str) -> tuple[int, int, str] | None:
        order = list(BUILTIN)
        for name in order[order.index(failed) + 1:]:
            if name not in self._validators and name not in _PARTS:
                continue
            pattern = re.compile(_PARTS[name])
            match = pattern.fullmatch(value)
            check = self._phone if name == "PHONE" else self._validators.get(name, lambda v: True)
            if match and name in self.names and check(value):
                return 0, len(value), name
        return None

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """``text`` with every finding replaced, and the count of findings by name."""
        findings = self.find(text)
        if not findings:
            return text, {}
        counts: dict[str, int] = {}
        out = []
        last = 0
        for start, end, name in findings:
            out.append(text[last:start])
            out.append(self.replacements.get(name) or f"[REDACTED_{name}]")
            counts[name] = counts.get(name, 0) + 1
            last = end
        out.append(text[last:])
        return "".join(out), counts
