"""Tests of the per-recipient message rewrite (smtp_gateway.rewrite)."""

from __future__ import annotations

import base64
import email
import email.policy
import html
import quopri
import re
import tomllib
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import tokens
from ledger.tokens import TokenKeys, TokenPayload
from smtp_gateway.errors import BadControlHeader, GatewayError, MalformedMessage
from smtp_gateway.rewrite import PLACEHOLDER_RE, MessageTemplate, RewriteOptions, prepare

DATA = Path(__file__).resolve().parent.parent / "data"
CASES: list[dict[str, Any]] = tomllib.loads((DATA / "expected.toml").read_text())["message"]
KEYS = TokenKeys({1: b"s" * 32}, current=1)
PUBLIC = "https://links.example.com"
OPTIONS = RewriteOptions(
    public_url=PUBLIC,
    inbound_domain="in.example.com",
    client_name="Müller & Söhne GmbH",
    postal_address="Hauptstraße 1\n50667 Köln",
    tracking=True,
)
TOKEN = tokens.sign(TokenPayload(3, 77, bytes(range(12)), 2000), KEYS)
OTHER_TOKEN = tokens.sign(TokenPayload(3, 77, bytes(range(1, 13)), 2000), KEYS)
UNSUBSCRIBE_URL = f"{PUBLIC}/u/{TOKEN}"
REMOVED_HEADERS = {
    "x-campaign-id",
    "x-mailgun-tag",
    "x-smtpapi",
    "x-pm-message-stream",
    "x-ses-configuration-set",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "dkim-signature",
}
# Outlook-only blocks (<!--[if mso]>…<![endif]-->); "[if !mso]" blocks are ordinary HTML.
MSO_RE = re.compile(r"<!--\[if (?!!)[^\]]*mso[^\]]*\]>.*?<!\[endif\]-->", re.DOTALL)
CLICK_RE = re.compile(re.escape(f"{PUBLIC}/c/{TOKEN}/") + r"([A-Za-z0-9_.-]+)")
HREF_RE = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)


def sign_link(url: str) -> str:
    """The production link signer with the test keys."""
    return tokens.sign_link(url, KEYS)


def load(name: str) -> bytes:
    """A sample message with CRLF line endings, as it arrives over SMTP."""
    return re.sub(rb"\r?\n", b"\r\n", (DATA / name).read_bytes())


def parse(raw: bytes) -> EmailMessage:
    """Parse with the modern policy, the way a receiving client would."""
    return email.message_from_bytes(raw, policy=email.policy.default)


def rewrite(raw: bytes, options: RewriteOptions = OPTIONS, token: str = TOKEN) -> bytes:
    """Prepare and render one copy."""
    return prepare(raw, options, sign_link).render(token)


def leaf_parts(msg: Message, section: str = "") -> dict[str, Message]:
    """Map IMAP section numbers to the leaf parts of a parsed message."""
    if not msg.is_multipart():
        return {section or "1": msg}
    out: dict[str, Message] = {}
    for index, part in enumerate(cast(list[Message], msg.get_payload()), start=1):
        out.update(leaf_parts(part, f"{section}.{index}" if section else str(index)))
    return out


