#!/usr/bin/env python3
"""Checks Huren's test vectors the way a third party would, from VERIFYING.md alone.

Usage: python3 verify.py huren-v1.json

Needs Python 3.9+ and the `cryptography` package (for X.509 and the checkpoint signatures);
the Ed25519 rule of VERIFYING.md section 2, the pseudonyms, the protobuf body, the leaves and
the Merkle proofs are computed here with the standard library. Prints one line per check and
"all vectors verified" at the end; exits 1 at the first failure, naming it.
"""

import base64
import datetime
import hashlib
import hmac
import json
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519 as c_ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID

SUMMARY_PREFIX = b"HUREN-SUMMARY-V1\n"
PSEUDONYM_CONTEXT = b"huren-pseudonym-v1"
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
INSTITUTION_URI = "urn:huren:institution:"
ALLIANCE_TYPES = ["cn-ric", "cn-hk-mo-pass", "passport", "cn-health-card", "cn-ssc"]


class Failure(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failure(what)


def h(s):
    return bytes.fromhex(s)


# --- Ed25519, VERIFYING.md section 2 -------------------------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z


def point_add(p, q):
    # Unified addition on -x^2 + y^2 = 1 + d x^2 y^2 in extended coordinates.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, hh = b - a, d - c, d + c, b + a
    return (e * f % P, g * hh % P, f * g % P, e * hh % P)


def point_mul(n, p):
    result = IDENTITY
    while n > 0:
        if n & 1:
            result = point_add(result, p)
        p = point_add(p, p)
        n >>= 1
    return result


def point_neg(p):
    x, y, z, t = p
    return (-x % P, y, z, -t % P)


def is_identity(p):
    x, y, z, _ = p
    return x % P == 0 and (y - z) % P == 0


def decode_point(enc):
    """A point from a canonical encoding, or None (VERIFYING.md section 2, rule 2)."""
    if len(enc) != 32:
        return None
    y = int.from_bytes(enc, "little") & (2**255 - 1)
    sign = enc[31] >> 7
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x2 = u * pow(v, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


B = decode_point((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def small_order(p):
    return is_identity(point_mul(8, p))


def huren_ed25519_verify(public_key, message, signature):
    """The cofactored rule with canonical encodings and small-order points refused."""
    if len(signature) != 64:
        return False
    r_enc, s_enc = signature[:32], signature[32:]
    s = int.from_bytes(s_enc, "little")
    if s >= L:
        return False
    a = decode_point(public_key)
    r = decode_point(r_enc)
    if a is None or r is None or small_order(a) or small_order(r):
        return False
    k = int.from_bytes(hashlib.sha512(r_enc + public_key + message).digest(), "little") % L
    residual = point_add(point_add(point_mul(s, B), point_neg(r)), point_neg(point_mul(k, a)))
    return is_identity(point_mul(8, residual))


# --- Pseudonyms, section 3 ------------------------------------------------------------------

RIC_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
RIC_CHECK = "10X98765432"


def ric_check_char(first17):
    return RIC_CHECK[sum(int(d) * w for d, w in zip(first17, RIC_WEIGHTS)) % 11]


def normalise_type(t):
    t = t.strip()
    t = "".join(c.lower() if "A" <= c <= "Z" else c for c in t)
    check(
        1 <= len(t) <= 32 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in t),
        f"id type {t!r} is not 1-32 of a-z 0-9 -",
    )
    return t


def normalise_value(id_type, value):
    out = []
    for c in value:
        if "\uff01" <= c <= "\uff5e":
            c = chr(ord(c) - 0xFEE0)
        elif c == "\u3000":
            c = " "
        # str.isspace is close to White_Space but not equal (it takes U+001C..U+001F and leaves
        # out none the vectors use); a production verifier should use the White_Space list.
        if c.isspace() or c == "-":
            continue
        check(c.isascii() and c.isalnum(), "the id holds a character other than a letter or digit")
        out.append(c.upper())
    v = "".join(out)
    check(1 <= len(v) <= 64, "the id is empty or longer than 64 characters")
    if id_type == "cn-ric":
        if len(v) == 18:
            check(v[:17].isdigit() and ric_check_char(v[:17]) == v[17], "bad GB 11643 number")
        elif len(v) == 15:
            check(v.isdigit(), "bad first-generation card number")
            first17 = v[:6] + "19" + v[6:]
            v = first17 + ric_check_char(first17)
        else:
            check(False, "a resident identity card number has 18 characters or 15 digits")
    return v


def hmac_type(case):
    t = normalise_type(case["id_type"])
    if "assigning_authority" in case:
        a = case["assigning_authority"].strip()
        a = "".join(c.lower() if "A" <= c <= "Z" else c for c in a)
        check(
            1 <= len(a) <= 64 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789.-_:" for c in a),
            "bad assigning authority",
        )
        return f"{t}@{a}"
    check(t in ALLIANCE_TYPES, f"{t} is not an alliance-wide type")
    return t


def verify_pseudonyms(cases):
    for case in cases:
        t = hmac_type(case)
        v = normalise_value(normalise_type(case["id_type"]), case["id_value"])
        check(t == case["hmac_type"], f"{case['id_type']!r}: type input {t}")
        check(v == case["normalised_value"], f"{case['id_type']!r}: normalised value")
        message = PSEUDONYM_CONTEXT + b"\x00" + t.encode() + b"\x00" + v.encode()
        check(message == h(case["hmac_input"]), f"{case['id_type']!r}: HMAC input")
        mac = hmac.new(h(case["key"]), message, hashlib.sha256).digest()
        check(mac == h(case["pseudonym"]), f"{case['id_type']!r}: pseudonym")
        print(f"ok  pseudonym  {case['id_type']!r} {case['id_value']!r} -> {mac.hex()[:16]}…")


# --- Summary bodies, section 1 --------------------------------------------------------------

def read_varint(buf, i):
    n, shift, start = 0, 0, i
    while True:
        check(i < len(buf) and shift < 70, "a varint runs past the end")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    check(i - start == len(encode_varint(n)), "a varint is not in its shortest form")
    return n, i


def encode_varint(n):
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


# field number -> (name, kind); kind is "int", "str", "bytes" or a nested schema.
ITEM = {1: ("system", "str"), 2: ("code", "str"), 3: ("display", "str"), 4: ("local_code", "str")}
LAB = {1: ("value", "str"), 2: ("unit", "str"), 3: ("reference_range", "str"),
       4: ("flag", "int"), 5: ("specimen", "str")}
EXAM = {1: ("modality", "str"), 2: ("body_site", "str"), 3: ("impression", "str"),
        4: ("study_uid", "str")}
REPORT = {1: ("sha256", "bytes"), 2: ("locator", "str"), 3: ("media_type", "str")}
BODY = {1: ("format", "int"), 2: ("summary_id", "str"), 3: ("version", "int"),
        4: ("publisher", "str"), 5: ("patient_pseudonym", "bytes"), 6: ("item", ITEM),
        7: ("category", "int"), 8: ("performed_at_ms", "int"), 9: ("reported_at_ms", "int"),
        10: ("lab", LAB), 11: ("exam", EXAM), 12: ("report", REPORT), 13: ("status", "int"),
        14: ("status_reason", "str")}
ENUMS = {
    "category": ["CATEGORY_UNSPECIFIED", "CATEGORY_LAB", "CATEGORY_IMAGING",
                 "CATEGORY_ELECTROPHYSIOLOGY", "CATEGORY_NUCLEAR_MEDICINE"],
    "flag": ["ABNORMAL_FLAG_UNSPECIFIED", "ABNORMAL_FLAG_NORMAL", "ABNORMAL_FLAG_LOW",
             "ABNORMAL_FLAG_HIGH", "ABNORMAL_FLAG_CRITICAL_LOW", "ABNORMAL_FLAG_CRITICAL_HIGH",
             "ABNORMAL_FLAG_ABNORMAL"],
    "status": ["STATUS_UNSPECIFIED", "STATUS_FINAL", "STATUS_AMENDED", "STATUS_VOIDED"],
}


def decode_message(buf, schema):
    """Decodes canonical protobuf (section 1.1): increasing fields, no defaults, no unknowns."""
    out, i, last = {}, 0, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        check(number in schema, f"unknown field {number}")
        check(number > last, f"field {number} out of order or repeated")
        last = number
        name, kind = schema[number]
        if wire == 0:
            check(kind == "int", f"field {name} has the wrong wire type")
            value, i = read_varint(buf, i)
            value = value - 2**64 if value >= 2**63 else value
            check(value != 0, f"field {name} holds its default value")
            out[name] = ENUMS[name][value] if name in ENUMS and value < len(ENUMS[name]) else value
        elif wire == 2:
            check(kind != "int", f"field {name} has the wrong wire type")
            n, i = read_varint(buf, i)
            check(i + n <= len(buf), f"field {name} runs past the end")
            raw = buf[i:i + n]
            i += n
            if isinstance(kind, dict):
                out[name] = decode_message(raw, kind)
            else:
                check(n > 0, f"field {name} holds its default value")
                out[name] = raw.decode("utf-8") if kind == "str" else raw.hex()
        else:
            check(False, f"field {name}: wire type {wire} is not used by Huren")
    return out


def with_defaults(fields, schema):
    """The decoded fields with the left-out defaults filled in, to compare with the vectors."""
    full = {}
    for number, (name, kind) in schema.items():
        if isinstance(kind, dict):
            if name in fields:
                full[name] = with_defaults(fields[name], kind)
        elif name in fields:
            full[name] = fields[name]
        elif name in ENUMS:
            full[name] = ENUMS[name][0]
        else:
            full[name] = 0 if kind == "int" else ""
    return full


def institution_of(cert):
    sans = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(INSTITUTION_URI)]
    check(len(uris) == 1, "the certificate must name exactly one institution")
    return uris[0][len(INSTITUTION_URI):]


def verify_certificate(ca, cert, at_ms, public_key):
    """Section 1.4: issued by the CA, valid at the acceptance time, for document signing."""
    check(cert.issuer == ca.subject, "the signing certificate is not issued by the alliance CA")
    ca_key = ca.public_key()
    try:
        if isinstance(ca_key, ec.EllipticCurvePublicKey):
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes,
                          ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(ca_key, c_ed25519.Ed25519PublicKey):
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            raise Failure("the alliance CA's key is neither ECDSA nor Ed25519")
    except InvalidSignature:
        raise Failure("the CA's signature on the signing certificate does not verify")
    utc = datetime.timezone.utc
    at = datetime.datetime.fromtimestamp(at_ms / 1000, tz=utc)
    # cryptography 42 and later give aware times; older releases naive ones, in UTC.
    not_before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=utc)
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=utc)
    check(not_before <= at <= not_after, "the signing certificate is not valid at the acceptance time")
    eku = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    check(DOCUMENT_SIGNING in eku, "the certificate lacks id-kp-documentSigning")
    key = cert.public_key()
    check(isinstance(key, c_ed25519.Ed25519PublicKey), "the signing key is not Ed25519")
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    check(raw == public_key, "the certificate's key is not the vectors' public key")
    return institution_of(cert), raw


