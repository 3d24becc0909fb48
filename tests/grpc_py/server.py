#!/usr/bin/env python3
"""A real gRPC server (Python grpcio) for cohort's tests, without generated code: raw
bytes in and out through generic handlers.

  server.py NAME [--tls CERT KEY] [--fail]

Prints the port it listens on (127.0.0.1, ephemeral), then serves until killed.
  /echo.Echo/Say    unary: answers NAME + b":" + the request message; trailing metadata
                    x-served-by: NAME. With --fail, aborts with INTERNAL instead.
  /echo.Echo/Count  server-streaming: the request is a decimal count N; answers N
                    messages NAME:0 .. NAME:N-1, then trailing metadata x-served-by.
  /grpc.health.v1.Health/Check  HealthCheckResponse{status: SERVING}.
"""
import sys
from concurrent import futures

import grpc

args = sys.argv[1:]
name = args[0]
fail = "--fail" in args
tls = None
if "--tls" in args:
    i = args.index("--tls")
    tls = (args[i + 1], args[i + 2])


def say(request, context):
    if fail:
        context.abort(grpc.StatusCode.INTERNAL, "canary broke")
    context.set_trailing_metadata((("x-served-by", name),))
    return name.encode() + b":" + request


def count(request, context):
    context.set_trailing_metadata((("x-served-by", name),))
    for i in range(int(request or b"0")):
        yield f"{name}:{i}".encode()


def check(request, context):
    return b"\x08\x01"


handlers = grpc.method_handlers_generic_handler(
    "echo.Echo",
    {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    },
)
health = grpc.method_handlers_generic_handler(
    "grpc.health.v1.Health",
    {"Check": grpc.unary_unary_rpc_method_handler(check)},
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handlers, health))
if tls:
    with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
        creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
    port = server.add_secure_port("127.0.0.1:0", creds)
else:
    port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