def raw_leaves(raw: bytes, section: str = "") -> dict[str, bytes]:
    """Map IMAP section numbers to the raw bytes (headers + body) of each nested leaf part."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    if not msg.is_multipart():
        return {section or "1": raw}
    boundary = cast(str, msg.get_boundary()).encode()
    body = raw[raw.index(b"\r\n\r\n") + 2 :]
    chunks = body.split(b"\r\n--" + boundary)[1:]
    parts = [c.split(b"\r\n", 1)[1] for c in chunks if not c.startswith(b"--")]
    out: dict[str, bytes] = {}
    for index, part in enumerate(parts, start=1):
        out.update(raw_leaves(part, f"{section}.{index}" if section else str(index)))
    return out


def header_fields(raw: bytes) -> list[bytes]:
    """The raw header fields of a message (folded lines kept)."""
    block = raw[: raw.index(b"\r\n\r\n") + 2]
    return re.findall(rb"[^ \t\r\n][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", block)


def text_of(part: Message) -> str:
    """The decoded text of a part (LF line ends), with HTML character references resolved."""
    content = cast(EmailMessage, part).get_content()
    assert isinstance(content, str)
    content = content.replace("\r\n", "\n")
    return html.unescape(content) if part.get_content_type() == "text/html" else content


@pytest.fixture(params=CASES, ids=[c["file"] for c in CASES])
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    """One row of tests/data/expected.toml with its input and rendered output."""
    row = dict(request.param)
    row["input"] = load(row["file"])
    template = prepare(row["input"], OPTIONS, sign_link)
    row["template"] = template
    row["output"] = template.render(TOKEN)
    return row


def test_sample_input_is_clean(case: dict[str, Any]) -> None:
    """The sample messages themselves parse without defects (so output checks mean something)."""
    for part in parse(case["input"]).walk():
        assert not part.defects, part.defects


def test_output_parses_without_defects(case: dict[str, Any]) -> None:
    """The rewritten copy parses with policy.default and no part reports a defect."""
    for part in parse(case["output"]).walk():
        assert not part.defects, part.defects


def test_exactly_one_list_unsubscribe(case: dict[str, Any]) -> None:
    """One List-Unsubscribe (https + mailto, RFC 8058) and one List-Unsubscribe-Post."""
    msg = parse(case["output"])
    values = msg.get_all("List-Unsubscribe")
    assert values is not None and len(values) == 1
    assert str(values[0]) == (f"<{UNSUBSCRIBE_URL}>, <mailto:unsubscribe+{TOKEN}@in.example.com>")
    assert msg.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]


def test_control_and_replaced_headers_removed(case: dict[str, Any]) -> None:
    """Campaign headers and the mailer's List-Unsubscribe/DKIM-Signature are gone."""
    names = {k.lower() for k in parse(case["output"])}
    assert not names & (REMOVED_HEADERS - {"list-unsubscribe", "list-unsubscribe-post"})


def test_campaign(case: dict[str, Any]) -> None:
    """The campaign is read from the first control header that names one."""
    template: MessageTemplate = case["template"]
    assert template.campaign == (case["campaign"] or None)


def test_other_top_headers_kept_verbatim(case: dict[str, Any]) -> None:
    """Every other top-level header field is copied byte for byte, in order."""

    def name(field: bytes) -> str:
        return field.split(b":")[0].lower().decode()

    expected = [f for f in header_fields(case["input"]) if name(f) not in REMOVED_HEADERS]
    kept = [f for f in header_fields(case["output"]) if not name(f).startswith("list-unsubscribe")]
    source = parse(case["input"])
    before = f"{source.get_content_charset()} {source.get('content-transfer-encoding', '7bit')}"
    if not source.is_multipart() and case["after"]["1"] != before:
        # The single part had to change charset or encoding: its MIME headers are rewritten.
        mime = {"content-type", "content-transfer-encoding", "mime-version"}
        expected = [f for f in expected if name(f) not in mime]
        kept = [f for f in kept if name(f) not in mime]
    assert kept == expected


def test_unchanged_parts_byte_identical(case: dict[str, Any]) -> None:
    """Attachments and other untouched parts keep their exact bytes; changed parts differ."""
    before, after = raw_leaves(case["input"]), raw_leaves(case["output"])
    assert before.keys() == after.keys()
    for section in case["unchanged"]:
        assert after[section] == before[section]
    for section in case["footer"] + case["placeholder"]:
        assert after[section] != before[section]


def test_footer_parts(case: dict[str, Any]) -> None:
    """Parts without a placeholder get the unsubscribe URL, client name and postal address."""
    parts = leaf_parts(parse(case["output"]))
    for section in case["footer"]:
        text = text_of(parts[section])
        assert UNSUBSCRIBE_URL in text
        assert "Müller & Söhne GmbH, Hauptstraße 1, 50667 Köln" in text


def test_placeholder_parts(case: dict[str, Any]) -> None:
    """Placeholders are replaced by the unsubscribe URL and no footer is added."""
    parts = leaf_parts(parse(case["output"]))
    for section in case["placeholder"]:
        text = text_of(parts[section])
        assert UNSUBSCRIBE_URL in text
        assert PLACEHOLDER_RE.search(text) is None
        assert "Müller" not in text


def test_original_text_kept(case: dict[str, Any]) -> None:
    """Each changed part still contains every line of its original text (minus placeholders)."""
    before, after = leaf_parts(parse(case["input"])), leaf_parts(parse(case["output"]))
    for section in case["footer"] + case["placeholder"]:
        original = text_of(before[section])
        new = text_of(after[section])
        for line in original.splitlines():
            if not PLACEHOLDER_RE.search(line) and "href" not in line:
                assert line in new


