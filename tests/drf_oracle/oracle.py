"""The differential test's oracle: what authentik's `PUT /api/v3/events/events/{event_uuid}/`
answers, computed by the real Django REST framework (the pinned versions in requirements.txt).

It holds authentik's `Event` model and `EventSerializer` (fields `pk, user, action, app,
context, client_ip, created, expires, brand`) and runs the PUT view's steps on each command's
body: `EventSerializer(instance, data=body, partial=False)`, `is_valid()`, `save()`,
`serializer.data`, rendered by DRF's `JSONRenderer`. `save()` writes to an in-memory table
that does to values what authentik's PostgreSQL columns do when they are read back on a later
update (`jsonb`: keys reordered, numbers through `numeric`; `inet`: PostgreSQL's own spelling;
`timestamptz`: microseconds, UTC), so kept values are what authentik would show.

Around the serializer it speaks the service's command envelope (docs/contract.md): JSON parse
errors as DRF's `JSONParser` words them, `event_uuid` (404), `request_id`, `expected_version`
(400, 409), idempotency (stored replies, 422) and PUT-creates (201).

Where authentik itself would not answer (a 500) or where the service deliberately differs, the
answer comes from a *named rule* (`RULES`), reported with each case; nothing is skipped.
It is meant to run on CPython 3.13, as authentik 2025.6 does; on an older Python (where 3.13
is not at hand) it emulates what differs, listed in `PY313`.
"""

import codecs
import decimal
import io
import ipaddress
import json
import re
import sys
import uuid
from datetime import timedelta

import django
from django.conf import settings

settings.configure(
    USE_TZ=True,
    TIME_ZONE="UTC",
    USE_I18N=False,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
    DATABASES={},
    DEFAULT_CHARSET="utf-8",
)
django.setup()

from django.db import models  # noqa: E402
from django.utils.timezone import now  # noqa: E402
from rest_framework import serializers  # noqa: E402
from rest_framework.exceptions import ParseError  # noqa: E402
from rest_framework.parsers import JSONParser  # noqa: E402
from rest_framework.renderers import JSONRenderer  # noqa: E402

# What differs between CPython 3.11 and the 3.13 authentik 2025.6 runs on, and how it is
# emulated here when this runs on 3.11 (see docs/contract.md, "The differential test").
ON_PY313 = sys.version_info >= (3, 13)
PY313 = {
    "json-trailing-comma": "3.13's json says 'Illegal trailing comma before end of "
    "array/object' at the comma where 3.11 says 'Expecting value' / 'Expecting property "
    "name enclosed in double quotes' at the bracket: rewritten in parse_command",
    "recursion": "3.13 counts json/repr nesting against its C recursion limit (10,000 on "
    "Linux), 3.11 against sys.getrecursionlimit() (1,000): the limit is raised here and the "
    "service's own depth limit (rule 'nesting-limit') is applied first",
    "unicode": "3.11 has Unicode 14.0, 3.13 has 15.1: the generator only uses characters "
    "assigned in Unicode 14.0 whose properties did not change",
}

# Named rules: where the expected answer is not DRF's, and why.
RULES = {
    "jsonb-unstorable": "user/context/brand holding a NUL or a lone surrogate (in a string "
    "or a key): authentik answers 500 (PostgreSQL's jsonb refuses it at save()); the "
    "contract answers 400 with DRF's CharField texts for that field",
    "action-surrogate": "action is a string with a lone surrogate: DRF's message "
    "'\"\\ud800\" is not a valid choice.' cannot be encoded by JSONRenderer (500); the "
    "contract answers 400 with DRF's surrogate text for the field",
    "nesting-limit": "nesting deeper than the service's limit: authentik on 3.13 parses "
    "about 10,000 levels (beyond: RecursionError, 500); the contract answers a parse error",
    "surrogate-with-plane16": "a lone surrogate escape and a character in U+10F800..U+10FFFF "
    "in one value: the service carries the one as the other, so it refuses the value with a "
    "parse error naming the first lone surrogate",
}

