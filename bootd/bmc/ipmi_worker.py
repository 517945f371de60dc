"""One IPMI operation in its own process: a JSON request on stdin, a JSON answer on stdout.

Run by IpmiController (see bootd.bmc.controller for why a process). The
password arrives on stdin, so it never shows in a process listing.
"""

from __future__ import annotations

import json
import sys

from bootd.bmc.controller import BmcError, ErrorKind, PowerOp, perform


def main() -> int:
    try:
        req = json.loads(sys.stdin.read())
        outcome = perform(str(req["host"]), int(req["port"]), str(req["user"]), str(req["password"]),
                          PowerOp(req["op"]), float(req["cycle_pause"]))
        answer: dict[str, object] = {"power": outcome.power, "detail": outcome.detail}
    except BmcError as exc:
        answer = {"error": str(exc).split(": ", 1)[-1], "kind": exc.kind.value}
    except (ValueError, KeyError) as exc:
        answer = {"error": f"bad request to the IPMI worker: {exc}", "kind": ErrorKind.ERROR.value}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