def test_parts_encoding_after(case: dict[str, Any]) -> None:
    """Changed parts keep charset and transfer encoding unless the new content needs others."""
    parts = leaf_parts(parse(case["output"]))
    for section, expected in case["after"].items():
        part = parts[section]
        charset = part.get_content_charset()
        cte = part.get("content-transfer-encoding", "7bit").lower()
        assert f"{charset} {cte}" == expected


def test_click_tracking(case: dict[str, Any]) -> None:
    """http(s) links become signed click URLs that verify back to the original URL."""
    before, after = leaf_parts(parse(case["input"])), leaf_parts(parse(case["output"]))
    tracked: list[str] = []
    for section, part in after.items():
        if part.get_content_type() != "text/html":
            continue
        new_html = cast(str, cast(EmailMessage, part).get_content())
        originals = {
            html.unescape(next(g for g in m.groups() if g is not None)).strip()
            for m in HREF_RE.finditer(cast(str, cast(EmailMessage, before[section]).get_content()))
        }
        for segment in CLICK_RE.findall(new_html):
            _, url = tokens.verify_link(segment, KEYS)
            assert url in originals
            tracked.append(url)
        assert f'<img src="{PUBLIC}/o/{TOKEN}" width="1" height="1"' in new_html
    assert len(tracked) == case["tracked_links"]


def test_mso_conditional_comments_preserved(case: dict[str, Any]) -> None:
    """Outlook conditional comments survive byte for byte (after transfer decoding)."""
    before, after = leaf_parts(parse(case["input"])), leaf_parts(parse(case["output"]))
    blocks = 0
    for section, part in before.items():
        if part.get_content_type() == "text/html":
            new_html = cast(str, cast(EmailMessage, after[section]).get_content())
            for block in MSO_RE.findall(cast(str, cast(EmailMessage, part).get_content())):
                blocks += 1
                assert block in new_html
    assert (blocks > 0) == case["mso"]


def test_wire_format(case: dict[str, Any]) -> None:
    """Every line ends in CRLF and no line exceeds 998 octets."""
    output: bytes = case["output"]
    assert output.endswith(b"\r\n")
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", output) is None
    assert max(len(line) for line in output.split(b"\r\n")) <= 998


def test_copies_differ_only_by_token(case: dict[str, Any]) -> None:
    """Two renders of one template carry their own token and nothing of the other."""
    template: MessageTemplate = case["template"]
    other = template.render(OTHER_TOKEN)
    assert TOKEN not in other.decode("latin-1")
    assert OTHER_TOKEN in other.decode("latin-1")
    assert template.render(TOKEN) == case["output"]


# --- control headers ---------------------------------------------------------------------------

BASE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n"


def message(*headers: bytes, body: bytes = b"Hello\r\n") -> bytes:
    """A minimal text message with extra header lines."""
    return BASE + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


@pytest.mark.parametrize(
    ("headers", "campaign"),
    [
        ([b"X-Campaign-ID: c-1", b"X-Mailgun-Tag: mg", b"X-PM-Message-Stream: pm"], "c-1"),
        ([b"X-PM-Message-Stream: pm", b"X-Mailgun-Tag: mg"], "mg"),
        ([b'X-SMTPAPI: {"asm_group_id": 17, "category": "cat"}', b"X-PM-Message-Stream: pm"], "17"),
        ([b'X-SMTPAPI: {"category": ["first", "second"]}'], "first"),
        ([b'X-SMTPAPI: {"unique_args": {}}', b"X-PM-Message-Stream: pm"], "pm"),
        ([b"X-SES-CONFIGURATION-SET: ses", b"X-PM-Message-Stream: pm"], "pm"),
        ([b"X-SES-CONFIGURATION-SET: ses"], "ses"),
        ([b"X-Campaign-ID:   ", b"X-Mailgun-Tag: mg"], "mg"),
        ([b"X-Campaign-ID: spring\r\n 2025"], "spring 2025"),
        ([], None),
    ],
)
def test_campaign_precedence(headers: list[bytes], campaign: str | None) -> None:
    """X-Campaign-ID, then X-Mailgun-Tag, X-SMTPAPI, X-PM-Message-Stream, X-SES-CONFIGURATION-SET."""
    template = prepare(message(*headers), OPTIONS, sign_link)
    assert template.campaign == campaign
    out = template.render(TOKEN)
    assert not any(h.split(b":")[0] in out for h in headers)


