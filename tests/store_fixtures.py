"""Databases for the store, API and daemon tests: SQLite files and isolated PostgreSQL schemas.

`any_db` runs a test on SQLite (a file in tmp_path) and, when
CALLHUB_TEST_DATABASE_URL is set, on PostgreSQL in a schema of its own
(created before, dropped after), so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import make_url

from callhub.api.app import make_app
from callhub.config import ApiToken, Settings
from callhub.records import Attempt, CallRecord
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.save import save_calls
from callhub.store.tables import worklist_calls, worklist_entries

PG_URL_VAR = "CALLHUB_TEST_DATABASE_URL"
PG_SKIP = "CALLHUB_TEST_DATABASE_URL not set: PostgreSQL tests skipped"


def pg_url() -> str:
    url = os.environ.get(PG_URL_VAR)
    if not url:
        pytest.skip(PG_SKIP)
    return url


class DbFactory:
    """Creates databases of one kind; remembers them to drop afterwards."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.schemas: list[str] = []
        self.made: list[Database] = []

    @property
    def url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite+aiosqlite:///{self.tmp_path / 'callhub.db'}"
        return pg_url()

    async def create(self, url: str | None = None, **engine_args: Any) -> Database:
        """A new, empty database (PostgreSQL: a fresh schema); `url` reaches the same one
        another way (a proxy)."""
        if self.kind == "sqlite":
            db = Database.connect(url or self.url, **engine_args)
        else:
            schema = f"t_{uuid.uuid4().hex[:16]}"
            admin = Database.connect(self.url)
            async with admin.begin() as conn:
                await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            await admin.close()
            self.schemas.append(schema)
            db = Database.connect(url or self.url, schema=schema, **engine_args)
        self.made.append(db)
        return db

    async def cleanup(self) -> None:
        for db in self.made:
            await db.close()
        if self.schemas:
            admin = Database.connect(self.url)
            async with admin.begin() as conn:
                for schema in self.schemas:
                    await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DbFactory]:
    """A factory of empty databases, once on SQLite and once on PostgreSQL."""
    if request.param == "postgresql":
        pg_url()
    factory = DbFactory(request.param, tmp_path)
    yield factory
    await factory.cleanup()


@pytest.fixture
async def any_db(db_factory: DbFactory) -> Database:
    """A migrated, empty database (SQLite and PostgreSQL)."""
    db = await db_factory.create()
    await migrate.upgrade(db)
    return db


@pytest.fixture
async def pg_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty PostgreSQL database (for what only PostgreSQL has)."""
    pg_url()
    factory = DbFactory("postgresql", tmp_path)
    db = await factory.create()
    await migrate.upgrade(db)
    yield db
    await factory.cleanup()


@pytest.fixture
async def pg_own_database() -> AsyncIterator[Database]:
    """A migrated PostgreSQL database of the test's own, not a schema: for a test that
    counts the database's sessions (other tests, on parallel workers, use the shared one).
    Dropped afterwards."""
    name = f"callhub_own_{uuid.uuid4().hex[:12]}"
    admin = Database.connect(pg_url(), isolation_level="AUTOCOMMIT")
    async with admin.engine.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db = Database.connect(make_url(pg_url()).set(database=name).render_as_string(
        hide_password=False))
    try:
        await migrate.upgrade(db)
        yield db
    finally:
        await db.close()
        async with admin.engine.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        await admin.close()


@pytest.fixture
def store_settings(tmp_path: Path) -> Settings:
    return replace(Settings(), spool_dir=str(tmp_path / "spool"))


T0 = 1_795_900_000.0  # 2026-11-28 ~ 19:46 UTC


def make_call(linkedid: str, *, at: float = T0, pbx: str = "main", **fields: Any) -> CallRecord:
    """A plausible record; `fields` override (e.g. outcome='missed', caller_number=...)."""
    outcome = fields.pop("outcome", "answered")
    direction = fields.pop("direction", "inbound")
    answered = outcome == "answered"
    ring = fields.pop("ring_seconds", 7.0 if answered else 20.0)
    talk = fields.pop("talk_seconds", 30.0 if answered else 0.0)
    agent = fields.pop("agent", "PJSIP/1001" if answered else None)
    values: dict[str, Any] = {
        "pbx": pbx, "linkedid": linkedid, "direction": direction, "line": "4008001000",
        "called_number": "4008001000", "caller_number": "+8613800000001",
        "caller_name": "张三", "arrived_at": at, "ring_started_at": at + 1.0,
        "answered_at": at + 1.0 + ring if answered else None,
        "ended_at": at + 1.0 + ring + talk, "ring_seconds": ring,
        "rings": int(ring // 5) + 1 if ring else 0, "wait_seconds": 1.0 + ring,
        "talk_seconds": talk, "hold_seconds": 0.0, "outcome": outcome,
        "reason": None if answered else "not_answered", "voicemail": False,
        "short_abandon": False, "agent": agent,
        "agent_name": "Li Na" if agent else None, "hangup_by": "external" if answered else None,
        "hangup_cause": 16, "queue": None,
        "attempts": [Attempt("PJSIP/1001", "Li Na", at + 1.0, at + 1.0, at + 1.0 + ring,
                             "answered" if answered else "no_answer", ring)],
    }
    if direction == "outbound":
        values.update(called_number=fields.pop("called_number", "+8613800000001"),
                      caller_number=fields.pop("caller_number", "1001"), line=None,
                      attempts=[], ring_started_at=None)
    values.update(fields)
    return CallRecord(**values)


SSL_REQUEST = 80877103


def pg_error(code: str, message: str) -> bytes:
    """A PostgreSQL ErrorResponse message (FATAL)."""
    fields = b"".join(kind + value.encode() + b"\0" for kind, value in
                      ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message)))
    body = fields + b"\0"
    return b"E" + (len(body) + 4).to_bytes(4, "big") + body


async def refuse_pg_login(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer a PostgreSQL client's startup as a server that refuses its login (28P01)."""
    try:
        while True:
            length = int.from_bytes(await reader.readexactly(4), "big")
            payload = await reader.readexactly(length - 4)
            if int.from_bytes(payload[:4], "big") == SSL_REQUEST:
                writer.write(b"N")  # no TLS: the client goes on in plain text
                continue
            writer.write(pg_error("28P01", "password authentication failed (test proxy)"))
            await writer.drain()
            break
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


