"""An SMTP server on 127.0.0.1 for tests/it/notifiers.rs (aiosmtpd, as
scripts/test installs it): it takes mail only after AUTH with the user and
password it is given (over plain text: loopback), and writes each message it
is given to DIR/NNNN.eml, headed by what the envelope said.

    python3 smtp.py PORT DIR USER PASSWORD    prints "ready" once it listens
"""

import logging
import os
import sys
import time
import warnings

# Plain AUTH is the point here (loopback); aiosmtpd's warnings about it are noise.
warnings.filterwarnings("ignore")
logging.getLogger("mail.log").setLevel(logging.ERROR)

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, maildir, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Keep:
    async def handle_DATA(self, server, session, envelope):
        login = session.auth_data.login.decode() if session.authenticated else ""
        head = "X-Test-Auth: {}\r\nX-Test-Mail-From: {}\r\nX-Test-Rcpt-To: {}\r\n".format(
            login, envelope.mail_from, ",".join(envelope.rcpt_tos)
        )
        path = os.path.join(maildir, "{:04}.eml".format(len(os.listdir(maildir))))
        with open(path + ".part", "wb") as f:
            f.write(head.encode() + envelope.original_content)
        os.rename(path + ".part", path)
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    )
    # handled=False: aiosmtpd itself answers 535 to a refused one.
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


controller = Controller(
    Keep(),
    hostname="127.0.0.1",
    port=port,
    authenticator=authenticate,
    auth_required=True,
    auth_require_tls=False,
)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
