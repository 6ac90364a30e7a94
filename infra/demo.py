"""Two users chat through a running natter stack (started by infra/dev.sh).

Mints two tokens with natterctl, opens their conversation over REST, joins
it from two WebSockets, sends a message each way and prints what arrives.
"""
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import urllib.request

import websockets

ROOT = pathlib.Path(__file__).resolve().parent.parent


def env():
    values = dict(os.environ)
    for line in (ROOT / ".dev" / "env").read_text().splitlines():
        for part in line.replace("export ", "").split(" "):
            if "=" in part:
                k, v = part.split("=", 1)
                values[k] = v.strip('"')
    return values


def token(e, name):
    out = subprocess.run(
        [str(ROOT / "target" / "debug" / "natterctl"), "token", "--name", name, "--json"],
        env=e, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def rest(base, method, path, tok, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None)
    req.add_header("Authorization", "Bearer " + tok)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


async def frames(ws, want, **data):
    """The next frame of type `want` whose data has the given fields."""
    while True:
        f = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if f["type"] == want and all(f["data"].get(k) == v for k, v in data.items()):
            return f


async def main():
    e = env()
    base = e["NATTER_URL"]
    ws_base = base.replace("http", "ws", 1)
    alice, bob = token(e, "alice"), token(e, "bob")
    conv = rest(base, "POST", "/api/chat/conversations/with-user", alice["token"], {"userId": bob["userId"]})
    cid = conv["_id"]
    print(f"conversation {cid} between alice {alice['userId']} and bob {bob['userId']}")
    async with websockets.connect(f"{ws_base}/ws?token={alice['token']}") as wa, \
            websockets.connect(f"{ws_base}/ws?token={bob['token']}") as wb:
        for ws in (wa, wb):
            await frames(ws, "ready")
            await ws.send(json.dumps({"type": "join_conversation", "requestId": "j", "data": {"conversationId": cid}}))
            await frames(ws, "ack")
        for sender, receiver, name, text in ((wa, wb, "alice", "hi bob"), (wb, wa, "bob", "hi alice")):
            await sender.send(json.dumps({"type": "send_message", "requestId": "s",
                                          "data": {"conversationId": cid, "content": text}}))
            ack = await frames(sender, "ack")
            got = await frames(receiver, "message_received", _id=ack["data"]["messageId"])
            print(f"{name} sent {text!r}: stored at seq {ack['data']['seq']}; "
                  f"the other side received {got['data']['content']!r} (message {got['data']['_id']})")
    # The history is written a moment after the events went out (the
    # workers' write-behind, about a quarter of a second).
    for _ in range(30):
        history = rest(base, "GET", f"/api/chat/conversations/{cid}/messages", bob["token"])
        if history["total"] >= 2:
            break
        await asyncio.sleep(0.1)
    print(f"history: {history['total']} messages:", [m["content"] for m in history["messages"]])


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
