#!/usr/bin/python3
"""WebSocket probe run inside the test container (Debian's python3-websockets 10.4).

exchange URL [--ca CA]           two clients (one gzip) exchange a broadcast; prints OK
send URL TEXT [--ca CA]          one client sends TEXT and waits for its own copy
hold URL --out FILE [--ca CA]    keeps a connection open, appending OPEN / MSG text / CLOSE code reason
cert HOST PORT --ca CA           prints the sha256 of the certificate the server shows
loop URL SECONDS                 connects and disconnects in a loop; prints attempts, refused, failed
profile URL ADMIN SECONDS        a CPU profile over the admin API during a fan-out to 50 clients;
                                 prints the wscast functions of the data path it names
token URL ADMIN [--ca CA]        with auth.mode = "jwt": no token is refused with 401, a token
                                 minted by POST /v1/tokens lets a client in and receive
"""
import argparse, asyncio, gzip, hashlib, json, socket, ssl, sys, time, urllib.request
import websockets

TIMEOUT = 10


def context(ca):
    if not ca:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


async def connect(url, key, gz, ca):
    query = f"/?specialKey={key}" + ("&support_gzip=1" if gz else "")
    return await asyncio.wait_for(websockets.connect(url + query, ssl=context(ca), open_timeout=TIMEOUT), TIMEOUT)


async def receive(ws, gz):
    msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
    if gz:
        assert isinstance(msg, bytes), f"gzip client got {type(msg)}"
        return gzip.decompress(msg).decode()
    assert isinstance(msg, str), f"plain client got {type(msg)}"
    return msg


async def exchange(a):
    plain = await connect(a.url, "probe-plain", False, a.ca)
    zipped = await connect(a.url, "probe-gzip", True, a.ca)
    await asyncio.sleep(0.2)
    text = "h\u00e9llo from the container \u2713 " + str(time.time())
    await plain.send(text)
    got = (await receive(plain, False), await receive(zipped, True))
    assert got == (text, text), got
    await plain.close()
    await zipped.close()
    print("OK exchange", a.url)


async def send(a):
    ws = await connect(a.url, "probe-sender", False, a.ca)
    await ws.send(a.text)
    assert await receive(ws, False) == a.text
    await ws.close()
    print("OK send")


async def hold(a):
    with open(a.out, "a", buffering=1) as out:
        ws = await connect(a.url, "probe-holder", False, a.ca)
        out.write("OPEN\n")
        try:
            while True:
                out.write(f"MSG {await ws.recv()}\n")
        except websockets.ConnectionClosed:
            out.write(f"CLOSE {ws.close_code} {ws.close_reason}\n")


def cert(a):
    ctx = context(a.ca)
    with socket.create_connection((a.host, a.port), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname=a.host) as tls:
            print(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())


async def loop(a):
    attempts = refused = failed = 0
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        attempts += 1
        try:
            ws = await connect(a.url, f"loop{attempts % 4}", False, None)
            await ws.close()
        except ConnectionRefusedError:
            refused += 1
            await asyncio.sleep(0.01)
        except Exception as e:  # a handshake cut by a restart, a close during the drain...
            failed += 1
            await asyncio.sleep(0.01)
    print(f"attempts {attempts} refused {refused} failed {failed}")


async def drain(ws):
    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        pass


def fetch_profile(admin, seconds):
    token = open("/etc/wscast/admin-token").read().strip()
    req = urllib.request.Request(f"http://{admin}/debug/pprof/profile?seconds={seconds}",
                                 headers={"Authorization": "Bearer " + token})
    return urllib.request.urlopen(req, timeout=seconds + 30).read()


async def profile(a):
    readers = [await connect(a.url, f"profiled{i}", i % 2 == 0, None) for i in range(50)]
    tasks = [asyncio.ensure_future(drain(ws)) for ws in readers]
    sender = readers[1]
    fetched = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, fetch_profile, a.admin, a.seconds))
    sent = 0
    # About 500 messages/s: 25,000 frames/s to read is what this Python can take without a
    # reader falling behind (and being cut off with 4001).
    while not fetched.done():
        await sender.send("a message of a profiled fan-out " + str(sent))
        sent += 1
        if sent % 10 == 0:
            await asyncio.sleep(0.02)
    data = await fetched
    for ws in readers:
        await ws.close()
    for t in tasks:
        t.cancel()
    # The profile is a protobuf whose string table holds the function names as plain bytes.
    path = [b"wscast::hub", b"wscast::fanout", b"wscast::frame", b"wscast::writer", b"wscast::connection::read_loop"]
    named = sorted({p.decode() for p in path if p in data})
    assert named, f"a {len(data)}-byte profile during {sent} messages names none of {path}"
    print(f"OK profile {len(data)} bytes during {sent} messages names {' '.join(named)}")


async def token(a):
    try:
        await connect(a.url, "probe-token", False, a.ca)
        raise AssertionError("a client without a token was let in")
    except websockets.exceptions.InvalidStatusCode as e:
        assert e.status_code == 401, e
    admin_token = open("/etc/wscast/admin-token").read().strip()
    req = urllib.request.Request(f"http://{a.admin}/v1/tokens", data=json.dumps({"key": "probe-token"}).encode(),
                                 headers={"Authorization": "Bearer " + admin_token, "Content-Type": "application/json"})
    minted = json.load(urllib.request.urlopen(req, timeout=TIMEOUT))
    ws = await asyncio.wait_for(websockets.connect(f"{a.url}/?specialKey=probe-token&token={minted['token']}",
                                                   ssl=context(a.ca), open_timeout=TIMEOUT), TIMEOUT)
    await ws.send("with a minted token")
    assert await receive(ws, False) == "with a minted token"
    await ws.close()
    print(f"OK token: 401 without one, in with one minted by the admin API (kid {minted['kid']})")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("exchange", "send", "hold"):
        s = sub.add_parser(name)
        s.add_argument("url")
        s.add_argument("--ca")
        if name == "send":
            s.add_argument("text")
        if name == "hold":
            s.add_argument("--out", required=True)
    s = sub.add_parser("cert")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--ca", required=True)
    s = sub.add_parser("loop")
    s.add_argument("url")
    s.add_argument("seconds", type=float)
    s = sub.add_parser("token")
    s.add_argument("url")
    s.add_argument("admin")
    s.add_argument("--ca")
    s = sub.add_parser("profile")
    s.add_argument("url")
    s.add_argument("admin")
    s.add_argument("seconds", type=int)
    a = p.parse_args()
    if a.cmd == "cert":
        cert(a)
    else:
        asyncio.run({"exchange": exchange, "send": send, "hold": hold, "loop": loop, "profile": profile, "token": token}[a.cmd](a))


if __name__ == "__main__":
    main()
