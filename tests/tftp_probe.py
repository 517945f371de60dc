"""A raw TFTP client for the lab tests, run inside a client namespace.

    python3 tests/tftp_probe.py SERVER '<json list of probes>'

Each probe is {"op": "rrq"|"wrq", "name": str or hex bytes, "mode": ..., "options": {...},
"abort_after_oack": bool}; the script prints one JSON result per probe: the
first answer's kind (error code and message, oack options, or data block), and
for full reads the content's sha256. Bytes the codec would never build (non-ASCII
names, over-long fields) are sent as given with "raw": hex.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])

from bootd.tftp import packet as p

WAIT = 10.0


def probe(server: str, spec: dict[str, object]) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    try:
        if "raw" in spec:
            sock.sendto(bytes.fromhex(str(spec["raw"])), (server, 69))
        else:
            opcode = p.Opcode.WRQ if spec.get("op") == "wrq" else p.Opcode.RRQ
            options = dict(spec.get("options") or {})  # type: ignore[call-overload]
            sock.sendto(p.request(opcode, str(spec["name"]), str(spec.get("mode", "octet")), options),
                        (server, 69))
        try:
            data, peer = sock.recvfrom(70000)
        except TimeoutError:
            return {"answer": "none"}
        first = p.parse(data)
        if isinstance(first, p.Error):
            return {"answer": "error", "code": first.code, "message": first.message,
                    "port": peer[1]}
        if isinstance(first, p.OAck) and spec.get("abort_after_oack"):
            # UEFI firmware asks for tsize, then declines with error 8 (RFC 2347).
            sock.sendto(p.error(p.ErrorCode.OPTION_REFUSED, "tsize only"), peer)
            return {"answer": "oack", "options": first.options}
        return read_rest(sock, peer, first)
    finally:
        sock.close()


def read_rest(sock: socket.socket, peer: tuple[str, int], first: p.Packet) -> dict[str, object]:
    blksize = 512
    options: dict[str, str] = {}
    if isinstance(first, p.OAck):
        options = first.options
        blksize = int(options.get("blksize", 512))
        sock.sendto(p.ack(0), peer)
        first = p.parse(sock.recvfrom(70000)[0])
    digest, expected, size = hashlib.sha256(), 1, 0
    packet = first
    while True:
        if isinstance(packet, p.Data) and packet.block == expected & 0xFFFF:
            digest.update(packet.data)
            size += len(packet.data)
            sock.sendto(p.ack(packet.block), peer)
            if len(packet.data) < blksize:
                return {"answer": "data", "options": options, "sha256": digest.hexdigest(),
                        "size": size}
            expected += 1
        packet = p.parse(sock.recvfrom(70000)[0])


if __name__ == "__main__":
    results = [probe(sys.argv[1], spec) for spec in json.loads(sys.argv[2])]
    print(json.dumps(results))
