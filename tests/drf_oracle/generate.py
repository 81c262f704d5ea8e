"""A seeded generator of update commands that hunts for disagreements with authentik, and the
runner that answers each with the oracle (oracle.py).

`python generate.py --seed S --cases N --max-depth D --out FILE` writes one JSON line per
case: the record to produce (key, value as hex, `request-id` header) and the oracle's answer
(status, body as DRF renders it, version, the named rule if one applied, whether `expires`
is the model default). Same seed, same cases.

Bodies mix, field by field: strings with ASCII and Unicode whitespace, numbers of every JSON
shape (big integers, exponents, `-0.0`, `1e400`), booleans, nulls, lists and objects; near-miss
actions; IPv4 and IPv6 in all their spellings; ISO 8601 in the shapes `fromisoformat` and
Django's regex accept or nearly accept (non-ASCII digits too); deep nesting; lone surrogate
escapes; NULs; bodies and commands that are not objects or not JSON. Commands go to a small
pool of events, so creates are followed by updates and kept values are compared as well;
some commands are redelivered or reuse a request id.
"""

import argparse
import json
import random
import sys
import threading
import uuid

import oracle

ACTIONS = oracle.EVENT_ACTIONS

# Characters assigned in Unicode 14.0 with the same properties in 15.1 (see oracle.PY313).
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85",
              "\xa0", "\u1680", "\u2000", "\u2007", "\u200a", "\u2028", "\u2029", "\u202f",
              "\u205f", "\u3000", "\u200b", "\ufeff", "\u180e"]
DIGIT_ZEROS = [0x660, 0x6F0, 0x966, 0x9E6, 0xE50, 0xFF10, 0x1D7CE, 0x104A0]
WORDS = ["x", "authentik.core", "é", "日本", "a b", "😀", "\u00ad", "ǅ", "İ", "ß", "\u0301e",
         "null", "true", "0", "-", "login", "{}", "[]", "\\", '"', "'", "\u2028"]


def js(s):
    """A JSON string literal for `s` (may hold lone surrogates, written as escapes)."""
    return json.dumps(s, ensure_ascii=False) if not any(
        0xD800 <= ord(c) <= 0xDFFF for c in s) else json.dumps(s)


