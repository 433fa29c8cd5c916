#!/usr/bin/python3
"""A local SMTP server for tests/channels.rs, on aiosmtpd (Debian's
python3-aiosmtpd; run it with /usr/bin/python3, which has it).

It listens on two ports of 127.0.0.1: one offers STARTTLS with the given
certificate and requires it (as port 587 does), the other speaks TLS from
the first byte (as port 465 does). Both require AUTH (PLAIN or LOGIN) with
one username and password, over TLS. Each message accepted is saved as
JSON in the output directory (mail-<n>.json, written whole then renamed):
the envelope, whether it came over TLS and through STARTTLS, who logged
in, the headers and the decoded plain-text body. The first line on stdout
is `ready <starttls port> <tls port>` once both take connections; it runs
until stdin closes (the test ends) or it is killed. aiosmtpd logs each
session's trouble (a client refusing the certificate) on stderr.

    server.py --cert CERT.pem --key KEY.pem --user U --password P --out DIR

(Run by hand with a certificate from `openssl req -x509 -newkey rsa:2048
-nodes -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 ...`, it
takes mail from `swaks --tls --auth ...` or the detector.)
"""

import argparse
import email
import email.policy
import json
import os
import socket
import ssl
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Saver:
    def __init__(self, out):
        self.out = out
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "starttls": session.ssl is not None,
            "login": login,
            "headers": [[k, str(v)] for k, v in msg.items()],
            "content_type": msg.get_content_type(),
            "body": msg.get_content().replace("\r\n", "\n"),
        }
        with self.lock:
            self.count += 1
            path = os.path.join(self.out, f"mail-{self.count}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 Message accepted for delivery"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    # aiosmtpd warns of AUTH without STARTTLS on the TLS-from-the-start
    # port, where it is encrypted all the same.
    warnings.filterwarnings("ignore", category=UserWarning)
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(a.cert, a.key)
    saver = Saver(a.out)
    check = authenticator(a.user, a.password)
    common = dict(hostname="127.0.0.1", server_hostname="detector-test-smtp", authenticator=check, auth_required=True)
    starttls = Controller(
        saver, port=free_port(), tls_context=tls, require_starttls=True, auth_require_tls=True, **common
    )
    # TLS from the first byte: aiosmtpd's auth_require_tls looks for a
    # STARTTLS, so it is off here, where the whole session is encrypted.
    wrapped = Controller(saver, port=free_port(), ssl_context=tls, auth_require_tls=False, **common)
    starttls.start()
    wrapped.start()
    print(f"ready {starttls.port} {wrapped.port}", flush=True)
    try:
        sys.stdin.read()
    except (OSError, ValueError):
        pass
    starttls.stop()
    wrapped.stop()


if __name__ == "__main__":
    main()