@pytest.mark.parametrize(
    "header",
    [
        b"X-Campaign-ID: abc\x00def",
        b"X-Campaign-ID: abc\x1b[31m",
        b"X-Mailgun-Tag: tab\there",
        b"X-Campaign-ID: " + b"x" * 201,
        b"X-SMTPAPI: {not json",
        b"X-SMTPAPI: [1, 2]",
        b'X-SMTPAPI: {"asm_group_id": true}',
        b'X-SMTPAPI: {"category": 5}',
        b'X-SMTPAPI: {"category": "a\\r\\nb"}',
        b"X-SMTPAPI: " + b"[" * 5000,
        b"X-PM-Message-Stream: \xff\xfe",
    ],
)
def test_bad_control_header(header: bytes) -> None:
    """Control characters, over-long values and invalid JSON are refused (header injection)."""
    with pytest.raises(BadControlHeader):
        prepare(message(header), OPTIONS, sign_link)


def test_campaign_of_200_chars_accepted() -> None:
    """The limit is inclusive: exactly 200 characters is a valid campaign id."""
    assert prepare(message(b"X-Campaign-ID: " + b"x" * 200), OPTIONS, sign_link).campaign == "x" * 200


def test_errors_share_base_class() -> None:
    """Both rewrite errors derive from GatewayError."""
    assert issubclass(MalformedMessage, GatewayError)
    assert issubclass(BadControlHeader, GatewayError)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\nbody only",
        b"this is not an e-mail message at all\r\njust text\r\n",
        b"From: a@example.com\r\nSubject: no separator\r\ngarbage line\r\n",
        b"To: b@example.org\r\nSubject: no sender\r\n\r\nHello\r\n",
        b"From: a@example.com\r\nContent-Type: multipart/mixed\r\n\r\nno boundary\r\n",
        b'From: a@example.com\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\nnone\r\n',
        b"From: a@example.com\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64"
        b"\r\n\r\nQUJDRA\r\n",
    ],
)
def test_malformed_message(raw: bytes) -> None:
    """Data that is not an RFC 5322 message with a From header is refused."""
    with pytest.raises(MalformedMessage):
        prepare(raw, OPTIONS, sign_link)


def test_nesting_bomb_refused() -> None:
    """Absurdly deep multipart nesting is refused instead of recursing without bound."""
    raw = b"From: a@example.com\r\n"
    for depth in range(50):
        raw += f'Content-Type: multipart/mixed; boundary="b{depth}"\r\n\r\n--b{depth}\r\n'.encode()
    with pytest.raises(MalformedMessage):
        prepare(raw + b"Content-Type: text/plain\r\n\r\nx\r\n", OPTIONS, sign_link)


def test_bare_cr_is_a_line_break() -> None:
    """A bare CR ends a header line as it does for receivers: no header hides behind it."""
    template = prepare(message(b"Subject2: x\rX-Campaign-ID: hidden"), OPTIONS, sign_link)
    assert template.campaign == "hidden"
    assert b"hidden" not in template.render(TOKEN)


def test_header_only_message() -> None:
    """A message with headers and no body gets a blank line and a footer body."""
    out = rewrite(BASE)
    msg = parse(out)
    assert UNSUBSCRIBE_URL in text_of(msg)


# --- body rewriting details -------------------------------------------------------------------


@pytest.mark.parametrize(
    "placeholder",
    [
        "%unsubscribe_url%",
        "%tag_unsubscribe_url%",
        "<%asm_group_unsubscribe_raw_url%>",
        "<%asm_global_unsubscribe_raw_url%>",
        "<%asm_preferences_raw_url%>",
        "%3C%asm_group_unsubscribe_raw_url%%3E",
        "{{{ pm:unsubscribe }}}",
        "{{{pm:unsubscribe}}}",
        "{{unsubscribe_url}}",
        "{{ unsubscribe_url }}",
        "{{amazonSESUnsubscribeUrl}}",
        "*|UNSUB|*",
        "[[UNSUB_LINK_EN]]",
        "[unsubscribe]",
    ],
)
def test_placeholder_styles(placeholder: str) -> None:
    """Every supported placeholder style is replaced and suppresses the footer."""
    out = rewrite(message(body=f"Bye: {placeholder}\r\n".encode()))
    assert text_of(parse(out)) == f"Bye: {UNSUBSCRIBE_URL}\n"


