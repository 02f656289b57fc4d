"""Parses one delivered message (an .eml file) strictly, as a MIME reader must.

Python's email package with policy.strict raises on any defect it finds (a bad header,
a broken encoding, a missing header/body separator). On top, RFC 2045 section 4: a message
that declares Content-Type or Content-Transfer-Encoding must say `MIME-Version: 1.0`, or a
reader may ignore both and show the encoded body raw. Prints JSON: the headers that matter
and the decoded text body. Exits 1 with the reason on any violation.
"""
import email
import email.policy
import json
import sys


def main():
    with open(sys.argv[1], "rb") as f:
        raw = f.read()
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.strict)
    except Exception as e:  # a defect, raised by the strict policy
        sys.exit(f"defect: {e!r}")
    declares = msg.get("Content-Type") is not None or msg.get("Content-Transfer-Encoding") is not None
    version = msg.get("MIME-Version")
    if declares and (version is None or str(version).strip() != "1.0"):
        sys.exit(f"declares Content-Type/Content-Transfer-Encoding but MIME-Version is {version!r} (RFC 2045 section 4)")
    if msg.is_multipart() or msg.get_content_type() != "text/plain":
        sys.exit(f"expected one text/plain part, got {msg.get_content_type()}")
    body = msg.get_content()
    print(json.dumps({
        "mime_version": str(version),
        "content_type": msg.get_content_type(),
        "charset": msg.get_content_charset(),
        "transfer_encoding": msg.get("Content-Transfer-Encoding"),
        "date": str(msg.get("Date")),
        "message_id": str(msg.get("Message-ID")),
        "body": body,
    }))


if __name__ == "__main__":
    main()