EVENT_ACTIONS = (
    "login login_failed logout user_write suspicious_request password_set secret_view "
    "secret_rotate invitation_used authorize_application source_linked impersonation_started "
    "impersonation_ended flow_execution policy_execution policy_exception "
    "property_mapping_exception system_task_execution system_task_exception system_exception "
    "configuration_error model_created model_updated model_deleted email_sent "
    "update_available custom_"
).split()

NULL_CHARS = "Null characters are not allowed."
SURROGATE = "Surrogate characters are not allowed: U+{:X}."
MAX_BYTES = 1048576


def default_event_duration():
    """authentik's default for `Event.expires`."""
    return now() + timedelta(days=365)


class Event(models.Model):
    """authentik.events.models.Event (2025.6), the fields the serializer sees."""

    event_uuid = models.UUIDField(primary_key=True, editable=False, default=uuid.uuid4)
    user = models.JSONField(default=dict)
    action = models.TextField(choices=[(a, a) for a in EVENT_ACTIONS])
    app = models.TextField()
    context = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True)
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(default=default_event_duration)
    brand = models.JSONField(default=dict, blank=True)

    class Meta:
        app_label = "authentik_events"

    def save(self, *args, **kwargs):
        """What `Model.save()` does here: `auto_now_add`, then the row as PostgreSQL keeps it."""
        if self._state.adding and self.created is None:
            self.created = now()
        TABLE.write(self)
        self._state.adding = False


class EventSerializer(serializers.ModelSerializer):
    """authentik.events.api.events.EventSerializer."""

    class Meta:
        model = Event
        fields = ["pk", "user", "action", "app", "context", "client_ip", "created", "expires", "brand"]

    def create(self, validated_data):
        # ModelSerializer.create is `Event.objects.create(**validated_data)`: an instance, saved.
        instance = Event(**validated_data)
        instance.save()
        return instance


def unstorable(value):
    """Rule 'jsonb-unstorable': the messages for what jsonb cannot hold, in the contract's
    order (NUL, then the first lone surrogate in document order). (`inf` never gets here:
    DRF's own JSONField check refuses it, "Value must be valid JSON.")"""
    nul, surrogate = False, None
    stack = [value]
    while stack:
        v = stack.pop()
        texts = []
        if isinstance(v, str):
            texts = [v]
        elif isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                stack.append(item)
                stack.append(k)
        for t in texts:
            nul |= "\0" in t
            if surrogate is None:
                surrogate = next((ord(c) for c in t if 0xD800 <= ord(c) <= 0xDFFF), None)
    msgs = []
    if nul:
        msgs.append(NULL_CHARS)
    if surrogate is not None:
        msgs.append(SURROGATE.format(surrogate))
    return msgs


def jsonb_validator(value):
    msgs = unstorable(value)
    if msgs:
        raise serializers.ValidationError(msgs)


class ContractEventSerializer(EventSerializer):
    """EventSerializer plus the contract's rule 'jsonb-unstorable' as a validator."""

    def get_fields(self):
        fields = super().get_fields()
        for name in ("user", "context", "brand"):
            fields[name].validators.append(jsonb_validator)
        return fields


# --- What PostgreSQL does to values that are read back -------------------------------------


def jsonb_roundtrip(v):
    """json.dumps -> jsonb -> jsonb text -> json.loads, as Django's JSONField reads it back:
    keys ordered shorter first then bytewise, numbers through `numeric` (plain notation,
    scale = max(0, digits after the point - exponent), no sign on zero)."""
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return {k: jsonb_roundtrip(x) for k, x in items}
    if isinstance(v, list):
        return [jsonb_roundtrip(x) for x in v]
    if isinstance(v, float):
        d = decimal.Decimal(repr(v))
        scale = max(0, -d.as_tuple().exponent)
        text = f"{d:.{scale}f}"
        if text.startswith("-") and decimal.Decimal(text) == 0:
            text = text[1:]
        return json.loads(text)
    return v