def summary_leaf(accepted_at_ms, cert_der, signature, body):
    """Section 4.1, kind 0x01."""
    return (b"\x01\x01" + accepted_at_ms.to_bytes(8, "big", signed=True)
            + hashlib.sha256(cert_der).digest() + signature
            + len(body).to_bytes(4, "big") + body)


def leaf_hash(leaf):
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_summary(s):
    ca = x509.load_pem_x509_certificate(s["ca_certificate_pem"].encode())
    cert_der = h(s["signer_certificate_der"])
    cert = x509.load_der_x509_certificate(cert_der)
    check(hashlib.sha256(cert_der).digest() == h(s["signer_certificate_sha256"]), "cert SHA-256")
    leaves = []
    for v in s["versions"]:
        institution, key = verify_certificate(ca, cert, v["accepted_at_ms"], h(s["public_key"]))
        body, signature = h(v["body"]), h(v["signature"])
        message = SUMMARY_PREFIX + body
        check(message == h(v["signing_message"]), "signing message")
        check(huren_ed25519_verify(key, message, signature),
              f"version {v['fields']['version']}: the signature does not verify")
        check(len(body) <= 16384, "the body is larger than 16,384 bytes")
        fields = with_defaults(decode_message(body, BODY), BODY)
        check(fields == v["fields"], f"decoded fields differ: {fields} != {v['fields']}")
        check(fields["format"] == 1, "format")
        check(fields["publisher"] == institution, "the body's publisher is not the signer")
        check(hashlib.sha256(body).digest() == h(v["body_sha256"]), "body SHA-256")
        leaf = summary_leaf(v["accepted_at_ms"], cert_der, signature, body)
        check(leaf == h(v["leaf"]), "summary leaf")
        check(leaf_hash(leaf) == h(v["leaf_hash"]), "summary leaf hash")
        leaves.append(leaf)
        print(f"ok  summary    {fields['summary_id']} v{fields['version']} by {institution}:"
              " certificate, signature, canonical body, leaf")
    return leaves


