"""An SMTP server that insists on TLS and a login, for the notification tests.

    python smtpd-tls.py MODE PORT MAILDIR CERT KEY USER PASSWORD

MODE is `starttls` (plain connection, STARTTLS required before anything else) or `tls` (TLS from
the first byte, SMTPS). Messages go into MAILDIR like `python -m aiosmtpd -c
aiosmtpd.handlers.Mailbox`. Prints READY once it listens; stopped by PID.
"""

import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

mode, port, maildir, cert, key, user, password = sys.argv[1:8]


def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
    return AuthResult(success=ok)


ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
common = dict(hostname="127.0.0.1", port=int(port), authenticator=auth, auth_required=True)
if mode == "starttls":
    c = Controller(Mailbox(maildir), tls_context=ctx, require_starttls=True, **common)
elif mode == "tls":
    # Over TLS from the start, a login needs no STARTTLS first.
    c = Controller(Mailbox(maildir), ssl_context=ctx, auth_require_tls=False, **common)
else:
    sys.exit(f"unknown mode {mode}: starttls or tls")
c.start()
print("READY", flush=True)
threading.Event().wait()