def pg_inet(text):
    """PostgreSQL's `inet_out` of a host address Django stored: IPv4 as is; IPv6 as RFC 5952
    (what Python prints) except that `::a.b.c.d` (first 96 bits zero, next 16 not) and
    `::ffff:a.b.c.d` keep the dotted IPv4 tail (src/port/inet_net_ntop.c)."""
    if text is None or ":" not in text:
        return text
    packed = ipaddress.IPv6Address(text).packed
    words = [packed[i] << 8 | packed[i + 1] for i in range(0, 16, 2)]
    best, cur = (-1, 0), (-1, 0)
    for i, w in enumerate(words + [1]):
        if w == 0 and i < 8:
            cur = (cur[0], cur[1] + 1) if cur[0] != -1 else (i, 1)
        elif cur[0] != -1:
            if best[0] == -1 or cur[1] > best[1]:
                best = cur
            cur = (-1, 0)
    if best[0] == 0 and (best[1] == 6 or (best[1] == 5 and words[5] == 0xFFFF)):
        dotted = ".".join(str(b) for b in packed[12:])
        return ("::" if best[1] == 6 else "::ffff:") + dotted
    return str(ipaddress.IPv6Address(text))


class Table:
    """authentik's `authentik_events_event` table: rows as PostgreSQL gives them back."""

    def __init__(self):
        self.rows = {}
        # Whether a row's `expires` came from the model default (now + 365 days): the test
        # compares it to the service's clock, not literally.
        self.default_expires = {}

    def write(self, e):
        self.rows[e.event_uuid] = dict(
            event_uuid=e.event_uuid,
            user=jsonb_roundtrip(e.user),
            action=e.action,
            app=e.app,
            context=jsonb_roundtrip(e.context),
            client_ip=pg_inet(e.client_ip),
            created=e.created,
            expires=e.expires,
            brand=jsonb_roundtrip(e.brand),
        )

    def load(self, event_uuid):
        row = self.rows.get(event_uuid)
        if row is None:
            return None
        e = Event(**row)
        e._state.adding = False
        return e


TABLE = Table()


# --- The command envelope (docs/contract.md) ------------------------------------------------


class Answer:
    def __init__(self, status, body, version=None, rule=None, default_expires=False):
        self.status, self.body, self.version = status, body, version
        self.rule, self.default_expires = rule, default_expires

    def rendered(self):
        """The body as DRF's JSONRenderer writes it (str)."""
        return JSONRenderer().render(self.body).decode()


def py_type(v):
    return type(v).__name__


def detail(text):
    return {"detail": text}


def nesting_error(text, max_depth):
    """Rule 'nesting-limit': where, scanning the text as the service does, the nesting first
    exceeds `max_depth` (brackets outside strings), and what kind of bracket: None if never."""
    depth, in_str, esc = 0, False, False
    for i, c in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            if depth > max_depth:
                return i, "array" if c == "[" else "object"
        elif c in "]}":
            depth -= 1
    return None


def masked(text):
    """`text` with the inside of every JSON string blanked (same length): what is left are the
    tokens the scanner sees outside strings."""
    out, in_str, esc = [], False, False
    for c in text:
        if in_str:
            out.append('"' if c == '"' and not esc else " ")
            in_str = esc or c != '"'
            esc = not esc and c == "\\"
        else:
            out.append(c)
            in_str = c == '"'
    return "".join(out)


def error_position(exc, text):
    """Where the scanner raised a ValueError that carries no position (an integer over the
    digit limit, a NaN/Infinity constant): the first such token outside strings."""
    if text is None:
        return None
    plain = masked(text)
    if "Exceeds the limit" in str(exc):
        for m in re.finditer(r"-?(\d+)(?![\d.eE])", plain):
            if len(m.group(1)) > 4300 and (m.start() == 0 or not plain[m.start() - 1].isdigit()):
                return m.start()
    m = re.search(r"NaN|-?Infinity", plain)
    return m.start() if m else None