def verify_ed25519_cases(cases):
    for case in cases:
        got = huren_ed25519_verify(h(case["public_key"]), h(case["message"]), h(case["signature"]))
        check(got == case["accepted"], f"Ed25519 case {case['case']}: the rule says {got}")
        print(f"ok  ed25519    {case['case']}: {'accepted' if got else 'refused'}")
        if case["case"] == "mixed-order-r":
            # What a cofactorless library (here OpenSSL, through cryptography) says: section 2.
            try:
                c_ed25519.Ed25519PublicKey.from_public_bytes(h(case["public_key"])).verify(
                    h(case["signature"]), h(case["message"]))
                library = "accepts"
            except InvalidSignature:
                library = "refuses"
            print(f"    note: the cofactorless check of the cryptography package {library} it")


# --- The log, section 4 ---------------------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data, self.i = data, 0

    def take(self, n):
        check(self.i + n <= len(self.data), "the leaf ends early")
        out = self.data[self.i:self.i + n]
        self.i += n
        return out

    def u8(self):
        return self.take(1)[0]

    def boolean(self):
        b = self.u8()
        check(b in (0, 1), "a boolean is not 0 or 1")
        return b == 1

    def u32(self):
        return int.from_bytes(self.take(4), "big")

    def i64(self):
        return int.from_bytes(self.take(8), "big", signed=True)

    def u64(self):
        return int.from_bytes(self.take(8), "big")

    def bytes_(self):
        return self.take(self.u32())

    def text(self):
        return self.bytes_().decode("utf-8")


