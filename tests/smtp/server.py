"""A real SMTP server for usersync's alert tests (aiosmtpd).

Modes: plain, STARTTLS or implicit TLS (with the test's throwaway CA), AUTH
PLAIN/LOGIN against one user, and XOAUTH2 whose bearer token is checked with
the Graph simulator. Every message received is written to --out as N.eml with
N.json beside it (envelope and authenticated user). Runs until killed.
"""
import argparse
import base64
import json
import os
import socket
import signal
import ssl
import time
import urllib.parse
import urllib.request

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, out, xoauth2_url):
        self.out = out
        self.xoauth2_url = xoauth2_url
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.out, str(self.count))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else session.auth_data
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "auth": login}, f)
        return "250 OK"

    async def auth_XOAUTH2(self, server, args):
        if len(args) > 1:
            blob = args[1]
        else:
            blob = (await server.challenge_auth("", encode_to_b64=False)).decode()
        try:
            fields = base64.b64decode(blob).decode().split("\x01")
            user = fields[0].removeprefix("user=")
            token = fields[1].removeprefix("auth=Bearer ")
        except Exception:
            return AuthResult(success=False, handled=False)
        url = self.xoauth2_url + "/_sim/token?" + urllib.parse.urlencode({"t": token})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                ok = r.status == 200
        except Exception:
            ok = False
        if not ok:
            return AuthResult(success=False, handled=False, message="535 5.7.3 Authentication unsuccessful")
        return AuthResult(success=True, auth_data=user)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--reject-auth", action="store_true")
    p.add_argument("--xoauth2-url", default="")
    a = p.parse_args()

    ctx = None
    if a.tls != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        if a.reject_auth or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login.decode() == a.user and auth_data.password.decode() == a.password
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = Handler(a.out, a.xoauth2_url)
    kwargs = dict(authenticator=authenticator, auth_require_tls=a.tls != "none", auth_exclude_mechanism=["CRAM-MD5"] if False else [])
    if a.tls == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True)
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            ssl_context=ctx if a.tls == "implicit" else None,
                            server_hostname="localhost", **kwargs)
    controller.start()
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(a.port_file + ".tmp", a.port_file)
    try:
        # Until killed. No sleep: under libfaketime (tests/clock-shift) a long sleep fails.
        signal.pause()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
