#!/usr/bin/env python3
"""A TLS client (python3 ssl) that checks how mailfront ends a session: with a close_notify alert
before the TCP close (RFC 8446 §6.1), or without (a "ragged" EOF, which python's ssl reports as
SSLEOFError once suppress_ragged_eofs is off, as openssl s_client reports "unexpected eof").

Reads one JSON request from argv[1]: {"port", "protocol": "imap"|"pop3"|"sieve",
"tls": "implicit"|"starttls", "cafile", "user", "password"} (no user: the session ends before
login) and prints one JSON result: {"login": the login reply or null, "end": "close_notify" |
"ragged: ..." | "timeout"}. Errors before the end are printed as {"error": ...}.
"""
import base64
import json
import socket
import ssl
import sys


class Lines:
    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def line(self):
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed; unread: %r" % self.buffer)
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def until(self, predicate):
        while True:
            line = self.line()
            if predicate(line):
                return line

    def send(self, text):
        self.sock.sendall(text.encode("utf-8"))


# Per protocol: the greeting's last line, the STARTTLS command and its reply, what follows the
# handshake (ManageSieve sends its capabilities again), the login, and the logout.
def imap_login(lines, user, password):
    lines.send('l LOGIN "%s" "%s"\r\n' % (user, password))
    return lines.until(lambda l: l.startswith("l "))


def pop3_login(lines, user, password):
    lines.send("USER %s\r\n" % user)
    lines.until(lambda l: l.startswith(("+OK", "-ERR")))
    lines.send("PASS %s\r\n" % password)
    return lines.until(lambda l: l.startswith(("+OK", "-ERR")))


def sieve_login(lines, user, password):
    ir = base64.b64encode(("\0%s\0%s" % (user, password)).encode("utf-8")).decode("ascii")
    lines.send('AUTHENTICATE "PLAIN" "%s"\r\n' % ir)
    return lines.until(lambda l: l.startswith(("OK", "NO", "BYE")))


PROTOCOLS = {
    "imap": {
        "greeting": lambda l: l.startswith("* "),
        "starttls": ("s STARTTLS\r\n", lambda l: l.startswith("s ")),
        "after_tls": None,
        "login": imap_login,
        "logout": "a LOGOUT\r\n",
    },
    "pop3": {
        "greeting": lambda l: l.startswith("+OK"),
        "starttls": ("STLS\r\n", lambda l: l.startswith(("+OK", "-ERR"))),
        "after_tls": None,
        "login": pop3_login,
        "logout": "QUIT\r\n",
    },
    "sieve": {
        "greeting": lambda l: l.startswith("OK"),
        "starttls": ("STARTTLS\r\n", lambda l: l.startswith(("OK", "NO"))),
        "after_tls": lambda l: l.startswith("OK"),
        "login": sieve_login,
        "logout": "LOGOUT\r\n",
    },
}


def read_to_end(sock):
    try:
        while sock.recv(65536):
            pass
        return "close_notify"
    except ssl.SSLEOFError as e:
        return "ragged: %s" % e
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "ragged: %r" % e


def main():
    req = json.loads(sys.argv[1])
    proto = PROTOCOLS[req["protocol"]]
    ctx = ssl.create_default_context(cafile=req["cafile"])

    def wrap(sock):
        return ctx.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False)

    try:
        sock = socket.create_connection(("127.0.0.1", req["port"]), timeout=10)
        if req["tls"] == "implicit":
            sock = wrap(sock)
        lines = Lines(sock)
        lines.until(proto["greeting"])
        if req["tls"] == "starttls":
            command, done = proto["starttls"]
            lines.send(command)
            reply = lines.until(done)
            if lines.buffer:
                raise RuntimeError("bytes after the STARTTLS reply: %r" % lines.buffer)
            sock = wrap(sock)
            lines = Lines(sock)
            if proto["after_tls"] is not None:
                lines.until(proto["after_tls"])
        login = None
        if req.get("user"):
            login = proto["login"](lines, req["user"], req["password"])
        lines.send(proto["logout"])
    except Exception as e:  # noqa: BLE001 - reported to the test as it is
        print(json.dumps({"error": repr(e)}))
        return
    print(json.dumps({"login": login, "end": read_to_end(sock)}))


if __name__ == "__main__":
    main()