def surrogates_and_plane16(text):
    """For a text that parsed: the position of the first lone surrogate escape (its
    backslash) and whether any string holds a character in U+10F800..U+10FFFF, scanning the
    string literals as the service's parser does."""
    first, plane16, i, n = None, False, 0, len(text)
    while i < n:
        if text[i] != '"':
            i += 1
            continue
        i += 1
        while text[i] != '"':
            c = text[i]
            if c != "\\":
                plane16 |= ord(c) >= 0x10F800
                i += 1
                continue
            if text[i + 1] != "u":
                i += 2
                continue
            cp = int(text[i + 2:i + 6], 16)
            j = i + 6
            if 0xD800 <= cp < 0xDC00 and text[j:j + 2] == "\\u":
                low = int(text[j + 2:j + 6], 16)
                if 0xDC00 <= low < 0xE000:
                    plane16 |= 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00) >= 0x10F800
                    i = j + 6
                    continue
            if 0xD800 <= cp < 0xE000 and first is None:
                first = (i, cp)
            i = j
        i += 1
    return first, plane16


def py313_message(exc, text):
    """Rewrites a 3.11 JSONDecodeError message into 3.13's where they differ."""
    if ON_PY313 or not isinstance(exc, json.JSONDecodeError):
        return str(exc)
    pos, doc = exc.pos, exc.doc
    before = doc[:pos].rstrip(" \t\n\r")
    if before.endswith(",") and pos < len(doc):
        kind = {("Expecting value", "]"): "array",
                ("Expecting property name enclosed in double quotes", "}"): "object"}.get(
            (exc.msg, doc[pos]))
        if kind:
            return str(json.JSONDecodeError(
                f"Illegal trailing comma before end of {kind}", doc, len(before) - 1))
    return str(exc)


def parse_command(raw, max_depth):
    """DRF's JSONParser on the value, as 3.13 would word it; (value, None) or (None, Answer)."""
    if len(raw) > MAX_BYTES:
        return None, Answer(400, detail(
            f"Command value is {len(raw)} bytes, over the limit of {MAX_BYTES} bytes."))
    # What the parser sees: the StreamReader's decoding (an incomplete final sequence dropped).
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
    except UnicodeDecodeError:
        text = None
    try:
        value = JSONParser().parse(io.BytesIO(raw))
        error = None
    except ParseError as e:
        cause = e.__cause__ or e.__context__
        msg = py313_message(cause, text) if cause is not None else str(e.detail)
        pos = getattr(cause, "pos", None)
        error = (msg, pos if pos is not None else error_position(cause, text))
    except RecursionError:
        # authentik: a 500. Only nesting beyond the service's limit gets here (rule below);
        # anything else is a case this oracle cannot answer, and fails the run loudly.
        error = None
        if text is None or nesting_error(text, max_depth) is None:
            raise
    if text is not None:
        deep = nesting_error(text, max_depth)
        if deep is not None and (error is None or error[1] is None or error[1] > deep[0]):
            what = deep[1]
            return None, Answer(400, detail(
                "JSON parse error - maximum recursion depth exceeded while decoding a JSON "
                f"{what} from a unicode string"), rule="nesting-limit")
    if error is not None:
        return None, Answer(400, detail(f"JSON parse error - {error[0]}"))
    first, plane16 = surrogates_and_plane16(text)
    if first is not None and plane16:
        msg = (f"Unpaired surrogate \\u{first[1]:04x} is not allowed together with characters "
               "U+10F800..U+10FFFF")
        return None, Answer(400, detail(
            f"JSON parse error - {json.JSONDecodeError(msg, text, first[0])}"),
            rule="surrogate-with-plane16")
    return value, None


def charfield_messages(s):
    """request_id's CharField(max_length=200) validators, in DRF's order."""
    msgs = []
    if len(s) > 200:
        msgs.append("Ensure this field has no more than 200 characters.")
    if "\0" in s:
        msgs.append(NULL_CHARS)
    sur = next((ord(c) for c in s if 0xD800 <= ord(c) <= 0xDFFF), None)
    if sur is not None:
        msgs.append(SURROGATE.format(sur))
    return msgs


def check_request_id(v):
    if v == "":
        return ["This field may not be blank."]
    if not isinstance(v, str):
        return ["Not a valid string."]
    return charfield_messages(v)


def check_expected_version(v):
    if isinstance(v, bool) or not isinstance(v, int):
        return None, ["A valid integer is required."]
    if v < 0:
        return None, ["Ensure this value is greater than or equal to 0."]
    if v > 9223372036854775807:
        return None, ["Ensure this value is less than or equal to 9223372036854775807."]
    return v, None


