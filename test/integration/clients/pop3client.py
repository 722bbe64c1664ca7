#!/usr/bin/env python3
"""A real POP3 client (python3 poplib) for mailfront's tests.

Reads one JSON request from argv[1]: {"port", "user", "password", "mode": "plain"|"stls"|"ssl",
"cafile", "actions": ["stat", "list", "uidl", "retr:N", "dele:N"]} and prints one JSON result
with what each action returned (RETR as size and sha256). Errors are printed as {"error": ...}.
"""
import hashlib
import json
import poplib
import ssl
import sys


def main() -> None:
    req = json.loads(sys.argv[1])
    ctx = None
    if req.get("cafile"):
        ctx = ssl.create_default_context(cafile=req["cafile"])
    try:
        if req["mode"] == "ssl":
            conn = poplib.POP3_SSL("127.0.0.1", req["port"], context=ctx, timeout=20)
        else:
            conn = poplib.POP3("127.0.0.1", req["port"], timeout=20)
            if req["mode"] == "stls":
                conn.stls(context=ctx)
        out = {"welcome": conn.getwelcome().decode()}
        conn.user(req["user"])
        out["login"] = conn.pass_(req["password"]).decode()
        results = []
        for action in req.get("actions", []):
            name, _, arg = action.partition(":")
            if name == "stat":
                results.append(list(conn.stat()))
            elif name == "list":
                results.append([line.decode() for line in conn.list()[1]])
            elif name == "uidl":
                results.append([line.decode() for line in conn.uidl()[1]])
            elif name == "retr":
                lines = conn.retr(int(arg))[1]
                body = b"\r\n".join(lines) + b"\r\n"
                results.append({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
            elif name == "dele":
                results.append(conn.dele(int(arg)).decode())
        out["results"] = results
        out["quit"] = conn.quit().decode()
        print(json.dumps(out))
    except poplib.error_proto as e:
        print(json.dumps({"error": e.args[0].decode() if isinstance(e.args[0], bytes) else str(e.args[0])}))


if __name__ == "__main__":
    main()