def test_tracking_off_leaves_links_and_adds_no_pixel() -> None:
    """With tracking off, hrefs stay as they were and no open pixel is added."""
    options = RewriteOptions(PUBLIC, "in.example.com", "Acme", "1 Main St", tracking=False)
    out = rewrite(load("alternative.eml"), options)
    html_part = leaf_parts(parse(out))["2"]
    content = cast(str, cast(EmailMessage, html_part).get_content())
    assert "/c/" not in content and "/o/" not in content
    assert 'href="https://shop.example.com/sale?utm_source=newsletter&amp;utm_campaign=spring"' in content


def test_unsubscribe_and_own_links_not_tracked() -> None:
    """The substituted unsubscribe link and links to the gateway itself are not wrapped."""
    body = (
        b'<html><body><a href="%unsubscribe_url%">u</a> '
        b'<a href="https://links.example.com/u/abc">own</a> '
        b'<a href="javascript:alert(1)">js</a></body></html>\r\n'
    )
    raw = message(b"Content-Type: text/html", body=body)
    content = text_of(parse(rewrite(raw)))
    assert f'<a href="{UNSUBSCRIBE_URL}">u</a>' in content
    assert '<a href="https://links.example.com/u/abc">own</a>' in content
    assert '<a href="javascript:alert(1)">js</a>' in content
    assert "/c/" not in content


def test_tricky_markup() -> None:
    """Quoted '>' in attributes, upper-case tags, data-href and duplicate hrefs are handled."""
    body = (
        b'<HTML><BODY><A TITLE="a > b" HREF="https://x.example/1">1</A>'
        b'<a data-href="https://x.example/no" href="https://x.example/2" href="https://x.example/3">2</a>'
        b"<a name=top>anchor</a></BODY></HTML>\r\n"
    )
    out = rewrite(message(b"Content-Type: text/html", body=body))
    content = cast(str, parse(out).get_content())
    urls = [tokens.verify_link(s, KEYS)[1] for s in CLICK_RE.findall(content)]
    assert urls == ["https://x.example/1", "https://x.example/2"]
    assert 'data-href="https://x.example/no"' in content
    assert 'TITLE="a > b"' in content
    assert content.index("<img") < content.index("</BODY>")


def test_pixel_appended_without_body_tag() -> None:
    """An HTML fragment without </body> gets footer and pixel appended at the end."""
    out = rewrite(message(b"Content-Type: text/html", body=b"<p>Hi</p>"))
    content = text_of(parse(out))
    assert content.startswith("<p>Hi</p><p")
    assert content.rstrip().endswith('style="display:none">')


def test_html_footer_uses_character_references_for_missing_characters() -> None:
    """A footer character the HTML part's charset lacks becomes a character reference."""
    options = RewriteOptions(PUBLIC, "in.example.com", "Ñandú & Co", "Calle 1", tracking=False)
    raw = message(
        b"Content-Type: text/html; charset=iso-8859-2",
        b"Content-Transfer-Encoding: 8bit",
        body="<html><body><p>Dobrý den</p></body></html>\r\n".encode("iso-8859-2"),
    )
    out = rewrite(raw, options)
    msg = parse(out)
    assert msg.get_content_charset() == "iso-8859-2"
    raw_body = out.split(b"\r\n\r\n", 1)[1]
    assert b"&#209;and\xfa &amp; Co" in raw_body  # Ñ is not in ISO-8859-2, ú is
    assert "Dobrý den" in text_of(msg)


def test_plain_footer_switches_part_to_utf8() -> None:
    """A plain-text part whose charset lacks a footer character is re-encoded as UTF-8 QP."""
    options = RewriteOptions(PUBLIC, "in.example.com", "Ñandú", "Calle 1", tracking=False)
    raw = message(
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=iso-8859-2; format=flowed",
        b"Content-Transfer-Encoding: 8bit",
        body="Dobrý den, žluťoučký kůň\r\n".encode("iso-8859-2"),
    )
    msg = parse(rewrite(raw, options))
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_param("format") == "flowed"
    assert text_of(msg).startswith("Dobrý den, žluťoučký kůň\n")
    assert "Ñandú, Calle 1" in text_of(msg)


def test_utf16_part_switched_to_utf8() -> None:
    """A charset that cannot take ASCII tokens spliced in (UTF-16) is re-encoded as UTF-8."""
    raw = message(
        b"Content-Type: text/plain; charset=utf-16",
        b"Content-Transfer-Encoding: base64",
        body=base64.encodebytes("Grüße\r\n".encode("utf-16")).replace(b"\n", b"\r\n"),
    )
    msg = parse(rewrite(raw))
    assert msg.get_content_charset() == "utf-8"
    assert text_of(msg).startswith("Grüße\n")