async def pg_startup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     schema: str) -> bytes:
    """Read a PostgreSQL client's startup (declining TLS) and return it with
    `search_path` set to `schema`, as `options` would: a whole process (`callhub run`)
    then works in a test's schema of its own."""
    while True:
        length = int.from_bytes(await reader.readexactly(4), "big")
        payload = await reader.readexactly(length - 4)
        if int.from_bytes(payload[:4], "big") == SSL_REQUEST:
            writer.write(b"N")
            continue
        if int.from_bytes(payload[:4], "big") >> 16 != 3:  # not a StartupMessage (cancel)
            return length.to_bytes(4, "big") + payload
        body = payload[:-1] + b"options\0-c search_path=" + schema.encode() + b"\0\0"
        return (len(body) + 4).to_bytes(4, "big") + body


class TcpProxy:
    """A loopback TCP proxy a test can cut (every connection dropped, new ones refused),
    freeze (a network cut: nothing passes, nobody hears of it) or make a PostgreSQL that
    refuses logins (`refuse_logins`). With `schema`, it is a PostgreSQL proxy that puts
    every session in that schema."""

    def __init__(self, target_host: str, target_port: int, schema: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.schema = schema
        self.port = 0
        self.up = True
        self.refusing = False
        self.holding = asyncio.Event()  # set once `freeze` holds a new connection
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._flowing.is_set():
            self.holding.set()  # frozen: this connection hangs
        await self._flowing.wait()
        if not self.up:
            writer.transport.abort()
            return
        if self.refusing:
            await refuse_pg_login(reader, writer)
            return
        try:
            startup = (await pg_startup(reader, writer, self.schema)
                       if self.schema is not None else b"")
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        up_writer.write(startup)
        self._writers.update((writer, up_writer))
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)),
                 asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    def cut(self) -> None:
        """Drop every connection and refuse new ones: the database is unreachable."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def freeze(self) -> None:
        """A network cut: every byte is held, no connection is closed, new ones hang."""
        self._flowing.clear()

    def thaw(self) -> None:
        """The cut healed: what `freeze` held goes on."""
        self._flowing.set()

    def refuse_logins(self) -> None:
        """Drop every connection; new ones are answered 'password authentication failed'."""
        self.cut()
        self.up = True
        self.refusing = True

    def restore(self) -> None:
        self.up = True
        self.refusing = False

    async def stop(self) -> None:
        self._flowing.set()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    """A cuttable proxy in front of the test PostgreSQL."""
    url = make_url(pg_url())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


def via_proxy(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)


TOKENS = {"viewer": "viewer-token-0001", "supervisor": "supervisor-token-0001",
          "admin": "admin-token-0001"}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
def api_settings(store_settings: Settings) -> Settings:
    return replace(store_settings, api_tokens=tuple(ApiToken(r, t) for r, t in TOKENS.items()),
                   timezone="Asia/Shanghai")


@pytest.fixture
async def api(any_db: Database, api_settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The API app served on a loopback port over the test database, and a client for it."""
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(api_settings, any_db)))
    await client.start_server()
    yield client
    await client.close()


async def store(db: Database, settings: Settings, *records: CallRecord) -> list[int]:
    async with db.begin() as conn:
        return (await save_calls(conn, list(records), settings)).ids


async def assert_worklist_counts_each_call_once(db: Database) -> None:
    async with db.connection() as conn:
        entries = {r.id: r.call_count for r in await conn.execute(
            sa.select(worklist_entries.c.id, worklist_entries.c.call_count))}
        links = [(r.entry_id, r.call_id) for r in await conn.execute(sa.select(worklist_calls))]
    per_entry: dict[int, int] = {}
    for entry, _ in links:
        per_entry[entry] = per_entry.get(entry, 0) + 1
    assert per_entry == {e: n for e, n in entries.items() if n}, "a call counted twice"
    assert len({c for _, c in links}) == len(links)