def decode_leaf(leaf):
    r = Reader(leaf)
    form = r.u8()
    kind = r.u8()
    check(form == 1 or (form in (2, 3, 4) and kind == 3) or (form == 4 and kind == 2),
          f"unknown leaf format {form} for kind {kind}")
    if kind == 1:
        out = {"kind": "summary", "accepted_at_ms": r.i64(), "cert_sha256": r.take(32),
               "signature": r.take(64), "body": r.bytes_()}
    elif kind == 2:
        out = {"kind": "decision", "at_ms": r.i64(), "member": r.text(),
               "decision_id": r.text(), "publisher": r.text(), "summary_id": r.text(),
               "version": r.u32(), "adopted": r.boolean(), "recognised": r.boolean(),
               "reason": r.text(), "note": r.text()}
        if form == 4:
            out["item"] = (r.text(), r.text())
            out["price_fen"] = r.u64()
            out["consulted_at_ms"] = r.i64()
    elif kind == 3:
        out = {"kind": "access", "at_ms": r.i64(), "caller": r.text(), "purpose": r.u8(),
               "method": r.u8(), "flags": r.u8(), "pseudonym": r.take(32)}
        check(1 <= out["purpose"] <= 6 and 1 <= out["method"] <= 5, "purpose or method")
        check(out["flags"] & ~0b11 == 0, "unknown access flags")
        out["results"] = [(r.text(), r.text(), r.u32()) for _ in range(r.u32())]
        if form >= 2:
            out["policy_version"] = r.text()
        if form >= 3:
            out["requester"] = r.text()
        if form == 4:
            out["asked"] = [(r.text(), r.text()) for _ in range(r.u32())]
            out["shown"] = [(r.text(), r.text(), r.boolean()) for _ in out["results"]]
    elif kind == 4:
        out = {"kind": "consent", "at_ms": r.i64(), "member": r.text(),
               "pseudonym": r.take(32), "opted_out": r.boolean()}
    elif kind == 5:
        out = {"kind": "policy", "at_ms": r.i64(), "version": r.text(), "text": r.bytes_()}
        out["text"].decode("utf-8")
    else:
        raise Failure(f"unknown leaf kind {kind}")
    check(r.i == len(leaf), "the leaf has bytes after its last field")
    return out


