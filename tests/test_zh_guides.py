"""The Chinese guides (docs/zh/*.md) run, as written, against the demo region.

Each guide gets a freshly seeded demo (the one `slotpool serve --demo` seeds) behind a real
uvicorn server, and bash runs its ```sh blocks in order, in one shell, as a reader pasting
them one after another would. The first block's `SLOTPOOL=` and `…_KEY=` lines are replaced
by the lines the demo prints (its keys are new on every start). `curl` and `sleep` are the
stand-ins of tests/guide_tools.py: curl's requests are logged, sleep moves the service's
clock instead of waiting. What each request must answer comes from the guide, never from
this file (docs/zh/README.md says how a guide writes it down):

- a comment `# → 201`, `# → 422 not_signed` or `# → 200 application/pdf` for every curl
  call of the block, in order: the status, and the problem's `code` or the content type;
- a ```json block right after a ```sh block: the fields that matter of the block's last
  answer. Objects match when every documented member matches (the answer may hold more);
  lists match element by element and have the same length, unless the last documented
  element is "…" (more may follow); the string "…" matches any value.

Blocks in any other language (```json shapes after prose, ```text, ```python…) are not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from service.app import create_app
from service.demo import print_demo_keys, seed_demo
from service.kit.clock import Clock
from service.kit.context import Actor
from service.kit.db import Database
from service.policy.service import install_presets
from tests.guide_tools import Usage, parse

ROOT = Path(__file__).resolve().parent.parent
GUIDES = sorted(p for p in (ROOT / "docs" / "zh").glob("*.md") if p.name != "README.md")
TOOLS = Path(__file__).resolve().parent / "guide_tools.py"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
EXPECT = re.compile(r"^\s*# → (\d{3})((?:\s+[^\s]+)*)\s*$")
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)=.*$", re.M)
ANY = "…"


@dataclass
class Expected:
    status: int
    code: str | None = None
    content_type: str | None = None


@dataclass
class Block:
    line: int
    text: str
    calls: list[Expected] = field(default_factory=list)
    answer: Any = None
    has_answer: bool = False


def _expectation(line: str) -> Expected | None:
    m = EXPECT.match(line)
    if not m:
        return None
    found = Expected(int(m.group(1)))
    for token in m.group(2).split():
        if "/" in token:
            found.content_type = token
        elif CODE.match(token):
            found.code = token
        else:
            break  # a comment in words follows
    return found


def guide_blocks(text: str) -> list[Block]:
    """The ```sh blocks of a guide, each with its expected answers."""
    blocks: list[Block] = []
    previous = ""
    for m in FENCE.finditer(text):
        lang, body = m.group(1), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if lang == "sh":
            block = Block(line, body)
            block.calls = [e for e in map(_expectation, body.splitlines()) if e is not None]
            blocks.append(block)
        elif lang == "json" and previous == "sh":
            blocks[-1].answer = json.loads(body)
            blocks[-1].has_answer = True
        previous = lang
    return blocks


def matches(doc: Any, actual: Any, path: str = "$") -> list[str]:
    """Where the documented value `doc` and the actual answer differ (empty: they agree)."""
    if doc == ANY:
        return []
    if isinstance(doc, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        out = []
        for key, value in doc.items():
            if key not in actual:
                out.append(f"{path}.{key}: missing")
            else:
                out += matches(value, actual[key], f"{path}.{key}")
        return out
    if isinstance(doc, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {actual!r}"]
        open_ended = bool(doc) and doc[-1] == ANY
        items = doc[:-1] if open_ended else doc
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            return [f"{path}: expected {len(items)}{'+' if open_ended else ''} items, got {len(actual)}"]
        return [e for i, d in enumerate(items) for e in matches(d, actual[i], f"{path}[{i}]")]
    if doc != actual:
        return [f"{path}: expected {doc!r}, got {actual!r}"]
    return []


def test_the_rules_of_the_guide_test_can_fail() -> None:
    """The matcher refuses what it must: a different value, a missing member, a longer list."""
    assert matches({"a": 1, "b": [1, ANY]}, {"a": 1, "b": [1, 2, 3], "c": 0}) == []
    assert matches({"a": 1}, {"a": 2})
    assert matches({"a": ANY}, {})
    assert matches([1], [1, 2])
    assert matches([1, 2, ANY], [1])
    assert _expectation("# → 422 not_signed 未签约") == Expected(422, "not_signed")
    assert _expectation("# → 200 application/pdf") == Expected(200, content_type="application/pdf")
    assert _expectation("# 预约") is None


def test_the_curl_stand_in_sends_what_curl_sends_and_refuses_the_rest() -> None:
    sent = parse(["-s", "-X", "POST", "-H", "Authorization: Bearer k", "-d", '{"a": 1}', "http://x/v1"])
    assert sent["method"] == "POST" and sent["body"] == b'{"a": 1}'
    # curl -d without a Content-Type posts a form: a guide that forgets the header must fail.
    assert ("Content-Type", "application/x-www-form-urlencoded") in sent["headers"]  # type: ignore[operator]
    assert parse(["-s", "http://x/v1"])["method"] == "GET"
    for unsupported in (["-L", "http://x"], ["--json", "{}", "http://x"], ["http://x", "http://y"]):
        with pytest.raises(Usage):
            parse(unsupported)


def test_every_guide_is_indexed_and_runs_something() -> None:
    index = (ROOT / "docs" / "zh" / "README.md").read_text(encoding="utf-8")
    assert GUIDES, "no guide in docs/zh"
    for guide in GUIDES:
        assert f"({guide.name})" in index, f"docs/zh/README.md does not link {guide.name}"
        blocks = guide_blocks(guide.read_text(encoding="utf-8"))
        assert len(blocks) >= 3 and sum(len(b.calls) for b in blocks) >= 5, guide.name
    assert "docs/zh/README.md" in (ROOT / "README.md").read_text(encoding="utf-8")


class SkewedClock(Clock):
    """The real clock, moved ahead by the seconds the guides' `sleep` wrote into a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        ahead = float(self.path.read_text() or "0") if self.path.exists() else 0.0
        return datetime.now(UTC) + timedelta(seconds=ahead)


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes no start event)
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


def demo_variables(keys: dict[str, str], port: int) -> dict[str, str]:
    """The `NAME=value` lines the demo prints for pasting into a shell."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_demo_keys(keys, host="127.0.0.1", port=port)
    return dict(re.findall(r"^\s+([A-Z][A-Z0-9_]*)=(\S+)$", out.getvalue(), re.M))


def script(blocks: list[Block], variables: dict[str, str]) -> str:
    """One bash script: each block, marked for the curl log, the first with the demo's values."""
    first = blocks[0].text
    named = set(ASSIGN.findall(first))
    unknown = {n for n in named if (n == "SLOTPOOL" or n.endswith("_KEY")) and n not in variables}
    assert not unknown, f"the first block names variables the demo does not print: {unknown}"
    assert "SLOTPOOL" in named and any(n.endswith("_KEY") for n in named), "the first block sets no keys"
    first = ASSIGN.sub(
        lambda m: f"{m.group(1)}={variables[m.group(1)]}" if m.group(1) in variables else m.group(0), first
    )
    parts = ["set -euo pipefail"]
    for n, block in enumerate(blocks):
        text = first if n == 0 else block.text
        parts += [f"export SLOTPOOL_GUIDE_BLOCK={n}", f"echo '@@ block at line {block.line}' >&2", text]
    return "\n".join(parts) + "\n"


async def _seed(url: str, settings: Any) -> dict[str, str]:
    db = Database(url, pool_size=1)
    try:
        await db.run(lambda s: install_presets(session=s, actor=Actor.system("test", now=Clock().now())))
    finally:
        await db.dispose()
    return await seed_demo(url, settings)


def check_calls(name: str, blocks: list[Block], log: Path) -> list[str]:
    """Where the calls the shell made differ from what the guide documents for them."""
    calls = (
        [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
    )
    problems = []
    for n, block in enumerate(blocks):
        made = [c for c in calls if c["block"] == n]
        where = f"{name}:{block.line}"
        if len(made) != len(block.calls):
            problems.append(f"{where}: {len(made)} curl calls, {len(block.calls)} documented (# →)")
            continue
        for call, want in zip(made, block.calls, strict=True):
            said = f"{where}: {call['method']} {call['url']}"
            if call["status"] != want.status:
                problems.append(
                    f"{said}: status {call['status']}, documented {want.status}: {call['body'][:300]}"
                )
            if want.code is not None:
                code = json.loads(call["body"]).get("code") if call["body"].startswith("{") else None
                if code != want.code:
                    problems.append(f"{said}: code {code!r}, documented {want.code!r}")
            if want.content_type is not None and not call["content_type"].startswith(want.content_type):
                problems.append(
                    f"{said}: content type {call['content_type']!r}, documented {want.content_type}"
                )
        if block.has_answer:
            if not made:
                problems.append(f"{where}: a documented answer but no call")
                continue
            problems += [f"{where}: {e}" for e in matches(block.answer, json.loads(made[-1]["body"]))]
    return problems


def load_blocks(guide: Path) -> list[Block]:
    return guide_blocks(guide.read_text(encoding="utf-8"))


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
async def test_zh_guide_runs_against_the_demo(
    guide: Path, clean_db: str, settings: Any, tmp_path: Path
) -> None:
    blocks = load_blocks(guide)
    keys = await _seed(clean_db, settings)
    clock_file = tmp_path / "clock-ahead"
    app = create_app(settings, database_url=clean_db, clock=SkewedClock(clock_file), run_loops=False)
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("curl", "sleep"):
        (tools / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TOOLS}" {name} "$@"\n')
        (tools / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "SLOTPOOL_GUIDE_LOG": str(log),
        "SLOTPOOL_GUIDE_CLOCK": str(clock_file),
    }
    work = tmp_path / "work"
    work.mkdir()
    async with app.router.lifespan_context(app), serve(app) as port:
        text = script(blocks, demo_variables(keys, port))
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", text, cwd=work, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=300)
    output = f"--- stdout\n{stdout.decode()[-4000:]}\n--- stderr\n{stderr.decode()[-4000:]}"
    assert proc.returncode == 0, f"{guide.name}: the shell stopped\n{output}"

    problems = check_calls(guide.name, blocks, log)
    assert not problems, "\n".join(problems) + "\n" + output
