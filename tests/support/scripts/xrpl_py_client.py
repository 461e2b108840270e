"""xrpl-py as a ledger API client: runs the steps of argv[3] (a JSON list) against the JSON-RPC url argv[1]
and the WebSocket url argv[2], and prints one JSON result per step.

Steps: {"t": "rpc" | "ws", "m": command, "p": {params}} sends one request (xrpl-py's GenericRequest) and
gives {"status", "result"}; {"t": "ws_sub", "p": {subscribe params}, "n": N} subscribes over the
WebSocket and gives the reply and the first N messages the server pushes; {"t": "rpc_until", "m", "p",
"max"} repeats a JSON-RPC request until it fails. A failure gives {"exc": text}.
"""
import json
import sys
import time

from xrpl.clients import JsonRpcClient, WebsocketClient
from xrpl.models.requests import GenericRequest

rpc_url, ws_url, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ws = None
out = []
for step in steps:
    try:
        if step["t"] == "rpc":
            r = JsonRpcClient(rpc_url).request(GenericRequest(method=step["m"], **step.get("p", {})))
            out.append({"status": r.status.value, "result": r.result})
        elif step["t"] == "ws":
            if ws is None:
                ws = WebsocketClient(ws_url)
                ws.open()
            r = ws.request(GenericRequest(method=step["m"], **step.get("p", {})))
            out.append({"status": r.status.value, "result": r.result})
        elif step["t"] == "ws_sub":
            if ws is None:
                ws = WebsocketClient(ws_url)
                ws.open()
            r = ws.request(GenericRequest(method="subscribe", **step["p"]))
            pushed = []
            if step["n"] > 0:
                for message in ws:
                    # xrpl-py's iterator yields every message, replies to earlier requests included.
                    if message.get("type") == "response":
                        continue
                    pushed.append(message)
                    if len(pushed) >= step["n"]:
                        break
            out.append({"status": r.status.value, "result": r.result, "pushed": pushed})
        elif step["t"] == "rpc_until":
            # Repeats one JSON-RPC request until it fails; which answers carried "warning":"load", when each
            # request was sent, and the failure.
            client = JsonRpcClient(rpc_url)
            warned, sent, error = [], [], None
            for i in range(1, step["max"] + 1):
                sent.append(time.monotonic())
                try:
                    r = client.request(GenericRequest(method=step["m"], **step.get("p", {})))
                except Exception as e:  # noqa: BLE001
                    error = {"type": type(e).__name__, "args": [str(a) for a in e.args]}
                    break
                if r.result.get("warning") == "load":
                    warned.append(i)
            out.append({"warned": warned, "sent": sent, "error": error})
    except Exception as e:  # noqa: BLE001 - every failure is reported to the test
        out.append({"exc": type(e).__name__ + ": " + str(e)})
if ws is not None:
    ws.close()
print(json.dumps(out))