class Gen:
    def __init__(self, rnd, max_depth):
        self.r = rnd
        self.max_depth = max_depth

    def pick(self, xs):
        return xs[self.r.randrange(len(xs))]

    def chance(self, p):
        return self.r.random() < p

    # --- scalar fragments (JSON text) --------------------------------------------------

    def number(self):
        r = self.r
        return self.pick([
            "0", "-0", "7", "-42", "1.0", "-0.0", "0.0", "1e5", "1E+5", "1e-5", "1.5e-7",
            "12.50", "100000.0", "1e16", "1e15", "1.5e16", "2.5e300", "1.7976931348623157e308",
            "5e-324", "2e-324", "1e-400", "1e400", "-1e400", "1E309", "123456789012345678901234567890",
            "9223372036854775807", "9223372036854775808", "-9223372036854775809",
            "0.30000000000000004", "1.00000000000000001", "123456789012345678.0", "0e5",
            "9007199254740993", "-1147493619435396.2", "98619394971213.12", "1.25",
            str(r.randint(-10**6, 10**6)), f"{r.uniform(-1e6, 1e6)!r}",
            f"{r.random()}e{r.randint(-30, 30)}", "1" * r.randint(20, 60),
            "9" * self.pick([4300, 4301]),
        ])

    def text(self):
        r = self.r
        kind = r.randrange(24)
        if kind in (4, 5):  # more plain words, fewer NULs and lone surrogates
            kind = 9
        if kind == 0:
            return "".join(self.pick(WHITESPACE) for _ in range(r.randint(0, 3)))
        if kind == 1:
            ws = lambda: "".join(self.pick(WHITESPACE) for _ in range(r.randint(0, 2)))  # noqa
            return ws() + self.pick(WORDS) + ws()
        if kind == 2:
            return self.pick(["\0", "a\0b", "\ud800", "x\udfff", "\udc00\ud800", "\ud83d",
                              "\ud83d\ude00", "a\ud800b", "\ufffd", "\U0010f800", "\U0010fffd"])
        if kind in (3, 6, 7):
            return "".join(self.pick(WORDS) for _ in range(r.randint(1, 4)))
        return self.pick(WORDS) + str(r.randint(0, 99))

    def scalar(self):
        k = self.r.randrange(6)
        if k == 0:
            return self.number()
        if k == 1:
            return self.pick(["true", "false", "null"])
        return js(self.text())

    def key(self):
        return js(self.pick(["a", "b", "aa", "ab", "z", "é", "aé", "", "pk", "user", "a\0",
                             "\ud800", "k" * self.r.randint(1, 12), self.text()]))

    def value(self, depth=0):
        """Any JSON value (text), small."""
        k = self.r.randrange(8)
        if depth > 3 or k < 4:
            return self.scalar()
        if k < 6:
            items = [self.value(depth + 1) for _ in range(self.r.randint(0, 4))]
            return "[" + ", ".join(items) + "]"
        members = [f"{self.key()}: {self.value(depth + 1)}" for _ in range(self.r.randint(0, 4))]
        return "{" + ", ".join(members) + "}"

    def deep(self):
        """Nesting around the service's limit (and once in a while far beyond it)."""
        m = self.max_depth
        n = self.pick([m - 1, m, m + 1, m + 2, self.r.randint(513, m), self.r.randint(m, m + 40),
                       self.r.randint(m, 12000), self.r.randint(513, 2000)])
        inner = self.scalar() if self.chance(0.8) else "[]"
        if self.chance(0.5):
            return "[" * n + inner + "]" * n
        return '{"k": ' * n + inner + "}" * n

    def any_value(self):
        k = self.r.randrange(20)
        if k == 0:
            return self.deep()
        return self.value()

    # --- fields ------------------------------------------------------------------------

    def action(self):
        r = self.r
        k = r.randrange(10)
        if k < 4:
            return js(self.pick(ACTIONS))
        if k < 7:
            a = self.pick(ACTIONS)
            return js(self.pick([a.upper(), " " + a, a + " ", a + "\n", a[:-1], a + "s",
                                 "custom", "custom_x", "CUSTOM_", a.replace("i", "ı"),
                                 a + "\0", a + "\ud800", "", " ", a.title()]))
        if k == 7:
            return "[" + js(self.pick(ACTIONS)) + "]"
        return self.any_value()

    def app(self):
        k = self.r.randrange(8)
        if k < 3:
            return js(self.pick(["authentik.core", "authentik.events", "x"]))
        if k < 6:
            return js(self.text())
        if k == 6:
            return self.number()
        return self.any_value()

    def ipv4(self):
        r = self.r
        octets = [str(r.randint(0, 255)) for _ in range(4)]
        k = r.randrange(8)
        if k == 0:
            octets[r.randrange(4)] = "0" + octets[0]
        elif k == 1:
            octets = octets[:3]
        elif k == 2:
            octets[r.randrange(4)] = str(r.randint(256, 999))
        elif k == 3:
            octets.append("1")
        return ".".join(octets)

    def ipv6(self):
        r = self.r
        groups = [format(r.choice([0, 0, 0, 1, 0xFFFF, r.randint(0, 0xFFFF)]), "x")
                  for _ in range(8)]
        k = r.randrange(16)
        if k == 0:
            return "::" + self.pick(["1.2.3.4", "0.0.0.1", "255.255.255.255", "1.2.3"])
        if k == 1:
            return "::ffff:" + self.pick(["1.2.3.4", "01.2.3.4", "0.0.0.0", "0102:0304"])
        if k == 2:
            return self.pick(["::1", "::", ":::", "1::2::3", "::1:2", "::a:b", "::ffff",
                              "::ffff:0", "::1:0:0", "0:0:0:0:0:1:0:0", "1::", "::2:0",
                              "fe80::1%eth0", "fe80::1%", "[::1]", "::12345", "1:2:3:4:5:6:7:8:9",
                              "1:2:3:4:5:6:7", "1:0:0:1:0:0:1:1", "1:0:0:1:0:0:0:1",
                              "0000:0000:0000:0000:0000:0000:0102:0304", "::00001",
                              "::fffe:1.2.3.4", "64:ff9b::1.2.3.4"])
        if k == 3:
            return ":".join(g.upper() for g in groups)
        if k == 4:
            return ":".join(g.zfill(4) for g in groups)
        if k == 5:
            i, j = sorted(r.sample(range(9), 2))
            return ":".join(groups[:i]) + "::" + ":".join(groups[j:])
        if k == 6:
            return ":".join(groups[:6]) + ":" + self.ipv4()
        return ":".join(groups)

    def client_ip(self):
        r = self.r
        k = r.randrange(12)
        if k < 3:
            return js(self.ipv4())
        if k < 7:
            return js(self.ipv6())
        if k == 7:
            ws = self.pick(WHITESPACE)
            return js(self.pick([ws + self.ipv4(), self.ipv6() + ws, ws + self.ipv4() + ws]))
        if k == 8:
            return "null"
        if k == 9:
            return js(self.pick(["", " ", "1.2.3.4\0", "::1\0", "\ud800", "1.2.3.\ud800",
                                 "::1\ud800", "localhost", "١.٢.٣.٤"]))
        return self.any_value()

    def digits(self, s):
        """Rewrites some ASCII digits of `s` in another script."""
        zero = self.pick(DIGIT_ZEROS)
        out, every = [], self.chance(0.5)
        for c in s:
            if c.isdigit() and (every or self.chance(0.3)):
                out.append(chr(zero + int(c)))
            else:
                out.append(c)
        return "".join(out)

    def iso(self):
        r = self.r
        y, mo, d = r.randint(1, 9999), r.randint(1, 12), r.randint(1, 28)
        if r.randrange(4) == 0:
            y, mo, d = self.pick([(2024, 2, 29), (2027, 2, 29), (1, 1, 1), (9999, 12, 31),
                                  (2027, 13, 1), (2027, 4, 31), (0, 1, 1)])
        h, mi, s = r.randint(0, 23), r.randint(0, 59), r.randint(0, 59)
        if r.randrange(8) == 0:
            h, mi, s = self.pick([(24, 0, 0), (23, 60, 0), (23, 59, 60), (0, 0, 0)])
        date = self.pick([f"{y:04}-{mo:02}-{d:02}", f"{y:04}{mo:02}{d:02}",
                          f"{y:04}-{mo}-{d}", f"{y:04}-W{r.randint(0, 54):02}-{r.randint(0, 8)}",
                          f"{y:04}W{r.randint(1, 53):02}{r.randint(1, 7)}",
                          f"{y:04}-W{r.randint(1, 53):02}", f"{y:04}-{mo:02}"])
        sep = self.pick(["T", "T", " ", "t", "x", "é", "\ud800", ""])
        time = self.pick([f"{h:02}:{mi:02}:{s:02}", f"{h:02}:{mi:02}", f"{h:02}",
                          f"{h:02}{mi:02}{s:02}", f"{h:02}{mi:02}", f"{h}:{mi}:{s}",
                          f"{h:02}:{mi:02}:{s}", f"{h:02}:"])
        frac = self.pick(["", "", "", ".", ",", "." + "1234567890"[:r.randint(1, 10)],
                          "," + str(r.randint(0, 999999)), ".123456789012", ".1234567890123"])
        zone = self.pick(["", "", "Z", "z", " Z", "+00:00", "-00:00", "+01:00", "-05:30",
                          "+0130", "+01", "+1", "+01:3", "+24:00", "+23:59:59.999999",
                          "+01:00:30", "+00:00:00.5", "-00:00:01.25", "+00:60", " +01:00",
                          "\u3000+01:00", "Z\n", "\n", " ", "+01:00junk", "Z\0junk", "\0"])
        s = date + sep + time + frac + zone
        if r.randrange(6) == 0:
            s = self.digits(s)
        if r.randrange(20) == 0:
            s = self.pick(["iso-8601", "ISO-8601", "ıſo-8601", "iso-8601 ", "", "yesterday",
                           "2027-01-01T12:30:45.123456junk+01:00", "9999-12-31T23:59:59-01:00",
                           "0001-01-01T00:00:00+01:00", "9999-12-31 23:30 -00:31"])
        return s

    def expires(self):
        k = self.r.randrange(10)
        if k < 8:
            return js(self.iso())
        if k == 8:
            return "null"
        return self.any_value()

    def json_field(self):
        k = self.r.randrange(10)
        if k == 0:
            return "null"
        return self.any_value()

    FIELDS = ["user", "action", "app", "context", "client_ip", "expires", "brand"]

    def body(self, sane):
        """A body object (text). `sane`: action and app valid, so that updates happen."""
        r = self.r
        members, classes = [], []
        for name in self.FIELDS:
            required = name in ("action", "app")
            if not required and r.random() < 0.4:
                continue
            if required and sane:
                v = js(self.pick(ACTIONS)) if name == "action" else js("authentik.core")
            elif required and r.random() < 0.1:
                continue
            elif sane and r.random() < 0.7:
                v = self.good(name)
                classes.append(name)
            else:
                kind = "json_field" if name in ("user", "context", "brand") else name
                v = getattr(self, kind)()
                classes.append(name)
            members.append((js(name), v))
        for _ in range(r.choice([0, 0, 0, 1, 2])):
            members.insert(r.randrange(len(members) + 1),
                           (self.pick([js("pk"), js("created"), js("extra"), self.key()]),
                            self.any_value()))
            classes.append("ignored")
        if r.random() < 0.05 and members:  # a repeated key: first place, last value
            name, _ = self.pick(members)
            members.append((name, self.value()))
            classes.append("duplicate-key")
        r.shuffle(members) if r.random() < 0.2 else None
        return "{" + ", ".join(f"{k}: {v}" for k, v in members) + "}", classes

    def uuid_text(self, u):
        return self.pick([str(u)] * 6 + [str(u).upper(), u.hex, "{" + str(u) + "}",
                                          "urn:uuid:" + str(u), "{" + str(u).upper() + "}"])

    def good(self, name):
        """A value DRF most likely accepts for the field."""
        r = self.r
        if name in ("user", "context", "brand"):
            clean = lambda: js(self.pick(WORDS[:12]) + str(r.randint(0, 9)))  # noqa: E731
            key = lambda: js(self.pick(["a", "b", "aa", "ab", "z", "é", "aé", "", "pk", "k" * r.randint(1, 9)]))  # noqa: E731
            finite = lambda: next(n for n in iter(self.number, None) if "e4" not in n and "E3" not in n and len(n) < 4000)  # noqa: E731
            members = [f"{key()}: {self.pick([finite(), clean(), clean(), self.value()])}"
                       for _ in range(r.randint(0, 4))]
            return "{" + ", ".join(members) + "}" if r.random() < 0.8 else self.value()
        if name == "client_ip":
            return js(self.pick([self.ipv4(), self.ipv6(), "10.0.0.1", "::1.2.3.4"]))
        return js(f"{r.randint(1990, 2200)}-{r.randint(1, 12):02}-{r.randint(1, 28):02}T"
                  f"{r.randint(0, 23):02}:{r.randint(0, 59):02}:{r.randint(0, 59):02}"
                  + self.pick(["", "Z", ".5Z", "+02:00", ".123456"]))