def fingerprint(v):
    """The service's "same command": the same JSON content, object key order aside."""
    return json.dumps(v, sort_keys=True, ensure_ascii=True)


class Oracle:
    def __init__(self, max_depth):
        self.max_depth = max_depth
        self.replies = {}  # request id -> (fingerprint, Answer)
        self.versions = {}  # uuid -> version

    def version(self, event_uuid):
        return self.versions.get(event_uuid, 0)

    def answer(self, raw, fallback_id):
        """The reply to one command value; `fallback_id` is its `request-id` header."""
        value, failed = parse_command(raw, self.max_depth)
        if failed is not None:
            return self.remember(fallback_id, "raw:" + raw.hex(), failed)
        fp = fingerprint(value)
        if not isinstance(value, dict):
            msg = ("No data provided" if value is None
                   else f"Invalid data. Expected a dictionary, but got {py_type(value)}.")
            return self.remember(fallback_id, fp, Answer(400, {"non_field_errors": [msg]}))
        request_id, id_errors = fallback_id, None
        if value.get("request_id") is not None:
            id_errors = check_request_id(value["request_id"]) or None
            if id_errors is None:
                request_id = value["request_id"]
        try:
            event_uuid = uuid.UUID(value["event_uuid"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return self.remember(request_id, fp, Answer(404, detail("Not found.")))
        envelope = {}
        if id_errors:
            envelope["request_id"] = id_errors
        expected = None
        if value.get("expected_version") is not None:
            expected, errs = check_expected_version(value["expected_version"])
            if errs:
                envelope["expected_version"] = errs
        if envelope:
            return self.remember(request_id, fp, Answer(400, envelope))
        return self.remember(request_id, fp, None,
                             lambda: self.put(event_uuid, value.get("body", {}), expected))

    def remember(self, request_id, fp, answer, compute=None):
        seen = self.replies.get(request_id)
        if seen is not None:
            if seen[0] == fp:
                return seen[1]
            return Answer(422, detail(
                f"request_id {rust_debug(request_id)} was already used for a different command."))
        if answer is None:
            answer = compute()
        self.replies[request_id] = (fp, answer)
        return answer

    def put(self, event_uuid, body, expected):
        instance = TABLE.load(event_uuid)
        current = self.version(event_uuid)
        serializer = ContractEventSerializer(instance, data=body, partial=False)
        if not serializer.is_valid():
            errors = dict(serializer.errors)
            rule = None
            if any(unstorable_field(body, f) for f in ("user", "context", "brand")):
                rule = "jsonb-unstorable"
            action = body.get("action") if isinstance(body, dict) else None
            if isinstance(action, str) and "action" in errors:
                sur = next((ord(c) for c in action if 0xD800 <= ord(c) <= 0xDFFF), None)
                if sur is not None:
                    errors["action"] = [SURROGATE.format(sur)]
                    rule = "action-surrogate"
            return Answer(400, errors, rule=rule)
        if expected is not None and expected != current:
            return Answer(409, conflict(expected, current) | {"current_version": current})
        default_expires = "expires" not in serializer.validated_data and (
            instance is None or TABLE.default_expires.get(event_uuid, False))
        serializer.save(**({"event_uuid": event_uuid} if instance is None else {}))
        TABLE.default_expires[event_uuid] = default_expires
        self.versions[event_uuid] = current + 1
        return Answer(201 if instance is None else 200, serializer.data, version=current + 1,
                      default_expires=default_expires)


def unstorable_field(body, name):
    return isinstance(body, dict) and name in body and bool(unstorable(body[name]))


def conflict(expected, current):
    if current == 0:
        text = f"Version conflict: expected version {expected}, but the event does not exist."
    elif expected == 0:
        text = f"Version conflict: expected the event not to exist, but it is at version {current}."
    else:
        text = (f"Version conflict: expected version {expected}, but the event is at "
                f"version {current}.")
    return {"detail": text}


def rust_debug(s):
    """Rust's `{:?}` of a str, as the service's 422 text quotes the id (printable ASCII here)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
