# hold.py N PORT [tls] -- opens N keep-alive connections to 127.0.0.1:PORT (200 at a
# time), sends one GET on each (random X-User-Id), reads the whole answer and keeps the
# connection open and idle. Prints "READY ok=.. fail=..", then waits for a line on stdin,
# closes every connection and prints "CLOSED". Used by memory-bench.sh.
import asyncio, random, resource, ssl, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
N, PORT = int(sys.argv[1]), int(sys.argv[2])
TLS = len(sys.argv) > 3 and sys.argv[3] == "tls"
ctx = None
if TLS:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])


async def one(sem):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORT, ssl=ctx), 20)
            uid = random.randint(1, 100000)
            w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: user-%d\r\n\r\n" % uid)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await asyncio.wait_for(r.readexactly(length), 20)
            return (r, w) if head.startswith(b"HTTP/1.1 200") else None
        except Exception:
            return None


async def main():
    sem = asyncio.Semaphore(200)
    held = [c for c in await asyncio.gather(*[one(sem) for _ in range(N)]) if c]
    print("READY ok=%d fail=%d" % (len(held), N - len(held)), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _, w in held:
        w.close()
    await asyncio.sleep(0.5)
    print("CLOSED", flush=True)


asyncio.run(main())