def test_long_7bit_line_falls_back_to_quoted_printable() -> None:
    """A 7bit part whose lines would exceed 998 octets with the token is re-encoded as QP."""
    body = b"<html><body><p>" + b"x" * 900 + b' <a href="https://x.example/">x</a></p></body></html>\r\n'
    msg = parse(rewrite(message(b"Content-Type: text/html", b"Content-Transfer-Encoding: 7bit", body=body)))
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert "x" * 900 in text_of(msg)


def test_lf_only_input_becomes_crlf() -> None:
    """A message submitted with bare LF line endings is rendered with CRLF."""
    raw = load("alternative.eml").replace(b"\r\n", b"\n")
    out = rewrite(raw)
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert out == rewrite(load("alternative.eml"))


def test_render_rejects_unsafe_token() -> None:
    """render() refuses a token that could inject header lines or markup."""
    template = prepare(message(), OPTIONS, sign_link)
    for bad in ["", "abc\r\nBcc: x", 'a"b', "a" * 65]:
        with pytest.raises(ValueError):
            template.render(bad)


def test_options_validation() -> None:
    """A public URL with trailing slash or a domain with spaces is refused."""
    with pytest.raises(ValueError):
        RewriteOptions("https://links.example.com/", "in.example.com", "A", "B", tracking=True)
    with pytest.raises(ValueError):
        RewriteOptions("javascript:x", "in.example.com", "A", "B", tracking=True)
    with pytest.raises(ValueError):
        RewriteOptions(PUBLIC, "in example.com", "A", "B", tracking=True)


def test_text_attachment_not_changed() -> None:
    """A text/plain attachment (Content-Disposition: attachment) keeps its bytes."""
    attachment = (
        b"Content-Type: text/plain; name=notes.txt\r\n"
        b"Content-Disposition: attachment; filename=notes.txt\r\n\r\nmy notes"
    )
    raw = (
        BASE + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b\r\n" + attachment + b"\r\n--b--\r\n"
    )
    out = rewrite(raw)
    assert raw_leaves(out)["2"] == attachment
    assert UNSUBSCRIBE_URL in text_of(leaf_parts(parse(out))["1"])


# --- properties ----------------------------------------------------------------------------------

header_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60).map(
    lambda s: s.encode("utf-8")
)


HTML_FRAGMENTS = [
    '<a href="https://x.example/',
    '">',
    "</a>",
    "<!--",
    "-->",
    "<!--[if mso]>",
    "<![endif]-->",
    "</body>",
    "&amp;",
    "%unsubscribe_url%",
    "é",
    "\n",
    "x",
    " ",
    "<",
    ">",
    "'",
    '"',
    "<area href=",
    "http://y.example/",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=header_text,
    campaign=header_text,
    body=st.text(max_size=400),
    html_body=st.text(max_size=200) | st.lists(st.sampled_from(HTML_FRAGMENTS), max_size=60).map("".join),
    cte=st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]),
)
def test_property_never_crashes(subject: bytes, campaign: bytes, body: str, html_body: str, cte: str) -> None:
    """Random headers and bodies either raise a gateway error or give a valid single-unsubscribe copy."""

    def encode(text: str) -> bytes:
        data = text.encode("utf-8")
        if cte == "base64":
            return base64.encodebytes(data)
        if cte == "quoted-printable":
            return quopri.encodestring(data)
        return data

    raw = (
        b"From: a@example.com\r\nSubject: " + subject + b"\r\nX-Campaign-ID: " + campaign + b"\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="=b="\r\n\r\n'
        b"--=b=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
        + cte.encode()
        + b"\r\n\r\n"
        + encode(body)
        + b"\r\n--=b=\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: "
        + cte.encode()
        + b"\r\n\r\n"
        + encode(html_body)
        + b"\r\n--=b=--\r\n"
    )
    try:
        out = rewrite(raw)
    except (MalformedMessage, BadControlHeader):
        return
    msg = parse(out)
    assert len(msg.get_all("List-Unsubscribe") or []) == 1
    assert len(msg.get_all("List-Unsubscribe-Post") or []) == 1
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            assert UNSUBSCRIBE_URL in text_of(part)
