"""Stand-ins for `curl` and `sleep` when tests/test_zh_guides.py runs the guides' shell blocks.

The guides in docs/zh/ are run by a real bash, so their variables, `$(...)`, pipes and
`python3 -c` lines behave as in a reader's terminal. Only two commands are replaced:

- `curl`: the subset of curl's options the guides use, sent with httpx exactly as curl
  would send them (`-d` without a Content-Type is a form post, as with curl, so a guide
  that forgets the header fails). Each call is appended as one JSON line to
  `$SLOTPOOL_GUIDE_LOG` with the guide block it came from, so the test can check it
  against what the guide says it answers. An option outside the subset is an error: a
  guide cannot use something this stand-in would only pretend to do. curl itself need
  not be installed.
- `sleep N`: moves the service's clock N seconds ahead (the file `$SLOTPOOL_GUIDE_CLOCK`,
  which the test's clock reads) instead of waiting.

Run as `python guide_tools.py curl ARGS...` or `python guide_tools.py sleep N`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx

SHORT_FLAGS = {"s", "S", "i"}  # silent, show-error, include headers in the output
WITH_VALUE = {
    "-X": "method",
    "--request": "method",
    "-H": "header",
    "--header": "header",
    "-d": "data",
    "--data": "data",
    "--data-raw": "data_raw",
    "--data-binary": "data_binary",
    "-o": "output",
    "--output": "output",
    "-D": "dump_header",
    "--dump-header": "dump_header",
    "-w": "write_out",
    "--write-out": "write_out",
}
LONG_FLAGS = {"--silent": "s", "--show-error": "S", "--include": "i"}


class Usage(Exception):
    pass


def _read_data(kind: str, value: str) -> bytes:
    if kind == "data_raw" or not value.startswith("@"):
        return value.encode()
    name = value[1:]
    raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    # curl -d @file strips carriage returns and newlines; --data-binary sends the bytes as they are.
    return raw if kind == "data_binary" else raw.replace(b"\r", b"").replace(b"\n", b"")


def parse(args: list[str]) -> dict[str, object]:
    """curl's arguments, as far as the guides use them."""
    flags: set[str] = set()
    headers: list[tuple[str, str]] = []
    data: list[bytes] = []
    opts: dict[str, str] = {}
    urls: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in WITH_VALUE:
            if i + 1 >= len(args):
                raise Usage(f"{arg} needs a value")
            kind, value = WITH_VALUE[arg], args[i + 1]
            i += 2
            if kind == "header":
                name, sep, val = value.partition(":")
                if not sep:
                    raise Usage(f"header without a colon: {value!r}")
                headers.append((name.strip(), val.strip()))
            elif kind.startswith("data"):
                data.append(_read_data(kind, value))
            else:
                opts[kind] = value
            continue
        if arg in LONG_FLAGS:
            flags.add(LONG_FLAGS[arg])
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 1:
            unknown = set(arg[1:]) - SHORT_FLAGS
            if unknown:
                raise Usage(f"option {arg} is not one the guides may use")
            flags.update(arg[1:])
        elif arg.startswith("-"):
            raise Usage(f"option {arg} is not one the guides may use")
        else:
            urls.append(arg)
        i += 1
    if len(urls) != 1:
        raise Usage(f"exactly one URL, got {urls}")
    body = b"&".join(data) if data else None
    method = opts.get("method") or ("POST" if body is not None else "GET")
    if body is not None and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))  # what curl sends
    return {"flags": flags, "headers": headers, "body": body, "method": method, "url": urls[0], **opts}


def _head(response: httpx.Response) -> bytes:
    lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
    lines += [f"{name}: {value}" for name, value in response.headers.multi_items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _write(target: str, payload: bytes) -> None:
    if target == "-":
        sys.stdout.buffer.write(payload)
    elif target != "/dev/null":
        Path(target).write_bytes(payload)


def curl(args: list[str]) -> int:
    try:
        req = parse(args)
    except Usage as exc:
        print(f"curl (guide test): {exc}", file=sys.stderr)
        return 2
    headers = req["headers"]
    assert isinstance(headers, list)
    response = httpx.request(
        str(req["method"]),
        str(req["url"]),
        headers=headers,
        content=req["body"],  # type: ignore[arg-type]
        timeout=60,
    )
    flags = req["flags"]
    assert isinstance(flags, set)
    out = _head(response) if "i" in flags else b""
    out += response.content
    _write(str(req.get("output", "-")), out)
    if "dump_header" in req:
        _write(str(req["dump_header"]), _head(response))
    if "write_out" in req:
        text = str(req["write_out"]).replace("%{http_code}", str(response.status_code))
        sys.stdout.write(text.replace("\\n", "\n"))
    sys.stdout.flush()
    record = {
        "block": int(os.environ.get("SLOTPOOL_GUIDE_BLOCK", "0")),
        "method": req["method"],
        "url": req["url"],
        "status": response.status_code,
        "content_type": response.headers.get("content-type", ""),
        "body": response.text if "pdf" not in response.headers.get("content-type", "") else "",
    }
    with open(os.environ["SLOTPOOL_GUIDE_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


def sleep(args: list[str]) -> int:
    if len(args) != 1:
        print("sleep (guide test): one number of seconds", file=sys.stderr)
        return 2
    path = Path(os.environ["SLOTPOOL_GUIDE_CLOCK"])
    ahead = float(path.read_text() or "0") if path.exists() else 0.0
    path.write_text(str(ahead + float(args[0])))
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    sys.exit(curl(rest) if command == "curl" else sleep(rest))
