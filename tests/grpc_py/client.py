#!/usr/bin/env python3
"""A real gRPC client (Python grpcio) for cohort's tests: calls through cohort's TLS
listener (HTTP/2, ALPN h2) and prints one JSON line per call.

  client.py ADDR CA_PEM METHOD N_USERS CALLS_PER_USER [COUNT]

METHOD is `Say` (unary) or `Count` (server-streaming, COUNT messages). User i sends
metadata x-user-id: user-i. Each line: {"user", "code", "details", "messages",
"trailers"} with the status code's number (0 OK, 13 INTERNAL, 14 UNAVAILABLE).
"""
import json
import sys

import grpc

addr, ca, method, users, per_user = sys.argv[1:6]
count = sys.argv[6] if len(sys.argv) > 6 else "3"
with open(ca, "rb") as f:
    creds = grpc.ssl_channel_credentials(root_certificates=f.read())
channel = grpc.secure_channel(
    addr, creds, options=(("grpc.ssl_target_name_override", "localhost"),)
)
path = f"/echo.Echo/{method}"
if method == "Say":
    call = channel.unary_unary(path)
else:
    call = channel.unary_stream(path)
for u in range(int(users)):
    user = f"user-{u}"
    for _ in range(int(per_user)):
        md = (("x-user-id", user),)
        out = {"user": user, "messages": [], "trailers": {}}
        try:
            if method == "Say":
                resp, c = call.with_call(b"hi", metadata=md, timeout=10)
                out["messages"] = [resp.decode()]
            else:
                c = call(count.encode(), metadata=md, timeout=10)
                out["messages"] = [m.decode() for m in c]
            out["code"] = c.code().value[0]
            out["trailers"] = dict(c.trailing_metadata() or ())
            out["details"] = c.details() or ""
        except grpc.RpcError as e:
            out["code"] = e.code().value[0]
            out["details"] = e.details() or ""
            out["trailers"] = dict(e.trailing_metadata() or ())
        print(json.dumps(out), flush=True)