def broken(g):
    """A value that is not JSON, or not what it should be."""
    return g.pick([
        b"", b"{", b"[1,]", b'{"a":1,}', b'{"a" 1}', b"nul", b"NaN", b'{"body": Infinity}',
        b"\xff", b'"\xe4\xb8x"', b'{"a":"\xc3"}', b"\xef\xbb\xbf{}", b'{"a":"\\x"}',
        b'{"a":"\\ud800\\u12"}', b"[1] x", b"01", b"1.e5", b'{"a":"\t"}', b"{\n\"a\"\n:1,\r\n\t}",
        b'[ 1, 2 ,\n ]', b'{"event_uuid": "x",}', b"  ", b"\xed\xa0\x80", b'["\xe4\xb8',
        b"[" * 600 + b"]" * 599, b'{"a": [1, 2, ] }',
    ])


def generate(seed, cases, max_depth):
    r = random.Random(seed)
    g = Gen(r, max_depth)
    orc = oracle.Oracle(max_depth)
    events = [uuid.UUID(int=r.getrandbits(128), version=4) for _ in range(max(8, cases // 12))]
    sent = []  # (key, value, header) already produced, for redeliveries
    # Request ids the oracle has stored, with the key they were sent under: a command reusing
    # one goes under the same key (so after it), and can only be a stored reply or a 422.
    stored = []
    for i in range(cases):
        header = f"diff-{seed}-{i}"
        classes = []
        k = r.randrange(100)
        u = g.pick(events)
        key = str(u)
        if k < 2 and sent:
            key, value, header = g.pick(sent)
            classes = ["redelivery"]
        elif k < 6:
            value = broken(g)
            classes = ["not-json"]
        elif k < 8:
            value = g.pick([b"[]", b"null", b'"x"', b"1.5", b"true", b"7", b'[{"body": {}}]'])
            classes = ["command-not-object"]
        else:
            body, classes = g.body(sane=r.random() < 0.5)
            if r.random() < 0.04:
                body = g.pick(["[]", "null", '"x"', "1", "1.5", "true", "[{}]", "1e400"])
                classes = ["body-not-object"]
            members = []
            rid = f"rid-{seed}-{i}"
            kr = r.randrange(40)
            if kr == 0 and stored:
                rid, key = g.pick(stored)  # reuse: 422, or the stored reply
                classes.append("request-id-reuse")
            elif kr == 1:
                rid = None
            elif kr == 2:
                # Invalid ones fall back to the header; the valid one is unique to the case
                # (a request id shared by two events' commands would race across partitions).
                rid = g.pick([None, "", 7, "x" * 201, "a\0", "\ud800", [], f"{i}".ljust(200, "é")])
                classes.append("request-id")
            if rid is not None or kr == 2:
                members.append(f'"request_id": {js(rid) if isinstance(rid, str) else json.dumps(rid)}')
            ku = r.randrange(40)
            if ku == 0:
                # 404s, and spellings int(hex, 16) takes that name another (new) event.
                odd = ["null", "7", js("not-a-uuid"), js(str(u)[:-1]), "[]", js(str(u) + "0"),
                       js(str(u).replace("-", "٣", 1)), js(" " + str(u)), js("0x" + u.hex[2:]),
                       js("+" + u.hex[1:]), js(u.hex[:8] + "_" + u.hex[9:]),
                       js(u.hex[:31] + "٣"), js("{" + str(u)), js("urn:uuid:{" + u.hex + "}"),
                       js(u.hex[:16] + "__" + u.hex[18:]), js(u.hex.upper() + " ")]
                spelled = g.pick(odd)
                members.append(f'"event_uuid": {spelled}')
                classes.append("event-uuid")
                # Producers key a command by the event it names (the service answers a 400
                # otherwise); these spellings may name another event than `u`.
                try:
                    key = str(uuid.UUID(json.loads(spelled)))
                except (TypeError, ValueError, AttributeError):
                    pass
            elif ku != 1:
                members.append(f'"event_uuid": {js(g.uuid_text(u))}')
            else:
                classes.append("event-uuid")
            if r.random() < 0.15:
                cur = orc.version(u)
                ev = g.pick([str(cur), str(cur), str(cur + 1), str(max(cur - 1, 0)), "0", "-1",
                             "1.0", '"3"', "null", "true", "99999999999999999999", "1e400"])
                members.append(f'"expected_version": {ev}')
                classes.append("expected-version")
            if r.random() > 0.02:
                members.append(f'"body": {body}')
            else:
                classes.append("no-body")
            r.shuffle(members) if r.random() < 0.3 else None
            value = ("{" + ", ".join(members) + "}").encode("utf-8", "surrogatepass")
        if b"\xed\xa0" in value or b"\xed\xb0" in value:
            pass  # raw surrogate bytes only come from broken(): they are invalid UTF-8
        answer = orc.answer(value, header)
        sent.append((key, value, header))
        rid = f"rid-{seed}-{i}"
        if rid in orc.replies and "request-id-reuse" not in classes:
            stored.append((rid, key))
        yield {
            "i": i,
            "key": key,
            "value": value.hex(),
            "request_id_header": header,
            "status": answer.status,
            "body": answer.rendered(),
            "version": answer.version,
            "rule": answer.rule,
            "default_expires": answer.default_expires,
            "classes": sorted(set(classes)),
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--cases", type=int, required=True)
    p.add_argument("--max-depth", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    # 3.13 nests json and repr about 10,000 deep; 3.11 needs the limit and the stack for it.
    sys.setrecursionlimit(200_000)
    threading.stack_size(512 * 1024 * 1024)
    failure = []

    def run():
        try:
            with open(a.out, "w", encoding="utf-8") as f:
                for line in generate(a.seed, a.cases, a.max_depth):
                    f.write(json.dumps(line, ensure_ascii=True) + "\n")
        except BaseException as e:  # reported by the main thread
            failure.append(e)
            raise

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if failure:
        sys.exit(1)


if __name__ == "__main__":
    main()