def mth(hashes):
    """RFC 6962 Merkle tree hash of a list of leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def verify_inclusion(leaf_h, index, size, proof, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_h
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(m, n, old_root, new_root, proof):
    """RFC 9162 section 2.1.4.2, with the two cases VERIFYING.md section 4.2 adds."""
    if m > n:
        return False
    if m == 0:
        empty = hashlib.sha256(b"").digest()
        return not proof and old_root == empty and (n > 0 or new_root == empty)
    if m == n:
        return not proof and old_root == new_root
    if m & (m - 1) == 0:
        proof = [old_root] + proof
    if not proof:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


def parse_verifier_key(vkey):
    """Section 4.3: split at the first two '+' only; the base64 may hold more."""
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    raw = base64.b64decode(key_b64, validate=True)
    check(len(raw) == 33 and raw[0] == 1, "the verifier key is not an Ed25519 key")
    key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    check(key_id.hex() == key_id_hex, "the verifier key's ID does not match")
    return name, key_id, raw[1:]


def open_checkpoint(note, vkey, origin):
    """The checkpoint text, if the log's key signed it (section 4.3)."""
    name, key_id, public = parse_verifier_key(vkey)
    text, sep, sigs = note.rpartition("\n\n")
    check(sep, "the note has no blank line before its signatures")
    text += "\n"
    verified = False
    for line in sigs.rstrip("\n").split("\n"):
        check(line.startswith("\u2014 "), "a signature line does not start with an em dash")
        line_name, _, sig_b64 = line[2:].rpartition(" ")
        raw = base64.b64decode(sig_b64, validate=True)
        if line_name != name or raw[:4] != key_id:
            continue
        try:
            c_ed25519.Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], text.encode())
        except InvalidSignature:
            raise Failure("the log key's signature on a checkpoint does not verify")
        verified = True
    check(verified, "the checkpoint has no signature by the log's key")
    lines = text.split("\n")
    check(lines[0] == origin == name, "the checkpoint's origin is not the log's")
    size = lines[1]
    check(size.isdigit() and (size == "0" or not size.startswith("0")), "tree size")
    return int(size), base64.b64decode(lines[2], validate=True)


def verify_log(log, summary_leaves):
    leaves = [h(e["leaf"]) for e in log["leaves"]]
    for e, leaf in zip(log["leaves"], leaves):
        decoded = decode_leaf(leaf)
        check(decoded["kind"] == e["kind"], f"leaf kind {decoded['kind']} != {e['kind']}")
        check(leaf_hash(leaf) == h(e["leaf_hash"]), "leaf hash")
    check([leaves[0], leaves[5]] == summary_leaves, "the log's summary leaves are not the summary's")
    print(f"ok  leaves     {len(leaves)}: " + ", ".join(e["kind"] for e in log["leaves"]))
    hashes = [leaf_hash(l) for l in leaves]
    roots = {}
    for r in log["roots"]:
        roots[r["size"]] = h(r["root"])
        check(mth(hashes[:r["size"]]) == roots[r["size"]], f"root of size {r['size']}")
    print(f"ok  roots      sizes 0-{len(leaves)}")
    for p in log["inclusion"]:
        proof = [h(x) for x in p["proof"]]
        check(verify_inclusion(hashes[p["index"]], p["index"], p["tree_size"], proof,
                               roots[p["tree_size"]]),
              f"inclusion of {p['index']} in {p['tree_size']}")
        if proof:
            check(not verify_inclusion(hashes[p["index"]], p["index"], p["tree_size"],
                                       proof[:-1], roots[p["tree_size"]]), "short proof accepted")
    print(f"ok  inclusion  {len(log['inclusion'])} proofs")
    for p in log["consistency"]:
        m, n = p["old_size"], p["new_size"]
        proof = [h(x) for x in p["proof"]]
        check(verify_consistency(m, n, roots[m], roots[n], proof), f"consistency {m} -> {n}")
        check(not verify_consistency(m, n, roots[m], roots[n - 1], proof),
              f"consistency {m} -> {n} holds for a wrong new root")
    print(f"ok  consistency {len(log['consistency'])} proofs")
    check("+" in log["verifier_key"].split("+", 2)[2], "the vectors' key should hold a '+'")
    for c in log["checkpoints"]:
        size, root = open_checkpoint(c["note"], log["verifier_key"], log["origin"])
        check(c["note"].startswith(c["body"] + "\n"), "checkpoint body")
        check(size == c["size"] and root == roots[size], f"checkpoint of size {size}")
        forged = c["note"].replace(c["body"].split("\n")[2], base64.b64encode(b"\0" * 32).decode())
        try:
            open_checkpoint(forged, log["verifier_key"], log["origin"])
            raise Failure("a checkpoint with a changed root was accepted")
        except Failure as e:
            check("does not verify" in str(e), str(e))
        print(f"ok  checkpoint size {size}: signed by {log['origin']}, root matches")


def main(path):
    with open(path, encoding="utf-8") as f:
        vectors = json.load(f)
    try:
        verify_pseudonyms(vectors["pseudonyms"])
        summary_leaves = verify_summary(vectors["summary"])
        verify_ed25519_cases(vectors["ed25519"])
        verify_log(vectors["log"], summary_leaves)
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print("all vectors verified")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
